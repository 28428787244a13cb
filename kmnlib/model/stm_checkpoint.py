"""Official STM checkpoints (github.com/seoungwugoh/STM, ``STM_weights.pth``) ↔ our :class:`KMN`.

The official file is the state dict of ``nn.DataParallel(STM())`` (keys start with ``module.``).
Its layout maps onto ours by prefix, one row per module (:data:`STM_TO_KMN`); the rest of each
key (torchvision ResNet sub-keys, ``conv1``/``conv2``/``downsample`` of residual blocks,
``weight``/``bias``/BN statistics) is identical on both sides.

Loading is strict: every checkpoint tensor must map to a model tensor of the same shape and every
model tensor must be given. Two tolerated exceptions, both without effect on outputs in eval mode:
BatchNorm ``num_batches_tracked`` counters may be absent (files from PyTorch < 0.4.1 lack them), and
the encoders' ``mean``/``std`` buffers (ImageNet constants, not learned) may be absent; when present
they are checked against the constants our encoders use.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from kmnlib.config import PAPER, InferenceConfig, ModelConfig
from kmnlib.model.backbones import input_normalisation
from kmnlib.model.network import KMN
from kmnlib.model.prepare import prepare_for_inference

# (official STM prefix, our prefix). Trailing dots keep "Encoder_M.conv1." apart from "conv1_m.".
STM_TO_KMN: tuple[tuple[str, str], ...] = (
    ("Encoder_M.conv1_m.", "memory_encoder.conv_mask."),
    ("Encoder_M.conv1_o.", "memory_encoder.conv_other."),
    ("Encoder_M.conv1.", "memory_encoder.trunk.conv1."),
    ("Encoder_M.bn1.", "memory_encoder.trunk.bn1."),
    ("Encoder_M.res2.", "memory_encoder.trunk.layer1."),
    ("Encoder_M.res3.", "memory_encoder.trunk.layer2."),
    ("Encoder_M.res4.", "memory_encoder.trunk.layer3."),
    ("Encoder_Q.conv1.", "query_encoder.trunk.conv1."),
    ("Encoder_Q.bn1.", "query_encoder.trunk.bn1."),
    ("Encoder_Q.res2.", "query_encoder.trunk.layer1."),
    ("Encoder_Q.res3.", "query_encoder.trunk.layer2."),
    ("Encoder_Q.res4.", "query_encoder.trunk.layer3."),
    ("KV_M_r4.Key.", "kv_memory.key."),
    ("KV_M_r4.Value.", "kv_memory.value."),
    ("KV_Q_r4.Key.", "kv_query.key."),
    ("KV_Q_r4.Value.", "kv_query.value."),
    ("Decoder.convFM.", "decoder.compress."),
    ("Decoder.ResMM.", "decoder.res."),
    ("Decoder.RF3.convFS.", "decoder.refine8.conv_skip."),
    ("Decoder.RF3.ResFS.", "decoder.refine8.res_skip."),
    ("Decoder.RF3.ResMM.", "decoder.refine8.res_merge."),
    ("Decoder.RF2.convFS.", "decoder.refine4.conv_skip."),
    ("Decoder.RF2.ResFS.", "decoder.refine4.res_skip."),
    ("Decoder.RF2.ResMM.", "decoder.refine4.res_merge."),
    ("Decoder.pred2.", "decoder.pred."),
)

# Registered buffers of the official encoders that are constants on our side: the ResNet-50
# input normalisation (model.backbones.INPUT_NORMALISATION), which the official file must carry.
_MEAN, _STD = input_normalisation("resnet50")
STM_CONSTANTS: dict[str, tuple[float, float, float]] = {
    "Encoder_M.mean": _MEAN, "Encoder_M.std": _STD,
    "Encoder_Q.mean": _MEAN, "Encoder_Q.std": _STD,
}

_DP_PREFIX = "module."
_LISTED = 8  # keys shown per problem kind in error messages


def stm_model_config() -> ModelConfig:
    """The network of the official release: the paper profile's ResNet-50 widths, no ImageNet file
    (every weight comes from the checkpoint)."""
    # Contiguous layout, as the official code: outputs then match it bit for bit (channels-last
    # would change float rounding; tests/test_optimisations.py).
    return replace(PAPER.model, backbone="resnet50", pretrained=False, weights=None,
                   memory_format="contiguous")


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def stm_to_kmn_key(key: str) -> str | None:
    """Our parameter name for an official STM key (without ``module.``), or None if unknown."""
    return _rename(key, STM_TO_KMN)


def kmn_to_stm_key(key: str) -> str | None:
    """The official STM name of one of our parameter names, or None if it has none."""
    return _rename(key, tuple((dst, src) for src, dst in STM_TO_KMN))


def to_stm_state_dict(model: KMN, *, data_parallel: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """``model``'s weights in the official STM layout (``module.``-prefixed if ``data_parallel``).

    Includes the encoders' ``mean``/``std`` buffers, as the official file does.
    """
    if model.cfg.backbone != "resnet50":
        raise ValueError(f"only ResNet-50 models have an STM layout, this one is {model.cfg.backbone!r}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in model.state_dict().items():
        stm_key = kmn_to_stm_key(key)
        if stm_key is None:
            raise ValueError(f"parameter {key} has no STM counterpart (mapping table incomplete)")
        out[stm_key] = tensor.detach().clone()
    for key, values in STM_CONSTANTS.items():
        out[key] = torch.tensor(values).view(1, 3, 1, 1)
    if data_parallel:
        out = OrderedDict((_DP_PREFIX + k, v) for k, v in out.items())
    return out


def from_stm_state_dict(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], *,
                        source: str = "<state dict>") -> "OrderedDict[str, torch.Tensor]":
    """Translate an official STM state dict into our names, strictly checked against ``reference``
    (our model's state dict). Raises ValueError naming every missing/unexpected/mis-shaped key."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    unexpected: list[str] = []
    shapes: list[str] = []
    bad_constants: list[str] = []
    for raw_key, tensor in state.items():
        key = raw_key[len(_DP_PREFIX):] if raw_key.startswith(_DP_PREFIX) else raw_key
        if not isinstance(tensor, torch.Tensor):
            unexpected.append(f"{raw_key} (not a tensor)")
            continue
        if key in STM_CONSTANTS:
            expected = torch.tensor(STM_CONSTANTS[key]).view(1, 3, 1, 1)
            if tensor.shape != expected.shape or not torch.allclose(tensor.float(), expected, atol=1e-6):
                bad_constants.append(f"{raw_key} = {tensor.flatten().tolist()} (expected {list(STM_CONSTANTS[key])})")
            continue
        ours = stm_to_kmn_key(key)
        if ours is None or ours not in reference:
            unexpected.append(raw_key)
            continue
        if ours in out:
            unexpected.append(f"{raw_key} (given twice, with and without '{_DP_PREFIX}')")
            continue
        if tensor.shape != reference[ours].shape:
            shapes.append(f"{raw_key}: checkpoint {tuple(tensor.shape)} vs model {tuple(reference[ours].shape)}")
            continue
        out[ours] = tensor
    missing = []
    for ours, ref in reference.items():
        if ours in out:
            continue
        if ours.endswith("num_batches_tracked"):
            out[ours] = ref.clone()  # a counter only; absent in files saved before PyTorch 0.4.1
        else:
            missing.append(kmn_to_stm_key(ours) or ours)
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("wrong shapes", shapes), ("wrong constants", bad_constants)):
        if keys:
            more = f" … and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
            problems.append(f"{label} ({len(keys)}): " + "; ".join(keys[:_LISTED]) + more)
    if problems:
        raise ValueError(f"{source}: not an official STM (ResNet-50) state dict: " + " | ".join(problems))
    # Keep the model's parameter order (state-dict order is cosmetic, but nice to preserve).
    return OrderedDict((k, out[k]) for k in reference)


def load_stm_checkpoint(path_or_state_dict: str | Path | Mapping[str, torch.Tensor], *,
                        inference: InferenceConfig | None = InferenceConfig()) -> KMN:
    """A ResNet-50 :class:`KMN` in eval mode carrying the official STM weights, prepared for
    inference as ``inference`` asks (:func:`kmnlib.model.prepare.prepare_for_inference`: by
    default BatchNorm folded and Winograd convolutions on CPU; outputs equal the raw network's up
    to float rounding). ``inference=None``: the raw network, its state dict the file's tensor for
    tensor (to compare with the official code, to fine-tune, to re-export with
    :func:`to_stm_state_dict`).

    Accepts a path to ``STM_weights.pth`` or an already loaded state dict, with or without
    DataParallel's ``module.`` prefix. Loading is strict (see the module docstring).
    """
    if isinstance(path_or_state_dict, Mapping):
        state, source = path_or_state_dict, "<state dict>"
    else:
        path = Path(path_or_state_dict).expanduser()
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: STM checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read as a PyTorch state dict: {e}") from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    model = KMN(stm_model_config())
    model.load_state_dict(from_stm_state_dict(state, model.state_dict(), source=source), strict=True)
    model.eval()
    if inference is None:
        return model
    return prepare_for_inference(model, inference, in_place=True)
