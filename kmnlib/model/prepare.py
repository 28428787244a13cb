"""A network prepared for inference: the speed-ups an :class:`~kmnlib.config.InferenceConfig` asks for.

:func:`kmnlib.checkpoints.load_model` and :func:`kmnlib.model.stm_checkpoint.load_stm_checkpoint`
return networks prepared this way by default (``inference=None`` for the raw network, e.g. to train
it or to compare with it).
"""
from __future__ import annotations

import copy

import torch.nn as nn

from kmnlib.config import InferenceConfig
from kmnlib.model.fold import fold_batchnorm
from kmnlib.model.winograd import winograd_convolutions


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
