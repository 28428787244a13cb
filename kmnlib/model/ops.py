"""Small tensor operations around the network: stride padding and STM's soft aggregation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

Pad = tuple[int, int, int, int]  # (left, right, top, bottom) — F.pad's order for the last two dims

# Probabilities are clamped before the logit so that a certain pixel (p = 0 or 1) stays finite.
_EPS = 1e-7


def pad_divide_by(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, Pad]:
    """Zero-pad the last two dims of ``x`` up to multiples of ``d``, centred as STM does.

    The odd extra pixel goes after (right/bottom). Returns ``(padded, pad)`` with
    ``pad = (lw, uw, lh, uh)``; :func:`unpad` undoes it.
    """
    if x.dim() < 2:
        raise ValueError(f"pad_divide_by needs a tensor with at least 2 dims (...,H,W), got {tuple(x.shape)}")
    if d < 1:
        raise ValueError(f"pad_divide_by: d must be >= 1, got {d}")
    h, w = x.shape[-2:]
    new_h, new_w = -(-h // d) * d, -(-w // d) * d
    lh, lw = (new_h - h) // 2, (new_w - w) // 2
    pad = (lw, new_w - w - lw, lh, new_h - h - lh)
    if not any(pad):
        return x, pad
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Crop the border that :func:`pad_divide_by` added (``pad = (lw, uw, lh, uh)``)."""
    lw, uw, lh, uh = pad
    h, w = x.shape[-2:]
    return x[..., lh:h - uh, lw:w - uw]


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
