"""The learning rate of a training step: linear warm-up, then constant or a cosine decay.

``learning_rate(cfg, step)`` for the 0-based step ``step`` of a stage of ``cfg.iterations``: during
the first ``cfg.warmup_iterations`` steps it rises linearly to ``cfg.lr`` (``lr · (step + 1) /
warmup``); afterwards it stays at ``cfg.lr`` (``lr_decay = "constant"``, the shipped profiles) or
follows a half cosine from ``cfg.lr`` down to ``cfg.lr · cfg.lr_final_fraction`` at the last step
(``"cosine"``). A pure function of the step, so a resumed run continues the same schedule.
"""
from __future__ import annotations

import math

from kmnlib.config import StageConfig

LR_DECAYS = ("constant", "cosine")


def learning_rate(cfg: StageConfig, step: int) -> float:
    """Learning rate of the 0-based ``step`` of a stage (module docstring)."""
    if not 0 <= step < cfg.iterations:
        raise ValueError(f"learning_rate: step {step} outside 0..{cfg.iterations - 1}")
    if step < cfg.warmup_iterations:
        return cfg.lr * (step + 1) / cfg.warmup_iterations
    if cfg.lr_decay == "constant":
        return cfg.lr
    span = max(1, cfg.iterations - 1 - cfg.warmup_iterations)
    progress = (step - cfg.warmup_iterations) / span
    final = cfg.lr * cfg.lr_final_fraction
    return final + (cfg.lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
