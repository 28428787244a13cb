"""The data of a training stage: its clip dataset, and the batch of every iteration on every rank.

The data of iteration ``s`` on rank ``r`` of ``w`` are clips ``(s*w + r)*batch + j`` of a dataset whose
items depend only on (seed, index) — so a resumed run sees exactly the data of an uninterrupted one.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from kmnlib.config import Profile
from kmnlib.data import open_static_dataset, open_video_dataset
from kmnlib.model.backbones import input_normalisation
from kmnlib.synthesis import StaticClipDataset, VideoClipDataset, collate_clips


def build_clip_dataset(profile: Profile, stage: str, data_root: str | os.PathLike, *,
                       hide: bool, world: int = 1) -> StaticClipDataset | VideoClipDataset:
    """The clip dataset of a stage of ``profile`` (its iterations, batch size, seed), read from
    ``data_root``. Item ``i`` depends only on (seed, i); its ramp step is
    ``i // (batch_size * world)``, so one global step spans every rank's batch. ``hide`` switches
    Hide-and-Seek (pre-training only; ``False`` is the no-HaS arm)."""
    cfg = profile.stage(stage)
    cfg = replace(cfg, batch_size=cfg.batch_size * world)
    fill = clip_fill(profile)
    if stage == "pretrain":
        folders = [open_static_dataset(s, data_root) for s in profile.static_sets]
        return StaticClipDataset(folders, cfg, hide=hide, seed=profile.seed, fill=fill)
    videos = [open_video_dataset(s, data_root, resolution=cfg.video_resolution,
                                 max_objects=cfg.max_objects) for s in profile.video_sets]
    sequences = [ds[i] for ds in videos for i in range(len(ds))]
    return VideoClipDataset(sequences, cfg, seed=profile.seed, fill=fill)


def clip_fill(profile: Profile) -> tuple[float, float, float]:
    """The colour of hidden cells and of pixels warped in from outside an image: the backbone's
    input-normalisation mean, which the network maps to exactly 0 ("nothing")."""
    return input_normalisation(profile.model.backbone)[0]


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
