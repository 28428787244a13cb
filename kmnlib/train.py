"""Training: STM's three-frame dynamic-memory step, checkpoints/resume, CSV log, NaN guard, DDP, loss maps.

One iteration (STM, Oh et al. 2019; KMN trains the same way, with the kernel off):

1. frame 0 + its ground-truth mask → memory;
2. predict frame 1 from memory {0};
3. memorise frame 1 with its *predicted* soft mask (probabilities after soft aggregation, graph kept);
4. predict frame 2 from memory {0, 1};
5. loss = cross-entropy(frame 1) + cross-entropy(frame 2) on the soft-aggregated logits (void 255 ignored).

Each (clip, object) pair is one batch row of the encoders and the decoder (no padding: clips may hold
different numbers of objects); soft aggregation and the loss then run per clip on its own K objects.

Run files in ``out_dir`` for a run called ``<name>`` (see :func:`run_name`):
``<name>.pt`` (final checkpoint, reused by re-runs), ``<name>.last.pt`` (periodic checkpoint for resuming)
and ``<name>.csv`` (one row per iteration, flushed every row so it survives a kill).

The data of iteration ``s`` on rank ``r`` of ``w`` are clips ``(s*w + r)*batch + j`` of a dataset whose
items depend only on (seed, index) — so a resumed run sees exactly the data of an uninterrupted one.
CPU note: on a CPU shared with other jobs use one torch thread (``--threads 1``); two threads per process
oversubscribe 2 cores and a step runs several times slower (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kmnlib.config import Profile, StageConfig, get_profile, results_root
from kmnlib.data.masks import VOID
from kmnlib.files import atomic_write

STAGES = ("pretrain", "main")
CSV_FIELDS = ("step", "loss", "loss_f1", "loss_f2", "lr", "hide_p", "max_gap", "clips_per_s", "wall_s")


class TrainingDiverged(FloatingPointError):
    """A loss or gradient became NaN/inf; the message names the step and the offending quantity."""


# ----------------------------------------------------------------------------------------------------
# the training step
# ----------------------------------------------------------------------------------------------------

def _object_masks(labels: torch.Tensor, clip_of: torch.Tensor, obj_id: torch.Tensor, ks: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object (mask, other) float maps from label maps (B,H,W): one row per (clip, object)."""
    lab = labels[clip_of]                                               # (sumK,H,W)
    obj = lab == obj_id[:, None, None]
    k_of = torch.as_tensor(ks, device=labels.device)[clip_of]
    any_obj = (lab >= 1) & (lab <= k_of[:, None, None])                 # excludes void 255
    return obj.float(), (any_obj & ~obj).float()


def clip_logits(model: nn.Module, frames: torch.Tensor, masks: torch.Tensor, num_objects: Sequence[int] |
                torch.Tensor, *, sigma: float | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """STM's training forward for a batch of 3-frame clips.

    frames (B,3,3,H,W) in [0,1], masks (B,3,H,W) ids 0..K_b (255 void; only frame 0 is read),
    num_objects (B,) → (logits of frame 1, logits of frame 2): lists over clips of (K_b+1,H,W)
    soft-aggregated logits (softmax over dim 0 = probabilities). H, W must be multiples of 16.
    """
    from kmnlib.model.ops import soft_aggregate

    b, t, _, h, w = frames.shape
    if t != 3 or masks.shape[:2] != (b, 3):
        raise ValueError(f"clip_logits expects frames (B,3,3,H,W) and masks (B,3,H,W), got "
                         f"{tuple(frames.shape)} and {tuple(masks.shape)}")
    if h % 16 or w % 16:
        raise ValueError(f"clip_logits: frame size {h}x{w} is not a multiple of 16 (crop size must be)")
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
        fg = model.segment(qk, qv, f8, f4, mem_k, mem_v, sigma=sigma)     # (sumK,H,W)
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


def _clip_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of soft-aggregated logits (K+1,H,W) vs labels (H,W), void ignored."""
    ce = F.cross_entropy(logits.float()[None], labels[None].long(), ignore_index=VOID, reduction="none")[0]
    if reduction == "none":
        return ce
    valid = (labels != VOID).sum().clamp(min=1)  # an all-void frame contributes 0, not NaN
    return ce.sum() / valid


def clip_losses(model: nn.Module, batch: dict[str, Any], *, sigma: float | None = None
                ) -> dict[str, torch.Tensor]:
    """Mean per-pixel cross-entropy of frames 1 and 2 over the batch: dict(loss_f1, loss_f2, loss)."""
    frames, masks = batch["frames"], batch["masks"]
    ks = [int(k) for k in batch["num_objects"]]
    _check_labels(masks, ks)
    logits1, logits2 = clip_logits(model, frames, masks, ks, sigma=sigma)
    f1 = torch.stack([_clip_ce(lg, masks[i, 1]) for i, lg in enumerate(logits1)]).mean()
    f2 = torch.stack([_clip_ce(lg, masks[i, 2]) for i, lg in enumerate(logits2)]).mean()
    return {"loss_f1": f1, "loss_f2": f2, "loss": f1 + f2}


class StepModule(nn.Module):
    """The training step as a module whose forward returns the losses, so DDP wraps the whole step
    (DDP's gradient bookkeeping runs through ``forward``; calling the KMN methods directly would skip it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, masks: torch.Tensor, num_objects: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        out = clip_losses(self.model, {"frames": frames, "masks": masks, "num_objects": num_objects})
        return out["loss_f1"], out["loss_f2"]


def _all_ranks_any(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any rank (so every rank stops together instead of hanging)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def train_step(step_module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batch: dict[str, Any], *, step: int, device: torch.device, amp: bool = False
               ) -> dict[str, float]:
    """One optimisation step on a collated batch; returns the float losses.

    Raises :class:`TrainingDiverged` (before touching the weights) when a loss is NaN/inf, and — without
    AMP, where no scaler skips bad steps — when the gradient norm is.
    """
    frames = batch["frames"].to(device, non_blocking=True)
    masks = batch["masks"].to(device, non_blocking=True)
    nobj = torch.as_tensor(batch["num_objects"])
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        f1, f2 = step_module(frames, masks, nobj)
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


# ----------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             # numpy's key array as a tensor so the checkpoint loads with weights_only=True
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with torch.save to a temp file beside ``path``, then ``os.replace`` it in."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a kmn-study training checkpoint (no 'model' entry)")
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Build the network described by a training checkpoint's profile and load its weights (eval mode)."""
    from kmnlib.config import ModelConfig
    from kmnlib.model import build_model

    state = load_checkpoint(path)
    model = build_model(ModelConfig(**state["profile"]["model"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def run_name(stage: str, *, hide: bool = True, init: str | os.PathLike | None = None) -> str:
    """Default run name: ``pretrain`` / ``pretrain_nohas``; ``main_from_<init stem>`` / ``main_scratch``."""
    if stage == "pretrain":
        return "pretrain" if hide else "pretrain_nohas"
    if stage == "main":
        return f"main_from_{Path(init).stem}" if init else "main_scratch"
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def stage_config(profile: Profile, stage: str) -> StageConfig:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return getattr(profile, stage)


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------

def build_clip_dataset(profile: Profile, stage: str, *, total: int, hide: bool = True, seed: int = 0,
                       world: int = 1) -> Any:
    """The clip dataset of a stage (item ``i`` depends only on (seed, i); its ramp step is
    ``i // (batch_size * world)``, so one global step spans every rank's batch)."""
    from kmnlib.data import open_static_dataset, open_video_dataset
    from kmnlib.synthesis import StaticClipDataset, VideoClipDataset

    cfg = stage_config(profile, stage)
    cfg = replace(cfg, iterations=total, batch_size=cfg.batch_size * world)
    if stage == "pretrain":
        folders = [open_static_dataset(s) for s in profile.static_sets]
        return StaticClipDataset.from_stage(folders, cfg, hide=hide, seed=seed)
    videos = [open_video_dataset(s, resolution=cfg.video_resolution, max_objects=cfg.max_objects)
              for s in profile.video_sets]
    sequences = [ds[i] for ds in videos for i in range(len(ds))]
    return VideoClipDataset.from_stage(sequences, cfg, seed=seed)


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``i`` is the collated batch of iteration ``start + i`` on this rank.

    Iteration ``s`` on rank ``r`` of ``w`` takes clips ``s*B*w + r*B + j`` (j < B): ranks draw distinct
    clips (as a DistributedSampler would) and everything is a function of (seed, s, r), so DataLoader
    workers, kills and resumes do not change the data.
    """

    def __init__(self, clips: Any, batch_size: int, *, start: int, total: int, rank: int = 0,
                 world: int = 1) -> None:
        self.clips, self.batch_size = clips, batch_size
        self.start, self.total, self.rank, self.world = start, total, rank, world

    def __len__(self) -> int:
        return self.total - self.start

    def batch(self, step: int) -> dict[str, Any]:
        """The collated batch of iteration ``step`` (0-based) plus ``step``, ``hide_p``, ``max_gap``."""
        from kmnlib.synthesis import collate_clips

        first = (step * self.world + self.rank) * self.batch_size
        out = collate_clips([self.clips[first + j] for j in range(self.batch_size)])
        out["step"] = step
        hide_p = getattr(self.clips, "hide_p", None)
        gap = getattr(self.clips, "max_gap", None)
        out["hide_p"] = float(hide_p(first)) if callable(hide_p) else None
        out["max_gap"] = int(gap(first)) if callable(gap) else None
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.batch(self.start + i)


# ----------------------------------------------------------------------------------------------------
# logging
# ----------------------------------------------------------------------------------------------------

def _rewrite_csv(path: Path, keep_until: int) -> None:
    """Atomically rewrite the log keeping the header and rows with step <= keep_until."""
    rows: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit()
                    and int(r["step"]) <= keep_until]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r.get(k, "") for k in CSV_FIELDS} for r in rows)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()))


def _log_row(step: int, losses: dict[str, float], lr: float, batch: dict[str, Any], clips_per_s: float,
             wall_s: float) -> dict[str, Any]:
    """One CSV row; ``hide_p`` is empty for video stages and ``max_gap`` for static ones."""
    return {"step": step, "loss": f"{losses['loss']:.6g}", "loss_f1": f"{losses['loss_f1']:.6g}",
            "loss_f2": f"{losses['loss_f2']:.6g}", "lr": lr,
            "hide_p": "" if batch["hide_p"] is None else f"{batch['hide_p']:.4g}",
            "max_gap": "" if batch["max_gap"] is None else batch["max_gap"],
            "clips_per_s": f"{clips_per_s:.3f}", "wall_s": f"{wall_s:.2f}"}


def read_log(path: str | os.PathLike):
    """The per-iteration training log as a pandas DataFrame."""
    import pandas as pd
    return pd.read_csv(path)


# ----------------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------------

def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _run_spec(profile: Profile, stage: str, total: int, hide: bool, seed: int, init: Path | None
              ) -> dict[str, Any]:
    """What a checkpoint must match to be reused or resumed (a changed config means a different run)."""
    return {"profile": profile.name, "stage": stage, "iterations": total, "seed": seed,
            "hide": bool(hide) if stage == "pretrain" else True,
            "init": str(init) if init else None,
            "model": asdict(profile.model), "stage_config": asdict(stage_config(profile, stage)),
            "static_sets": list(profile.static_sets) if stage == "pretrain" else [],
            "video_sets": list(profile.video_sets) if stage == "main" else []}


def _spec_mismatch(saved: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    saved = saved or {}
    # keys compared through repr so tuples and lists stored by torch.save compare equal
    return [k for k in spec if repr(_listify(saved.get(k))) != repr(_listify(spec[k]))]


def _listify(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_listify(v) for v in x]
    if isinstance(x, dict):
        return {k: _listify(v) for k, v in x.items()}
    return x


def train_stage(profile: Profile | str, stage: str, out_dir: str | os.PathLike, *,
                init: str | os.PathLike | None = None, hide: bool = True, iterations: int | None = None,
                device: str | torch.device | None = None, seed: int | None = None, resume: bool = True,
                progress: bool = True, force: bool = False, name: str | None = None,
                callback: Callable[[int, nn.Module, dict[str, float]], None] | None = None) -> Path:
    """Train one stage and return its final checkpoint path (``out_dir/<name>.pt``).

    ``stage`` "pretrain": static-image clips with Hide-and-Seek (``hide=False`` → p = 0, the no-HaS arm);
    "main": video clips, starting from the ``init`` checkpoint. An existing final checkpoint of the same
    run is returned as is unless ``force``; otherwise ``out_dir/<name>.last.pt`` is resumed when
    ``resume``. Under ``torchrun`` (WORLD_SIZE > 1) it trains with DistributedDataParallel and only
    rank 0 writes files. ``callback(step, model, losses)`` runs on every rank after each iteration.
    Raises :class:`TrainingDiverged` on a NaN/inf loss, keeping the last good checkpoint.
    """
    from tqdm.auto import tqdm

    from kmnlib.model import build_model

    profile = get_profile(profile) if isinstance(profile, str) else profile
    cfg = stage_config(profile, stage)
    seed = profile.seed if seed is None else int(seed)
    total = int(iterations if iterations is not None else cfg.iterations)
    if total < 1:
        raise ValueError(f"iterations must be >= 1, got {total}")
    init = Path(init).resolve() if init else None
    if init is not None and not init.is_file():
        raise FileNotFoundError(f"{init}: init checkpoint not found")
    name = name or run_name(stage, hide=hide, init=init)
    out_dir = Path(out_dir)
    final_path, last_path, log_path = (out_dir / f"{name}.pt", out_dir / f"{name}.last.pt",
                                       out_dir / f"{name}.csv")
    spec = _run_spec(profile, stage, total, hide, seed, init)

    rank, world, local_rank = _dist_info()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    own_group = False
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    if world > 1:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    is_main = rank == 0

    try:
        if final_path.exists() and not force:
            saved = load_checkpoint(final_path)
            diff = _spec_mismatch(saved.get("spec"), spec)
            if diff:
                raise ValueError(f"{final_path}: a finished run with different settings ({', '.join(diff)}) "
                                 f"is there; pass force=True (--force) to retrain or choose another out_dir")
            return final_path

        # Model init is seeded so every rank (and every re-run) starts from the same weights.
        torch.manual_seed(seed)
        model = build_model(profile.model).to(device)
        if init is not None:
            src = load_checkpoint(init)
            if _listify(src["profile"]["model"]) != _listify(asdict(profile.model)):
                raise ValueError(f"{init}: its model config {src['profile']['model']} differs from "
                                 f"profile {profile.name!r}'s {asdict(profile.model)}")
            model.load_state_dict(src["model"])
        model.train()
        model.freeze_bn()
        amp = bool(profile.amp and device.type == "cuda")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)

        start, elapsed = 0, 0.0
        if resume and not force and last_path.exists():
            state = load_checkpoint(last_path, map_location=device)
            diff = _spec_mismatch(state.get("spec"), spec)
            if state.get("world_size", 1) != world:
                diff.append(f"world_size {state.get('world_size')}→{world}")
            if diff:
                raise ValueError(f"{last_path}: cannot resume, the run settings changed ({', '.join(diff)}); "
                                 f"pass resume=False (--no-resume) or force=True to start over")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            start, elapsed = int(state["step"]), float(state.get("wall_s", 0.0))
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            _rewrite_csv(log_path, keep_until=start)  # drop rows logged after the checkpoint we resume

        step_module: nn.Module = StepModule(model)
        if world > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None)

        def state_at(step: int, wall: float, finished: bool) -> dict[str, Any]:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "step": step, "rng": _rng_state(),
                    "profile": profile.to_dict(), "spec": spec, "stage": stage, "name": name,
                    "world_size": world, "wall_s": wall, "finished": finished}

        clips = build_clip_dataset(profile, stage, total=total, hide=hide, seed=seed, world=world)
        batches = StepBatches(clips, cfg.batch_size, start=start, total=total, rank=rank, world=world)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                             num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        bar = tqdm(total=total, initial=start, disable=not (progress and is_main),
                   desc=f"{profile.name}/{name}", dynamic_ncols=True)
        log_fh = open(log_path, "a", newline="") if is_main else None
        writer = csv.DictWriter(log_fh, fieldnames=CSV_FIELDS, lineterminator="\n") if log_fh else None
        try:
            t_prev = time.perf_counter()
            for batch in loader:
                step = int(batch["step"])
                losses = train_step(step_module, optimizer, scaler, batch, step=step + 1, device=device, amp=amp)
                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                elapsed += dt
                clips_per_s = cfg.batch_size * world / max(dt, 1e-9)
                done = step + 1
                if writer is not None:
                    writer.writerow(_log_row(done, losses, optimizer.param_groups[0]["lr"], batch,
                                             clips_per_s, elapsed))
                    log_fh.flush()
                    if done % cfg.checkpoint_every == 0 and done < total:
                        save_checkpoint(last_path, state_at(done, elapsed, finished=False))
                bar.update(1)
                if done % max(cfg.log_every, 1) == 0 or done == total:
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", clips_s=f"{clips_per_s:.2f}")
                if callback is not None:
                    callback(done, model, losses)
        except TrainingDiverged as exc:
            kept = f"last good checkpoint: {last_path}" if last_path.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(f"{profile.name}/{name}: {exc}; {kept}") from None
        finally:
            bar.close()
            if log_fh is not None:
                log_fh.close()

        if is_main:
            save_checkpoint(final_path, state_at(total, elapsed, finished=True))
            if last_path.exists():
                last_path.unlink()  # the final checkpoint supersedes it
        if world > 1:
            torch.distributed.barrier()  # other ranks return only once the final checkpoint exists
        return final_path
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# loss maps (paper Fig. 7)
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def loss_map(model: nn.Module, clip: dict[str, Any], *, device: str | torch.device = "cpu",
             sigma: float | None = None) -> dict[str, torch.Tensor]:
    """Per-pixel cross-entropy of a 3-frame clip under ``model``: the training forward (STM read unless
    ``sigma``), in eval mode, without gradients.

    ``clip``: an item of the training datasets — ``frames`` (3,3,S,S) in [0,1], ``masks`` (3,S,S) ids
    0..K, ``num_objects`` K, ``hidden`` (3,g,g) bool. Returned keys (CPU tensors):

    * ``loss`` float (2,S,S): cross-entropy at frames 1 and 2 (0 on void pixels)
    * ``mean_loss`` float (2,): its mean over the non-void pixels, per frame
    * ``probs`` float (2,K+1,S,S): soft-aggregated probabilities at frames 1 and 2 (index 0 = background)
    * ``pred`` long (2,S,S): argmax labels at frames 1 and 2
    * ``masks`` long (3,S,S): ground-truth label maps of frames 0, 1, 2
    * ``frames`` float (3,3,S,S): the input frames
    * ``hidden`` bool (3,g,g): Hide-and-Seek cell grid, True = hidden
    * ``hidden_pixels`` bool (3,S,S): that grid at pixel resolution (the cells' pixel extents)
    """
    from kmnlib.synthesis import hidden_pixels

    frames = torch.as_tensor(clip["frames"]).float()
    masks = torch.as_tensor(clip["masks"]).long()
    hidden = torch.as_tensor(clip["hidden"]).bool()
    if frames.dim() != 4 or frames.shape[:2] != (3, 3) or masks.shape != (3, *frames.shape[-2:]):
        raise ValueError(f"loss_map expects frames (3,3,S,S) and masks (3,S,S), got {tuple(frames.shape)} "
                         f"and {tuple(masks.shape)}")
    k = int(clip["num_objects"])
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        l1, l2 = clip_logits(model, frames[None].to(dev), masks[None].to(dev), [k], sigma=sigma)
    finally:
        model.train(was_training)
    logits = torch.stack([l1[0], l2[0]]).float().cpu()
    loss = torch.stack([_clip_ce(logits[i], masks[i + 1], reduction="none") for i in range(2)])
    valid = (masks[1:] != VOID).flatten(1).sum(1).clamp(min=1)
    h, w = frames.shape[-2:]
    hid_px = torch.from_numpy(np.stack([hidden_pixels(hd.numpy(), h, w) for hd in hidden]))
    return {"loss": loss, "mean_loss": loss.flatten(1).sum(1) / valid, "probs": logits.softmax(dim=1),
            "pred": logits.argmax(dim=1), "masks": masks, "frames": frames, "hidden": hidden,
            "hidden_pixels": hid_px}


def synthesized_pair(image: np.ndarray, mask: np.ndarray, *, size: int, hide_p: float, seed: int,
                     grid: int, max_objects: int = 3) -> dict[str, dict[str, Any]]:
    """One static image synthesised twice from the same rng seed, without hiding (``"plain"``) and with
    Hide-and-Seek at ``hide_p`` (``"hidden"``). Hiding draws come after the geometry and colour draws,
    so both clips share frames and masks except for the hidden cells. Values are clip dicts."""
    from kmnlib.synthesis import synthesize_clip

    out = {}
    for key, p in (("plain", 0.0), ("hidden", float(hide_p))):
        frames, masks, hidden = synthesize_clip(image, mask, size=size, n_frames=3, hide_p=p, grid=grid,
                                                max_objects=max_objects, rng=np.random.default_rng(seed))
        out[key] = {"frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
                    "masks": torch.from_numpy(masks.astype(np.int64)), "num_objects": int(masks[0].max()),
                    "hidden": torch.from_numpy(hidden)}
    return out


def loss_map_pair(model: nn.Module, image: np.ndarray, mask: np.ndarray, *, size: int, hide_p: float,
                  seed: int, grid: int, device: str | torch.device = "cpu", sigma: float | None = None
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`loss_map` of both clips of :func:`synthesized_pair`: ``{"plain": ..., "hidden": ...}``."""
    pair = synthesized_pair(image, mask, size=size, hide_p=hide_p, seed=seed, grid=grid)
    return {k: loss_map(model, clip, device=device, sigma=sigma) for k, clip in pair.items()}


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmnlib.train", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--stage", choices=STAGES, required=True)
    ap.add_argument("--out", type=Path, default=None,
                    help="checkpoint folder (default results/<profile>/checkpoints)")
    ap.add_argument("--no-hide", action="store_true", help="pretrain without Hide-and-Seek (p = 0)")
    ap.add_argument("--init", type=Path, default=None, help="checkpoint to start from (main stage)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--name", default=None, help="run name (default from stage/hide/init)")
    ap.add_argument("--force", action="store_true", help="retrain even if the final checkpoint exists")
    ap.add_argument("--no-resume", action="store_true", help="ignore <name>.last.pt and start over")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 is much faster when other jobs share the CPU)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out or results_root() / a.profile / "checkpoints"
    try:
        path = train_stage(a.profile, a.stage, out, init=a.init, hide=not a.no_hide, iterations=a.iterations,
                           device=a.device, seed=a.seed, resume=not a.no_resume, progress=not a.quiet,
                           force=a.force, name=a.name)
    except (TrainingDiverged, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
