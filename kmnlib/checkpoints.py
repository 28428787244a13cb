"""Training checkpoints on disk: atomic save, checked load, the network they hold, their stage.

File I/O only: preparing a network for inference (BatchNorm folded, Winograd convolutions) is
:func:`kmnlib.model.prepare.prepare_for_inference`, which :func:`load_model` applies by default.

A checkpoint is a dict written by :class:`kmnlib.training.trainer.Trainer`: ``model`` (state dict),
``optimizer``, ``scaler``, ``rng``, ``step``, ``profile`` (the whole profile as a dict), ``spec``
(the settings a re-run must match), ``stage`` ("pretrain" / "main"), ``name``, ``world_size``,
``wall_s`` and ``finished``. Official STM releases are read by :mod:`kmnlib.model.stm_checkpoint`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kmnlib.config import STAGES, InferenceConfig, ModelConfig
from kmnlib.files import atomic_write
from kmnlib.model import build_model
from kmnlib.model.prepare import prepare_for_inference


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with torch.save to a temp file beside ``path``, then ``os.replace`` it in."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with errors that name the file; one
    whose weights hold a NaN or an infinity (a diverged run) is refused, naming the first such
    tensor."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a checkpoint file "
                                f"(e.g. {path / 'pretrain.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a kmn-study training checkpoint (no 'model' entry)")
    bad = first_non_finite(state["model"])
    if bad is not None:
        raise ValueError(f"{path}: weight tensor {bad!r} holds NaN or inf values (a diverged "
                         f"run); retrain it (--force) or use an earlier checkpoint")
    return state


def first_non_finite(weights: Any) -> str | None:
    """Name of the first floating-point tensor of a state dict holding a NaN or an infinity."""
    if not isinstance(weights, dict):
        return None
    for name, tensor in weights.items():
        if (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())):
            return str(name)
    return None


def load_finished_checkpoint(path: str | os.PathLike, *, argument: str = "--init"
                             ) -> dict[str, Any]:
    """:func:`load_checkpoint`, refusing the checkpoint of a run that has not finished (a
    ``<name>.last.pt`` saved mid-run): a stage starts only from a finished one."""
    state = load_checkpoint(path)
    if state.get("finished", True) is False:   # a record without the flag was not saved mid-run
        total = (state.get("spec") or {}).get("iterations", "?")
        raise ValueError(f"{argument} {path}: the checkpoint of an unfinished run (step "
                         f"{state.get('step', '?')} of {total}); finish that run (re-running its "
                         f"training resumes it) and pass its final <name>.pt")
    return state


def check_run_name(name: str, *, argument: str = "--name") -> str:
    """``name`` if it can name run files inside the output folder (``<name>.pt``, ``.last.pt``,
    ``.csv``): not empty, no path separator, no ``..``; else a ``ValueError`` naming it."""
    seps = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    if not name or name.strip() != name or any(c in name for c in seps) or ".." in name:
        raise ValueError(f"{argument} {name!r}: a run name names files inside the output folder; "
                         f"use a plain name without path separators or '..', e.g. 'pretrain_b4'")
    return name


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", *,
               inference: InferenceConfig | None = InferenceConfig()) -> nn.Module:
    """The network a training checkpoint describes (its profile's model config), weights loaded,
    in eval mode on ``device`` — prepared for inference as ``inference`` asks
    (:func:`kmnlib.model.prepare.prepare_for_inference`, in place: BatchNorm folded, Winograd
    convolutions on CPU), which the default :class:`~kmnlib.config.InferenceConfig` does.

    Pass the profile's ``inference`` to honour its switches, or ``inference=None`` for the network
    exactly as trained: to resume or continue training it, or to compare against it."""
    state = load_checkpoint(path)
    try:
        model = build_model(ModelConfig(**state["profile"]["model"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot build its network ({' '.join(str(exc).split())[:300]})"
                         ) from None
    model = model.to(device).eval()
    if inference is None:
        return model
    return prepare_for_inference(model, inference, in_place=True)


def checkpoint_stage(path: str | os.PathLike) -> str:
    """``"pretrain"`` or ``"main"``: the stage recorded in the checkpoint itself."""
    stage = load_checkpoint(path).get("stage")
    if stage not in STAGES:
        raise ValueError(f"{path}: checkpoint records no training stage (got {stage!r})")
    return stage
