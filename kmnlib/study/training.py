"""The study's checkpoints: both arms (Hide-and-Seek or not) of each stage, trained if missing.

A finished checkpoint with the same settings is reused; ``force`` retrains. Per-iteration logs are
archived to ``out_dir/training/`` (checkpoints are not committed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kmnlib.checkpoints import load_checkpoint
from kmnlib.data import open_static_dataset
from kmnlib.files import save_csv
from kmnlib.parallel import spawn_map
from kmnlib.study.session import Study
from kmnlib.synthesis import StaticClipDataset
from kmnlib.training import train_stage
from kmnlib.training.batches import clip_fill
from kmnlib.training.trainer import checkpoint_name, run_spec, spec_mismatch

ARMS: dict[str, bool] = {"HaS": True, "no HaS": False}  # arm label → Hide-and-Seek pre-training
PROGRESS_EVERY_S = 60.0  # a training progress line on stderr this often (StudySettings.progress)


def _trained(study: Study, stage: str, hide: bool, force: bool) -> Path:
    """The checkpoint of ``stage`` for one arm; main training starts from that arm's pre-training
    (reused, never retrained here: ``force`` applies to ``stage`` only). A main checkpoint (or its
    resumable ``.last.pt``) made from another pre-training checkpoint than today's — the parent
    was retrained, e.g. ``--force --only 01_pretrain_static`` — is retrained, not reused; any other
    changed setting is still refused by the trainer unless ``force`` (``--force``)."""
    init = _trained(study, "pretrain", hide, force=False) if stage == "main" else None
    if init is not None and not force:
        force = parent_changed(study, hide, init)
    return train_stage(study.profile, stage, study.checkpoints, data_root=study.data_root,
                       hide=hide, init=init, device=study.device, force=force, progress=False,
                       report_every=PROGRESS_EVERY_S if study.settings.progress else None)


def parent_changed(study: Study, hide: bool, init: Path) -> bool:
    """Whether the arm's main checkpoint (final, else resumable) exists and differs from the run
    about to start only in its parent (``init``: the pre-training checkpoint's content hash)."""
    init = Path(init).resolve()
    name = checkpoint_name("main", hide=hide, init=init)
    spec = run_spec(study.profile, "main", hide, init)
    for path in (study.checkpoints / f"{name}.pt", study.checkpoints / f"{name}.last.pt"):
        if path.is_file():
            return spec_mismatch(load_checkpoint(path).get("spec"), spec) == ["init"]
    return False


def pretrained(study: Study, hide: bool) -> Path:
    """Checkpoint of static pre-training with (``hide``) or without Hide-and-Seek; trains if missing."""
    return _trained(study, "pretrain", hide, force=False)


def _train_job(study: Study, stage: str, hide: bool) -> Path:
    return _trained(study, stage, hide, force=study.force)


def train_arms(study: Study, stage: str) -> dict[str, Path]:
    """Checkpoints of both arms (:data:`ARMS`) after ``stage`` ("pretrain" or "main").

    With ``train_workers > 1`` the arms train side by side, one torch thread each: on a 2-core CPU
    two single-threaded runs finish sooner than the same runs one after the other with two
    threads (benchmarks/README.md). Each run is the same as the sequential one (same seed, data
    order and checkpoints).
    """
    if stage not in ("pretrain", "main"):
        raise ValueError(f"train_arms: stage must be 'pretrain' or 'main', got {stage!r}")
    paths = spawn_map(_train_job, [(study, stage, hide) for hide in ARMS.values()],
                      study.settings.train_workers)
    return dict(zip(ARMS, paths))


def training_log(checkpoint: Path) -> Path:
    """The per-iteration CSV log written next to a checkpoint by the trainer."""
    return Path(checkpoint).with_suffix(".csv")


def archive_training_logs(study: Study, checkpoints: dict[str, Path]) -> list[Path]:
    """Copy each run's per-iteration CSV log to ``out_dir/training/``."""
    return [save_csv(pd.read_csv(training_log(c)), study.out_dir / "training" / training_log(c).name)
            for c in checkpoints.values()]


def sample_static_clips(study: Study, n: int) -> list[dict[str, Any]]:
    """``n`` pre-training clips as the HaS arm draws them at the end of its ramp (Fig. 4 data).

    Items of :class:`kmnlib.synthesis.StaticClipDataset` (frames, masks, hidden, name) plus the
    ``hide_p`` they were drawn with.
    """
    folders = [open_static_dataset(s, study.data_root) for s in study.profile.static_sets]
    ds = StaticClipDataset(folders, study.profile.pretrain, hide=True, seed=study.profile.seed,
                           fill=clip_fill(study.profile))
    last = len(ds) - 1
    clips = [{**ds[last - i], "hide_p": ds.hide_p(last - i)} for i in range(n)]
    for c in clips:  # "<set folder>/<image>" reads better than the absolute path
        c["name"] = "/".join(Path(c["name"]).parts[-2:])
    return clips


STAGE_LABELS = {"pretrain": "static only", "main": "static + video"}


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A trained model of the study: its stage, its pre-training arm, its checkpoint, and the tag
    its evaluation folders are named by (``pretrain_has``, ``pretrain_nohas``, ``has``, ``nohas``)."""

    stage: str
    arm: str
    checkpoint: Path

    @property
    def tag(self) -> str:
        base = "has" if ARMS[self.arm] else "nohas"
        return f"pretrain_{base}" if self.stage == "pretrain" else base

    @property
    def label(self) -> str:
        return f"{STAGE_LABELS[self.stage]}, {self.arm}"


def trained_models(study: Study, stages: tuple[str, ...] = ("pretrain", "main")
                   ) -> list[TrainedCheckpoint]:
    """Every (stage, arm) model of the study, trained if missing (in study order)."""
    return [TrainedCheckpoint(stage, arm, _trained(study, stage, hide, force=False))
            for stage in stages for arm, hide in ARMS.items()]
