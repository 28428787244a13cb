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
