"""Small tensor operations around the network: stride padding, resizing to the inference
height, and STM's soft aggregation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kmnlib.config import FEATURE_STRIDE

Pad = tuple[int, int, int, int]  # (left, right, top, bottom) — F.pad's order for the last two dims

# Probabilities are clamped before the logit so that a certain pixel (p = 0 or 1) stays finite.
_EPS = 1e-7


def pad_amounts(height: int, width: int, d: int = FEATURE_STRIDE) -> Pad:
    """``(lw, uw, lh, uh)``: the zero padding that brings (height, width) up to multiples of ``d``,
    centred as STM does (the odd extra pixel goes after: right/bottom)."""
    if d < 1:
        raise ValueError(f"pad_amounts: d must be >= 1, got {d}")
    new_h, new_w = -(-height // d) * d, -(-width // d) * d
    lh, lw = (new_h - height) // 2, (new_w - width) // 2
    return lw, new_w - width - lw, lh, new_h - height - lh


def pad_divide_by(x: torch.Tensor, d: int = FEATURE_STRIDE) -> tuple[torch.Tensor, Pad]:
    """Zero-pad the last two dims of ``x`` up to multiples of ``d`` (:func:`pad_amounts`).

    Returns ``(padded, pad)`` with ``pad = (lw, uw, lh, uh)``; :func:`unpad` undoes it.
    """
    if x.dim() < 2:
        raise ValueError(f"pad_divide_by needs a tensor with at least 2 dims (...,H,W), got {tuple(x.shape)}")
    pad = pad_amounts(*x.shape[-2:], d)
    if not any(pad):
        return x, pad
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Crop the border that :func:`pad_divide_by` added (``pad = (lw, uw, lh, uh)``)."""
    lw, uw, lh, uh = pad
    h, w = x.shape[-2:]
    return x[..., lh:h - uh, lw:w - uw]


def cell_coverage(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of each feature cell covered by ``masks`` (N,H,W) in [0,1]: (N,h,w) on the padded
    grid the network's features live on (:func:`pad_divide_by`, then the mean over each cell)."""
    padded, _ = pad_divide_by(masks[:, None].float())
    return F.avg_pool2d(padded, FEATURE_STRIDE)[:, 0]


def soft_aggregate(fg_probs: torch.Tensor) -> torch.Tensor:
    """Merge independent per-object foreground probabilities into (N+1)-way logits (STM).

    ``fg_probs`` is (N,H,W), or (B,N,H,W) for a batch (objects are always dim -3). Background is
    ``prod_i (1 - p_i)``; the stack ``[bg, p_1..p_N]`` is clamped to [1e-7, 1-1e-7] and turned into
    logits ``log(p / (1 - p))``. ``softmax`` over the object dim gives the merged probabilities.
    Returns (N+1,H,W) or (B,N+1,H,W).
    """
    if fg_probs.dim() not in (3, 4):
        raise ValueError(f"soft_aggregate expects (N,H,W) or (B,N,H,W), got {tuple(fg_probs.shape)}")
    bg = torch.prod(1 - fg_probs, dim=-3, keepdim=True)
    em = torch.cat([bg, fg_probs], dim=-3).clamp(_EPS, 1 - _EPS)
    return torch.log(em / (1 - em))


def height_scaled_size(size: tuple[int, int], height: int) -> tuple[int, int]:
    """(H, W) of a frame of ``size`` resized to ``height`` rows, aspect ratio kept."""
    h, w = size
    return int(height), max(1, round(w * int(height) / h))


def resize_frames(frames: torch.Tensor, height: int) -> torch.Tensor:
    """Frames (T,3,H,W) resized to ``height`` rows, aspect kept — the one way frames reach the
    inference resolution. Antialiased bilinear: uint8 frames with PIL (fast; stays uint8, as
    ``segment_video`` accepts), float frames in [0,1] with torch (``antialias=True``, PIL's filter)."""
    size = height_scaled_size(tuple(frames.shape[-2:]), height)
    if size == tuple(frames.shape[-2:]):
        return frames
    if frames.dtype == torch.uint8:
        arr = frames.permute(0, 2, 3, 1).numpy()
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize(
            (size[1], size[0]), Image.Resampling.BILINEAR)) for f in arr])
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Integer label maps (...,H,W) resized to ``size`` nearest-neighbour (ids are never blended)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    lead = labels.shape[:-2]
    flat = labels.reshape(-1, 1, *labels.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="nearest")
    return out.reshape(*lead, *size).to(labels.dtype)
