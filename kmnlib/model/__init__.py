"""The network: backbones, encoders, key/value heads, decoder (:class:`KMN`), its preparation for
inference (:func:`prepare_for_inference`), STM checkpoints."""
from __future__ import annotations

from typing import Any

import torch

from kmnlib.config import ModelConfig
from kmnlib.model.network import KMN
from kmnlib.model.ops import pad_divide_by, soft_aggregate, unpad
from kmnlib.model.prepare import prepare_for_inference
from kmnlib.model.stm_checkpoint import load_stm_checkpoint, to_stm_state_dict

__all__ = ["KMN", "build_model", "pad_divide_by", "unpad", "soft_aggregate",
           "prepare_for_inference", "load_stm_checkpoint", "to_stm_state_dict"]


def build_model(cfg: Any) -> KMN:
    """A :class:`KMN` for a :class:`~kmnlib.config.ModelConfig` (or a Profile: its ``.model``)."""
    model_cfg = getattr(cfg, "model", cfg)
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig or Profile, got {type(cfg).__name__}")
    formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    if model_cfg.memory_format not in formats:
        raise ValueError(f"ModelConfig.memory_format: expected one of {list(formats)}, "
                         f"got {model_cfg.memory_format!r}")
    return KMN(model_cfg).to(memory_format=formats[model_cfg.memory_format])

