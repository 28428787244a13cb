"""Where the kernel is supposed to act: a similar-looking *other* object (the twin set's mirrored
copy) reading the target's memory.

* :func:`twin_leakage` — per frame, the fraction of the twin's visible pixels a run labels as the
  object (:func:`kmnlib.metrics.leakage`).
* :func:`read_probe` — with frame 0 and its given mask as the memory, for query frames of a twin
  video: how much read weight query cells on the twin / on the background / on the object put on
  the object's memory cells, per read (STM, kernel σ); the logit gaps (best − second-best memory
  cell per query; at twin cells the best object cell − the best non-object cell) against the
  kernel's log-penalty ``d²/2σ²`` at the distance ``d`` between a twin cell and the query cell
  ``q̂(p*)`` its best object memory cell matches best; and where the object memory cells' ``q̂(p)``
  land (object, twin, elsewhere).

Cells: feature cells (1/16) more than half covered by the object / by the twin (a cell on both is
the object's); memory object cells likewise from the given mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from kmnlib.data.derived import twin_masks
from kmnlib.data.masks import read_label_map
from kmnlib.data.video import VideoSequence
from kmnlib.memory import read_logits, sigma_label
from kmnlib.metrics import leakage
from kmnlib.model.ops import cell_coverage, pad_divide_by, resize_frames, resize_labels

CELL_CLASSES = ("object", "twin", "background")
WEIGHT_COLUMNS = ["sequence", "frame", "cells", "n_cells", "read", "sigma", "weight_on_object"]
GAP_COLUMNS = ["sequence", "frame", "top_gap", "object_gap", "distance"]
QHAT_COLUMNS = ["sequence", "frame", "on_object", "on_twin", "elsewhere"]


def twin_leakage(masks_dir: str | Path, twin_root: str | Path, sequences: Sequence[str]
                 ) -> pd.DataFrame:
    """Per evaluated frame (DAVIS protocol: first and last frame excluded) of each sequence: the
    twin's visible pixels and the fraction of them the result PNGs label as object 1.

    Columns ``sequence``, ``frame``, ``twin_pixels``, ``leakage`` (NaN where no twin is visible).
    """
    rows = []
    for seq in sequences:
        twins = twin_masks(twin_root, seq)
        paths = sorted((Path(masks_dir) / seq).glob("*.png"))
        if len(paths) != len(twins):
            raise ValueError(f"{Path(masks_dir) / seq}: {len(paths)} result masks for "
                             f"{len(twins)} frames")
        for t in range(1, len(paths) - 1):
            pred = read_label_map(paths[t]) == 1
            rows.append({"sequence": seq, "frame": paths[t].stem,
                         "twin_pixels": int(twins[t].sum()),
                         "leakage": float(leakage(pred, twins[t])[0])})
    return pd.DataFrame(rows)


def leakage_by_sequence(per_frame: pd.DataFrame) -> pd.DataFrame:
    """Mean leakage per sequence over its frames with a visible twin (columns sequence, leakage)."""
    return (per_frame.dropna(subset=["leakage"]).groupby("sequence", sort=False)["leakage"]
            .mean().reset_index())


def _inputs(seq: VideoSequence, twins: np.ndarray, frames: Sequence[int], infer_height: int | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames (T,3,h,w) in [0,1], object (T,h,w) and twin (T,h,w) bool maps at inference size."""
    idx = [0, *frames]
    x = torch.from_numpy(seq.load_frames(idx)).permute(0, 3, 1, 2)  # uint8, as evaluation reads
    obj = torch.from_numpy(seq.load_masks(idx) == 1)
    tw = torch.from_numpy(twins[idx])
    if infer_height:
        x = resize_frames(x, infer_height)
        obj = resize_labels(obj.to(torch.uint8), tuple(x.shape[-2:])).bool()
        tw = resize_labels(tw.to(torch.uint8), tuple(x.shape[-2:])).bool()
    return x.float().div_(255.0), obj, tw


@torch.no_grad()
def read_probe(model: nn.Module, seq: VideoSequence, twins: np.ndarray, *, frames: Sequence[int],
               sigmas: Sequence[float | None], infer_height: int | None, device: str = "cpu"
               ) -> dict[str, pd.DataFrame]:
    """The read of query frames ``frames`` of a twin-set video from a memory of frame 0 (given
    mask); see the module docstring. Returns three tables:

    * ``weights``: sequence, frame, cells (object/twin/background), n_cells, read, sigma,
      weight_on_object (mean over those query cells of the total weight on object memory cells);
    * ``gaps``: one row per twin cell: top_gap (best − second-best logit, any memory cell),
      object_gap (best object − best non-object memory logit; > 0: the object's memory wins),
      distance (cells from the twin cell to q̂ of its best object memory cell);
    * ``qhat``: sequence, frame, and the fractions of object memory cells whose q̂ lies on the
      object, on the twin, elsewhere.
    """
    model = model.to(device).eval()
    x, obj, tw = _inputs(seq, twins, frames, infer_height)
    x = x.to(device)
    mem_frame, _ = pad_divide_by(x[:1])
    mem_mask, _ = pad_divide_by(obj[:1].float().to(device))
    mk, _ = model.encode_memory(mem_frame, mem_mask, torch.zeros_like(mem_mask))
    mem_obj = (cell_coverage(obj[:1]) > 0.5).flatten()                       # (P,)
    weights, gaps, qhat = [], [], []
    for k, t in enumerate(frames, start=1):
        qf, _ = pad_divide_by(x[k:k + 1])
        qk = model.encode_query(qf)[0][0]                                       # (Ck,h,w)
        wq = qk.shape[-1]
        obj_q = (cell_coverage(obj[k:k + 1]) > 0.5).flatten()
        twin_q = (cell_coverage(tw[k:k + 1]) > 0.5).flatten() & ~obj_q
        classes = {"object": obj_q, "twin": twin_q, "background": ~obj_q & ~twin_q}
        c = read_logits(mk[0][:, None], qk).cpu()                              # (P,Q) STM logits
        for s in sigmas:
            w = torch.softmax(c if s is None else read_logits(mk[0][:, None], qk, s).cpu(), dim=0)
            on_obj = w[mem_obj].sum(dim=0)                                      # (Q,)
            for name, sel in classes.items():
                weights.append({"sequence": seq.name, "frame": t, "cells": name,
                                "n_cells": int(sel.sum()), "read": sigma_label(s),
                                "sigma": np.nan if s is None else float(s),
                                "weight_on_object": float(on_obj[sel].mean()) if sel.any()
                                else np.nan})
        top2 = c.topk(2, dim=0).values
        qhat_p = c.argmax(dim=1)                                                # (P,) best q of p
        if mem_obj.any():
            land = qhat_p[mem_obj]
            qhat.append({"sequence": seq.name, "frame": t,
                         "on_object": float(obj_q[land].float().mean()),
                         "on_twin": float(twin_q[land].float().mean()),
                         "elsewhere": float((~obj_q[land] & ~twin_q[land]).float().mean())})
        if mem_obj.any() and (~mem_obj).any():
            for q in torch.nonzero(twin_q).flatten().tolist():
                col = c[:, q]
                p_star = int(torch.nonzero(mem_obj).flatten()[col[mem_obj].argmax()])
                qy, qx = divmod(q, wq)
                hy, hx = divmod(int(qhat_p[p_star]), wq)
                gaps.append({"sequence": seq.name, "frame": t,
                             "top_gap": float(top2[0, q] - top2[1, q]),
                             "object_gap": float(col[mem_obj].max() - col[~mem_obj].max()),
                             "distance": float(np.hypot(qy - hy, qx - hx))})
    return {"weights": pd.DataFrame(weights, columns=WEIGHT_COLUMNS),
            "gaps": pd.DataFrame(gaps, columns=GAP_COLUMNS),
            "qhat": pd.DataFrame(qhat, columns=QHAT_COLUMNS)}


def probe_frames(n_frames: int, every: int = 10) -> list[int]:
    """Query frames of :func:`read_probe` in a video of ``n_frames``: every ``every``-th frame from
    ``every`` on, excluding the last (DAVIS protocol); a video too short for that gets its middle
    frame (none for fewer than 3 frames)."""
    frames = list(range(every, n_frames - 1, every))
    return frames or ([n_frames // 2] if n_frames >= 3 else [])


def kernel_can_flip(gaps: pd.DataFrame, sigmas: Sequence[float]) -> pd.DataFrame:
    """Per σ: the share of twin cells whose best object memory cell wins by less than the kernel's
    log-penalty at its distance (``d²/2σ² > object_gap > 0``) — where the kernel can move the read
    off the object — and the median penalty and gap."""
    rows = []
    wins = gaps[gaps["object_gap"] > 0]
    for s in sigmas:
        penalty = wins["distance"] ** 2 / (2 * s * s)
        rows.append({"sigma": s, "twin_cells": len(gaps), "object_wins": len(wins),
                     "median_object_gap": float(wins["object_gap"].median()) if len(wins) else np.nan,
                     "median_penalty": float(penalty.median()) if len(wins) else np.nan,
                     "share_kernel_can_flip": float((penalty > wins["object_gap"]).mean())
                     if len(wins) else np.nan})
    return pd.DataFrame(rows)


@torch.no_grad()
def read_weight_example(model: nn.Module, seq: VideoSequence, twins: np.ndarray, *, frame: int,
                        sigmas: Sequence[float | None], infer_height: int | None,
                        device: str = "cpu") -> dict[str, Any]:
    """Fig. 1 data on a twin frame: read weights over memory frame 0 of two query cells — the twin
    cell that puts the most STM weight on the object's memory, and a background cell far from
    both objects — for each read. Returns frames (memory, query) in [0,1], the query cells (y, x)
    and ``maps[cell][read] = (h, w)`` weights."""
    model = model.to(device).eval()
    x, obj, tw = _inputs(seq, twins, [frame], infer_height)
    mem_frame, _ = pad_divide_by(x[:1].to(device))
    mem_mask, _ = pad_divide_by(obj[:1].float().to(device))
    mk, _ = model.encode_memory(mem_frame, mem_mask, torch.zeros_like(mem_mask))
    qf, _ = pad_divide_by(x[1:2].to(device))
    qk = model.encode_query(qf)[0][0]
    h, w = mk.shape[-2:]
    mem_obj = (cell_coverage(obj[:1]) > 0.5).flatten()
    obj_q = (cell_coverage(obj[1:2]) > 0.5).flatten()
    twin_q = (cell_coverage(tw[1:2]) > 0.5).flatten() & ~obj_q
    if not twin_q.any():
        raise ValueError(f"{seq.name} frame {frame}: no visible twin cell")
    stm = torch.softmax(read_logits(mk[0][:, None], qk).cpu(), dim=0)
    on_obj = stm[mem_obj].sum(dim=0)
    twin_cell = int(torch.nonzero(twin_q).flatten()[on_obj[twin_q].argmax()])
    # Background: the cell farthest from any object or twin cell.
    near = (cell_coverage((obj[1:2] | tw[1:2]).float()) > 0).flatten()
    ys, xs = np.divmod(np.arange(h * w), w)
    fy, fx = np.divmod(np.nonzero(near.numpy())[0], w)
    dist = np.min(np.hypot(ys[:, None] - fy[None], xs[:, None] - fx[None]), axis=1)
    bg_cell = int(np.argmax(np.where(near.numpy(), -1, dist)))
    maps: dict[str, dict[str, np.ndarray]] = {}
    for name, q in (("query on the twin", twin_cell), ("query on the background", bg_cell)):
        maps[name] = {}
        for s in sigmas:
            wts = torch.softmax(read_logits(mk[0][:, None], qk, s).cpu(), dim=0)[:, q]
            maps[name][sigma_label(s)] = wts.view(h, w).numpy()
    return {"memory_frame": x[0], "query_frame": x[1], "maps": maps,
            "cells": {"query on the twin": divmod(twin_cell, w),
                      "query on the background": divmod(bg_cell, w)},
            "object_mask": obj[0].numpy(), "twin_mask": tw[1].numpy()}
