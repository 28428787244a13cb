"""The KMN network (STM's architecture, Oh et al. 2019): encoders, key/value heads, decoder.

Only the memory read differs between STM and KMN; it lives in :mod:`kmnlib.memory`.
Module names here are our own; :mod:`kmnlib.model.stm_checkpoint` maps them to the official
STM release's names with one table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kmnlib.config import ModelConfig
from kmnlib.memory import LogitStats, memory_read
from kmnlib.model.backbones import Trunk, build_trunk, input_normalisation


class _Normalise(nn.Module):
    """The backbone's input normalisation of [0,1] frames, so callers never normalise."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        mean, std = input_normalisation(backbone)
        # Non-persistent: constants, not weights; keeps our checkpoints free of them
        # (the STM loader checks the official file's copies instead).
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return (frame - self.mean) / self.std


class MemoryEncoder(nn.Module):
    """Trunk over RGB + the object's mask + the union of the other objects' masks.

    The two mask branches are 1-channel convs with the stem's geometry (7x7/2 for ResNet-50,
    3x3/2 for Lite0), no bias, summed with the RGB stem conv before its BatchNorm (as STM).
    They keep PyTorch's default (Kaiming-uniform) init, as STM does: the model then sees the
    mask from the first step. Zero init would also train (the weight gradient does not depend
    on the weight) and start from the exact ImageNet trunk; we follow the reproduced method.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.normalise = _Normalise(cfg.backbone)
        self.trunk: Trunk = build_trunk(cfg)
        stem = self.trunk.stem_conv

        def branch() -> nn.Conv2d:
            return nn.Conv2d(1, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride,
                             padding=stem.padding, bias=False)

        self.conv_mask = branch()
        self.conv_other = branch()

    def forward(self, frame: torch.Tensor, mask: torch.Tensor, other: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = mask.unsqueeze(1).to(frame.dtype)
        o = other.unsqueeze(1).to(frame.dtype)
        return self.trunk(self.normalise(frame), extra=self.conv_mask(m) + self.conv_other(o))


class QueryEncoder(nn.Module):
    """Trunk over RGB only."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.normalise = _Normalise(cfg.backbone)
        self.trunk: Trunk = build_trunk(cfg)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.trunk(self.normalise(frame))


class KeyValue(nn.Module):
    """3x3 key and value projections of the 1/16 feature."""

    def __init__(self, in_dim: int, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.key = nn.Conv2d(in_dim, key_dim, kernel_size=3, padding=1)
        self.value = nn.Conv2d(in_dim, value_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key(x), self.value(x)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(conv(relu(x)))), 3x3 conv skip when in != out."""

    def __init__(self, in_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = out_dim or in_dim
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        self.downsample = None if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        skip = x if self.downsample is None else self.downsample(x)
        return skip + r


class Refine(nn.Module):
    """Merge a skip feature with the x2-upsampled coarser decoder map."""

    def __init__(self, skip_dim: int, dim: int) -> None:
        super().__init__()
        self.conv_skip = nn.Conv2d(skip_dim, dim, kernel_size=3, padding=1)
        self.res_skip = ResBlock(dim)
        self.res_merge = ResBlock(dim)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        s = self.res_skip(self.conv_skip(skip))
        up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self.res_merge(s + up)


class Decoder(nn.Module):
    """[readout, query value] at 1/16 → refine with f8, f4 → 2-channel logits at full size."""

    def __init__(self, in_dim: int, f8_dim: int, f4_dim: int, dim: int) -> None:
        super().__init__()
        self.compress = nn.Conv2d(in_dim, dim, kernel_size=3, padding=1)
        self.res = ResBlock(dim)
        self.refine8 = Refine(f8_dim, dim)
        self.refine4 = Refine(f4_dim, dim)
        self.pred = nn.Conv2d(dim, 2, kernel_size=3, padding=1)

    def forward(self, x16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        m16 = self.res(self.compress(x16))
        m8 = self.refine8(f8, m16)
        m4 = self.refine4(f4, m8)
        p4 = self.pred(F.relu(m4))
        return F.interpolate(p4, scale_factor=4, mode="bilinear", align_corners=False)


class KMN(nn.Module):
    """Space-time memory network with KMN's kernelized read (``sigma``) or STM's (``sigma=None``).

    Frames are (B,3,H,W) in [0,1] with H, W multiples of 16 (pad with
    :func:`kmnlib.model.ops.pad_divide_by`); the backbone's input normalisation
    (:data:`kmnlib.model.backbones.INPUT_NORMALISATION`) happens inside the encoders.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.key_dim, self.value_dim = cfg.key_dim, cfg.value_dim
        self.memory_encoder = MemoryEncoder(cfg)
        self.query_encoder = QueryEncoder(cfg)
        c4, c8, c16 = self.query_encoder.trunk.channels
        self.kv_memory = KeyValue(c16, cfg.key_dim, cfg.value_dim)
        self.kv_query = KeyValue(c16, cfg.key_dim, cfg.value_dim)
        self.decoder = Decoder(2 * cfg.value_dim, c8, c4, cfg.decoder_dim)
        self._bn_frozen = False

    # --- BatchNorm ---------------------------------------------------------------------------
    def freeze_bn(self) -> "KMN":
        """Put every BatchNorm in eval mode (running statistics fixed) and keep it so across
        ``train()``. Affine BN parameters stay trainable; freeze them via ``requires_grad`` if wanted."""
        self._bn_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> "KMN":
        super().train(mode)
        if self._bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # --- the explicit steps ------------------------------------------------------------------
    def encode_memory(self, frame: torch.Tensor, mask: torch.Tensor, other: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """frame (B,3,H,W) in [0,1], mask/other (B,H,W) float → key (B,Ck,H/16,W/16), value (B,Cv,…)."""
        _check_frame(frame)
        if mask.shape != other.shape or mask.shape != (frame.shape[0], *frame.shape[-2:]):
            raise ValueError(f"encode_memory: mask {tuple(mask.shape)} and other {tuple(other.shape)} "
                             f"must both be (B,H,W) = {(frame.shape[0], *frame.shape[-2:])}")
        f16, _, _ = self.memory_encoder(frame, mask, other)
        return self.kv_memory(f16)

    def encode_query(self, frame: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """frame (B,3,H,W) in [0,1] → key (B,Ck,H/16,W/16), value (B,Cv,H/16,W/16), f8, f4."""
        _check_frame(frame)
        f16, f8, f4 = self.query_encoder(frame)
        key, value = self.kv_query(f16)
        return key, value, f8, f4

    def decode(self, memory_readout: torch.Tensor, query_value: torch.Tensor, f8: torch.Tensor,
               f4: torch.Tensor) -> torch.Tensor:
        """(B,Cv,h,w) readout and query value, query skips f8/f4 → logits (B,2,16h,16w)."""
        return self.decoder(torch.cat([memory_readout, query_value], dim=1), f8, f4)

    def segment(self, query_key: torch.Tensor, query_value: torch.Tensor, f8: torch.Tensor,
                f4: torch.Tensor, mem_key: torch.Tensor, mem_value: torch.Tensor,
                sigma: float | None = None, stats: LogitStats | None = None) -> torch.Tensor:
        """Foreground probability (N,H,W) of N objects, one memory per object (batch of memory):
        the reference read (:func:`kmnlib.memory.memory_read`), then the decoder — the training
        step's forward. (Video inference runs the same steps in
        :class:`kmnlib.propagation.Propagator`, with its read backend and analysis hooks.)

        Query tensors have batch 1 (broadcast to N) or N; ``mem_key`` (N,Ck,T,h,w),
        ``mem_value`` (N,Cv,T,h,w). ``sigma=None`` is STM's read, a float KMN's kernel width;
        ``stats`` collects the read's logit scale.
        """
        n = mem_key.shape[0]
        if mem_key.dim() != 5 or mem_value.dim() != 5 or mem_value.shape[0] != n:
            raise ValueError(f"segment: mem_key {tuple(mem_key.shape)} and mem_value "
                             f"{tuple(mem_value.shape)} must be (N,C,T,h,w) with the same N")
        if query_key.shape[0] not in (1, n):
            raise ValueError(f"segment: query batch {query_key.shape[0]} must be 1 or N={n}")

        def expand(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, -1, -1, -1)

        qk, qv, f8, f4 = expand(query_key), expand(query_value), expand(f8), expand(f4)
        readout = memory_read(mem_key, mem_value, qk, sigma=sigma, stats=stats)
        logits = self.decode(readout, qv, f8, f4)
        return F.softmax(logits, dim=1)[:, 1]


def _check_frame(frame: torch.Tensor) -> None:
    if frame.dim() != 4 or frame.shape[1] != 3:
        raise ValueError(f"expected frames (B,3,H,W), got {tuple(frame.shape)}")
    h, w = frame.shape[-2:]
    if h % 16 or w % 16:
        raise ValueError(f"frame size {h}x{w} is not a multiple of 16; pad with "
                         "kmnlib.model.ops.pad_divide_by first")
