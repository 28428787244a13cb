"""Inference-only speed-up: 3×3 convolutions as Winograd F(4×4, 3×3) on CPU in float32.

A direct 3×3 convolution spends 9 multiply-adds per output pixel and input channel. Winograd's
minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
computes each 4×4 output tile from a 6×6 input tile with 36 products instead of 144: the input tile
and the filter go to a transformed space (``Bᵀ d B``, ``G g Gᵀ``), where the convolution over channels
becomes 36 independent matrix products (one batched GEMM), and ``Aᵀ m A`` brings each tile back.
On this project's CPU, oneDNN's direct convolutions already run near the cores' float32 peak, so
fewer multiplications is the remaining lever (benchmarks/README.md, "Speed work of issue 10").

The result equals the direct convolution up to float rounding: the transforms have coefficients
up to 25 (input) and 8 (output), so the error is larger than a direct convolution's, about 1e-5 of
the output's scale (tested against a float64 reference, and on real frames through the network).

Used only where it pays and is valid (:func:`winograd_convolutions`): stride 1, padding 1, no
dilation or groups, at least ``min_channels`` in and out; at run time only for float32 on CPU
without autocast — elsewhere (bf16 autocast with AMX, CUDA whose cuDNN picks its own algorithm)
the module is the ordinary ``nn.Conv2d`` it was built from. Filters are transformed at each call
(9 multiply-adds per transformed weight, against one per weight and tile in the products: under
1 % of the work at 1/4 resolution, ≈ 8 % on a 480p frame's 1/16 grid) rather than stored, which
would take 4× the weights' memory.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

_F64 = torch.float64
# F(4, 3) with interpolation points 0, ±1, ±2 and ∞ (Lavin & Gray 2016, section 4.2).
_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=_F64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=_F64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=_F64)
# The 2-D transforms of a row-major flattened tile: vec(Bᵀ d B) = (Bᵀ ⊗ Bᵀ) vec(d), etc.
_INPUT = torch.kron(_BT, _BT).float()     # (36, 36)
_FILTER = torch.kron(_G, _G).float()      # (36, 9)
_OUTPUT = torch.kron(_AT, _AT).float()    # (16, 36)
TILE = 4
# Transformed tiles are processed in strips of tile rows whose transformed input takes at most
# this many bytes, so the transient memory stays small (peak RSS of whole videos per setting:
# benchmarks/README.md, memory ceiling) — but with at least this many tiles per strip: the 36
# matrix products of a strip get slow when thin (the 1024-channel heads on the 1/16 grid ran
# 0.73x direct in 2-row strips; bench_winograd.py).
STRIP_BYTES = 4 * 2**20
MIN_STRIP_TILES = 128


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a (K,C,3,3) float32 ``weight`` and (N,C,H,W)
    ``x`` (any H, W), via F(4×4, 3×3). The output is channels-last (N,K,H,W)."""
    n, c, h, w = x.shape
    k = weight.shape[0]
    if weight.shape != (k, c, 3, 3):
        raise ValueError(f"winograd_conv3x3: weight {tuple(weight.shape)} must be (K, {c}, 3, 3)")
    th, tw = -(-h // TILE), -(-w // TILE)
    # (36, K·C): row t holds filter component t; per component a (C, K) matrix as a transposed view.
    u = (_FILTER @ weight.reshape(k * c, 9).t()).view(36, k, c).transpose(1, 2)
    xn = x.permute(0, 2, 3, 1)                                       # NHWC (a view if channels-last)
    out = torch.empty(n, th * TILE, tw * TILE, k, dtype=x.dtype)
    rows = max(1, STRIP_BYTES // (36 * n * tw * c * x.element_size()), -(-MIN_STRIP_TILES // (n * tw)))
    # One strip of input rows with its zero border (1, plus what completes the last tile), reused
    # for every strip: a padded copy of the whole input would be another input-sized allocation.
    buf = x.new_zeros(n, TILE * min(rows, th) + 2, tw * TILE + 2, c)
    for r0 in range(0, th, rows):
        r1 = min(th, r0 + rows)
        strip = buf[:, :TILE * (r1 - r0) + 2]
        top = TILE * r0 - 1                                          # the input row of strip row 0
        lo, hi = max(0, top), min(h, TILE * r1 + 1)
        strip[:, lo - top: hi - top, 1: 1 + w].copy_(xn[:, lo:hi])
        strip[:, hi - top:].zero_()                                  # below the image: last strip
        tiles = strip.unfold(1, 6, TILE).unfold(2, 6, TILE)
        d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(36, -1)          # (36, N·rows·tw·C)
        v = (_INPUT @ d).view(36, -1, c)                             # (36, tiles, C)
        m = torch.bmm(v, u)                                          # (36, tiles, K)
        y = (_OUTPUT @ m.view(36, -1)).view(TILE, TILE, n, r1 - r0, tw, k)
        out[:, TILE * r0: TILE * r1].view(n, r1 - r0, TILE, tw, TILE, k).copy_(
            y.permute(2, 3, 0, 4, 1, 5))
    if bias is not None:
        out += bias
    out = out[:, :h, :w].permute(0, 3, 1, 2)
    return out if out.is_contiguous(memory_format=torch.channels_last) \
        else out.contiguous(memory_format=torch.channels_last)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3×3, stride 1, padding 1) that runs :func:`winograd_conv3x3` for float32
    CPU inputs outside autocast, and the ordinary convolution otherwise. Same parameters, same
    ``state_dict``."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "WinogradConv2d":
        if not eligible(conv, min_channels=1):
            raise ValueError(f"WinogradConv2d: {conv} is not a 3x3, stride-1, padding-1 convolution")
        new = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                  device="meta")
        new.weight, new.bias = conv.weight, conv.bias   # shared, not copied
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        return winograd_conv3x3(x, self.weight, self.bias)


def eligible(conv: nn.Module, min_channels: int) -> bool:
    """A plain 3×3 convolution, stride 1, zero padding 1, with ≥ ``min_channels`` in and out."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros"
            and min(conv.in_channels, conv.out_channels) >= min_channels)


# Below this many channels in or out the 36 matrix products are too thin to beat oneDNN's direct
# convolution here (bench_winograd.py prints the per-layer ratios).
MIN_CHANNELS = 128


def winograd_convolutions(model: nn.Module, min_channels: int = MIN_CHANNELS, *,
                          in_place: bool = False) -> nn.Module:
    """A copy of ``model`` (``in_place``: ``model`` itself) whose eligible convolutions are
    :class:`WinogradConv2d`."""
    out = model if in_place else copy.deepcopy(model)
    for module in out.modules():
        for name, child in module.named_children():
            if eligible(child, min_channels):
                setattr(module, name, WinogradConv2d.from_conv(child))
    return out
