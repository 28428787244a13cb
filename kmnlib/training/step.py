"""STM's three-frame training step: forward, losses, one optimiser update with a NaN guard.

1. frame 0 + its ground-truth mask → memory;
2. predict frame 1 from memory {0};
3. memorise frame 1 with its *predicted* soft mask (probabilities after soft aggregation, graph kept);
4. predict frame 2 from memory {0, 1};
5. loss = cross-entropy(frame 1) + cross-entropy(frame 2) on the soft-aggregated logits (void 255 ignored).

Each (clip, object) pair is one batch row of the encoders and the decoder (no padding: clips may hold
different numbers of objects); soft aggregation and the loss then run per clip on its own K objects.
KMN trains the same way as STM, with the kernel off.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kmnlib.config import FEATURE_STRIDE
from kmnlib.data.masks import VOID
from kmnlib.memory import LogitStats
from kmnlib.model.ops import soft_aggregate


class TrainingDiverged(FloatingPointError):
    """A loss or gradient became NaN/inf; the message names the step and the offending quantity."""


def _object_masks(labels: torch.Tensor, clip_of: torch.Tensor, obj_id: torch.Tensor, ks: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object (mask, other) float maps from label maps (B,H,W): one row per (clip, object)."""
    lab = labels[clip_of]                                               # (sumK,H,W)
    obj = lab == obj_id[:, None, None]
    k_of = torch.as_tensor(ks, device=labels.device)[clip_of]
    any_obj = (lab >= 1) & (lab <= k_of[:, None, None])                 # excludes void 255
    return obj.float(), (any_obj & ~obj).float()


def clip_logits(model: nn.Module, frames: torch.Tensor, masks: torch.Tensor, num_objects: Sequence[int] |
                torch.Tensor, *, sigma: float | None = None, stats: LogitStats | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """STM's training forward for a batch of 3-frame clips.

    frames (B,3,3,H,W) in [0,1], masks (B,3,H,W) ids 0..K_b (255 void; only frame 0 is read),
    num_objects (B,) → (logits of frame 1, logits of frame 2): lists over clips of (K_b+1,H,W)
    soft-aggregated logits (softmax over dim 0 = probabilities). H, W: multiples of FEATURE_STRIDE.
    ``stats`` collects the reads' logit scale.
    """
    b, t, _, h, w = frames.shape
    if t != 3 or masks.shape[:2] != (b, 3):
        raise ValueError(f"clip_logits expects frames (B,3,3,H,W) and masks (B,3,H,W), got "
                         f"{tuple(frames.shape)} and {tuple(masks.shape)}")
    if h % FEATURE_STRIDE or w % FEATURE_STRIDE:
        raise ValueError(f"clip_logits: frame size {h}x{w} is not a multiple of {FEATURE_STRIDE} "
                         f"(the crop size must be)")
    ks = [int(k) for k in num_objects]
    if min(ks) < 1:
        raise ValueError(f"clip_logits: every clip needs at least one object, got num_objects={ks}")
    dev = frames.device
    clip_of = torch.repeat_interleave(torch.arange(b, device=dev), torch.as_tensor(ks, device=dev))
    obj_id = torch.cat([torch.arange(1, k + 1, device=dev) for k in ks])
    bounds = np.cumsum([0] + ks).tolist()

    def predict(query: tuple, mem_k: torch.Tensor, mem_v: torch.Tensor) -> list[torch.Tensor]:
        # One segment call for every (clip, object): each object row gets its clip's query features.
        # Batching across clips is ~2x faster on CPU than one call per clip.
        qk, qv, f8, f4 = (t[clip_of] for t in query)
        fg = model.segment(qk, qv, f8, f4, mem_k, mem_v, sigma=sigma, stats=stats)  # (sumK,H,W)
        return [soft_aggregate(fg[bounds[i]:bounds[i + 1]]) for i in range(b)]

    m0, o0 = _object_masks(masks[:, 0], clip_of, obj_id, ks)
    k0, v0 = model.encode_memory(frames[clip_of, 0], m0, o0)
    logits1 = predict(model.encode_query(frames[:, 1]), k0.unsqueeze(2), v0.unsqueeze(2))

    # Memorise frame 1 with the predicted soft masks; the graph is kept (STM trains through it).
    probs1 = [lg.softmax(dim=0)[1:] for lg in logits1]                  # (K_b,H,W) per clip
    m1 = torch.cat(probs1)
    o1 = torch.cat([p.sum(dim=0, keepdim=True) - p for p in probs1])   # union of the other objects
    k1, v1 = model.encode_memory(frames[clip_of, 1], m1, o1)
    mem_k, mem_v = torch.stack([k0, k1], dim=2), torch.stack([v0, v1], dim=2)
    logits2 = predict(model.encode_query(frames[:, 2]), mem_k, mem_v)
    return logits1, logits2


def _check_labels(masks: torch.Tensor, ks: Sequence[int]) -> None:
    for i, k in enumerate(ks):
        m = masks[i]
        bad = (m > k) & (m != VOID)
        if bool(bad.any()):
            raise ValueError(f"training clip {i}: label {int(m[bad].max())} exceeds its num_objects={k}")


def clip_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of soft-aggregated logits (K+1,H,W) vs labels (H,W), void ignored."""
    ce = F.cross_entropy(logits.float()[None], labels[None].long(), ignore_index=VOID, reduction="none")[0]
    if reduction == "none":
        return ce
    valid = (labels != VOID).sum().clamp(min=1)  # an all-void frame contributes 0, not NaN
    return ce.sum() / valid


def clip_losses(model: nn.Module, batch: dict[str, Any], *, sigma: float | None = None,
                stats: LogitStats | None = None) -> dict[str, torch.Tensor]:
    """Mean per-pixel cross-entropy of frames 1 and 2 over the batch: dict(loss_f1, loss_f2, loss)."""
    frames, masks = batch["frames"], batch["masks"]
    ks = [int(k) for k in batch["num_objects"]]
    _check_labels(masks, ks)
    logits1, logits2 = clip_logits(model, frames, masks, ks, sigma=sigma, stats=stats)
    f1 = torch.stack([clip_cross_entropy(lg, masks[i, 1]) for i, lg in enumerate(logits1)]).mean()
    f2 = torch.stack([clip_cross_entropy(lg, masks[i, 2]) for i, lg in enumerate(logits2)]).mean()
    return {"loss_f1": f1, "loss_f2": f2, "loss": f1 + f2}


class StepModule(nn.Module):
    """The training step as a module whose forward returns the losses, so DDP wraps the whole step
    (DDP's gradient bookkeeping runs through ``forward``; calling the KMN methods directly would skip it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, masks: torch.Tensor, num_objects: torch.Tensor,
                stats: LogitStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = clip_losses(self.model, {"frames": frames, "masks": masks, "num_objects": num_objects},
                          stats=stats)
        return out["loss_f1"], out["loss_f2"]


def _all_ranks_any(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any rank (so every rank stops together instead of hanging)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def train_step(step_module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batch: dict[str, Any], *, step: int, device: torch.device, amp: bool = False,
               stats: LogitStats | None = None) -> dict[str, float]:
    """One optimisation step on a collated batch; returns the float losses (``stats`` collects
    the reads' logit scale).

    Raises :class:`TrainingDiverged` (before touching the weights) when a loss is NaN/inf, and — without
    AMP, where no scaler skips bad steps — when the gradient norm is.
    """
    frames = batch["frames"].to(device, non_blocking=True)
    masks = batch["masks"].to(device, non_blocking=True)
    nobj = torch.as_tensor(batch["num_objects"])
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        f1, f2 = step_module(frames, masks, nobj, stats=stats)
    losses = {"loss_f1": f1, "loss_f2": f2}
    bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).item()]
    if _all_ranks_any(bool(bad), device):
        which = ", ".join(f"{k}={float(losses[k].detach()):.4g}" for k in bad) or "on another rank"
        raise TrainingDiverged(f"step {step}: non-finite loss ({which}); weights not updated")
    scaler.scale(f1 + f2).backward()
    if not amp:
        # Gradients are already all-reduced here, so every rank takes the same decision.
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        if not torch.isfinite(norm).item():
            raise TrainingDiverged(f"step {step}: non-finite gradient norm ({float(norm)}) of "
                                   f"loss_f1+loss_f2; weights not updated")
    scaler.step(optimizer)
    scaler.update()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss"] = out["loss_f1"] + out["loss_f2"]
    return out
