"""Where a query position reads from (paper Fig. 1): read weights over a memory frame, per read."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from kmnlib.config import FEATURE_STRIDE
from kmnlib.data.masks import VOID
from kmnlib.data.video import frames_to_tensor
from kmnlib.memory import read_weights, sigma_label
from kmnlib.model.ops import pad_amounts, pad_divide_by, resize_frames, resize_labels
from kmnlib.study.runs import DAVIS16_VAL, davis
from kmnlib.study.session import Study


@torch.no_grad()
def read_weight_maps(model: nn.Module, memory_frame: torch.Tensor, memory_mask: np.ndarray,
                     query_frame: torch.Tensor, query_yx: tuple[int, int],
                     sigmas: Sequence[float | None], *, device: str = "cpu"
                     ) -> dict[str, np.ndarray]:
    """Where one query position reads from in a one-frame memory, for each read in ``sigmas``.

    Frames float (3,H,W) in [0,1], ``memory_mask`` (H,W) ids (object 1 is memorised), ``query_yx``
    in key-feature cells of the padded query. Returns ``{sigma_label: weights (h,w)}`` summing to 1.
    """
    model = model.to(device).eval()
    mf, _ = pad_divide_by(memory_frame[None].to(device))
    qf, _ = pad_divide_by(query_frame[None].to(device))
    mm = torch.from_numpy((np.asarray(memory_mask) == 1).astype(np.float32))[None].to(device)
    mm, _ = pad_divide_by(mm)
    mk, _ = model.encode_memory(mf, mm, torch.zeros_like(mm))
    qk = model.encode_query(qf)[0]
    out = {}
    for s in sigmas:
        w = read_weights(mk[:, :, None], qk, query_yx, sigma=s)  # one memory frame: T = 1
        out[sigma_label(s)] = w[0].cpu().numpy()
    return out


def object_centre_cell(mask: np.ndarray, *, obj: int = 1) -> tuple[int, int]:
    """Key-feature cell (y, x) at the centroid of object ``obj`` in a mask, after stride padding."""
    ys, xs = np.nonzero(np.asarray(mask) == obj)
    if ys.size == 0:
        raise ValueError(f"object {obj} is absent from the mask")
    lw, _, lh, _ = pad_amounts(*np.asarray(mask).shape)
    return int((ys.mean() + lh) // FEATURE_STRIDE), int((xs.mean() + lw) // FEATURE_STRIDE)


def object_cell_fraction(mask: np.ndarray, *, obj: int = 1) -> np.ndarray:
    """Fraction of each key-feature cell (padded grid) covered by object ``obj``."""
    m = torch.from_numpy((np.asarray(mask) == obj).astype(np.float32))[None, None]
    padded, _ = pad_divide_by(m)
    return F.avg_pool2d(padded, FEATURE_STRIDE)[0, 0].numpy()


def read_weight_example(study: Study, model: nn.Module, *, sequence: str, sigma: float,
                        query_index: int | None = None) -> dict[str, Any]:
    """Fig. 1 data: read weights of one query position (centre of the annotated object in frame
    ``query_index``, default the middle frame) over memory frame 0, for STM's read and σ.

    Frames are resized to the study's inference height. ``summary`` gives per read the largest
    weight and the share of the weight that falls on the annotated object in the memory frame.
    """
    seq = davis(study, DAVIS16_VAL)[sequence]
    qi = len(seq) // 2 if query_index is None else int(query_index)
    frames = frames_to_tensor(seq.load_frames([0, qi]))
    masks = torch.from_numpy(seq.load_masks([0, qi]))
    if study.profile.inference.infer_height:
        frames = resize_frames(frames, study.profile.inference.infer_height)
        masks = resize_labels(masks, tuple(frames.shape[-2:]))
    masks = np.where(masks.numpy() == VOID, 0, masks.numpy())
    query_yx = object_centre_cell(masks[1])
    weights = read_weight_maps(model, frames[0], masks[0], frames[1], query_yx, [None, sigma],
                               device=study.device)
    frac = object_cell_fraction(masks[0])
    summary = pd.DataFrame([{"read": k, "max weight": float(v.max()),
                             "weight on the annotated object": float((v * frac).sum())}
                            for k, v in weights.items()])
    return {"memory_frame": frames[0], "query_frame": frames[1], "query_yx": query_yx,
            "weights": weights, "summary": summary, "frames": (0, qi)}
