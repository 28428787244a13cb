"""What the checks run on: DAVIS-2016 val sequences and random-weight models from a fixed seed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmnlib.data import DAVISDataset, frames_to_tensor
from kmnlib.model import build_model
from kmnlib.model.ops import resize_frames, resize_labels

from .plan import Plan


def load_sequence(data_root: Path, name: str, n_frames: int, height: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``n_frames`` frames of a DAVIS-2016 val sequence at 480p (float (T,3,H,W)) and the
    first-frame label map, resized to ``height`` when given."""
    seq = DAVISDataset(data_root / "DAVIS-2016", "2016", "val", "480p")[name]
    frames = frames_to_tensor(seq.load_frames(range(min(n_frames, len(seq)))))
    mask = torch.from_numpy(seq.load_mask(0).astype(np.int64))
    mask[mask == 255] = 0
    if height is not None:
        frames = resize_frames(frames, height)
        mask = resize_labels(mask, tuple(frames.shape[-2:]))
    return frames, mask


def val_sequences(data_root: Path, plan: Plan) -> list[str]:
    if plan.infer_sequences:
        return list(plan.infer_sequences)
    return list(DAVISDataset(data_root / "DAVIS-2016", "2016", "val", "480p").names[:3])


def seeded_model(cfg: Any, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)
