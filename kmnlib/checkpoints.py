"""Training checkpoints on disk: atomic save, checked load, the network they hold, their stage.

A checkpoint is a dict written by :class:`kmnlib.training.trainer.Trainer`: ``model`` (state dict),
``optimizer``, ``scaler``, ``rng``, ``step``, ``profile`` (the whole profile as a dict), ``spec``
(the settings a re-run must match), ``stage`` ("pretrain" / "main"), ``name``, ``world_size``,
``wall_s`` and ``finished``. Official STM releases are read by :mod:`kmnlib.model.stm_checkpoint`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kmnlib.config import STAGES, InferenceConfig, ModelConfig
from kmnlib.files import atomic_write
from kmnlib.model import build_model
from kmnlib.model.fold import fold_batchnorm
from kmnlib.model.winograd import winograd_convolutions


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
    """The network a training checkpoint describes (its profile's model config), weights loaded,
    in eval mode on ``device``."""
    state = load_checkpoint(path)
    try:
        model = build_model(ModelConfig(**state["profile"]["model"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot build its network ({' '.join(str(exc).split())[:300]})"
                         ) from None
    return model.to(device).eval()


def inference_model(path: str | os.PathLike, inference: InferenceConfig,
                    device: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_model`, then :func:`prepare_for_inference` on it (in place: it is ours)."""
    return prepare_for_inference(load_model(path, device), inference, in_place=True)


def prepare_for_inference(model: nn.Module, inference: InferenceConfig, *,
                          in_place: bool = False) -> nn.Module:
    """A copy of ``model`` (``in_place``: ``model`` itself, so that memory holds one network, not
    two) in eval mode with the speed-ups ``inference`` asks for: BatchNorm folded
    (:func:`kmnlib.model.fold.fold_batchnorm`), wide 3x3 convolutions as Winograd's on a CPU model
    (:func:`kmnlib.model.winograd.winograd_convolutions`; on CUDA cuDNN picks its own algorithm).
    Outputs equal the unprepared model's up to float rounding (tests/test_optimisations.py)."""
    out = (model if in_place else copy.deepcopy(model)).eval()
    if inference.fold_batchnorm:
        fold_batchnorm(out, in_place=True)
    if inference.winograd and all(p.device.type == "cpu" for p in out.parameters()):
        winograd_convolutions(out, in_place=True)
    return out


def checkpoint_stage(path: str | os.PathLike) -> str:
    """``"pretrain"`` or ``"main"``: the stage recorded in the checkpoint itself."""
    stage = load_checkpoint(path).get("stage")
    if stage not in STAGES:
        raise ValueError(f"{path}: checkpoint records no training stage (got {stage!r})")
    return stage
