"""Where the twin leak is made: the decoder-input swap and the read the model really uses.

Both are :class:`kmnlib.propagation.Hooks` on a real inference run (the study's precision, read
backend and memory bank, frame ``t−1`` included), so they measure the computation the model runs.

* :class:`DecoderSwap` — on the run of a *clean* video (its memory: the clean frames with their own
  predictions), at every step the twin video's frame ``t`` is encoded as a query too and read from
  the same memory. The decoder then gets the four combinations readout ∈ {twin, clean} × query
  features (value, 1/8 and 1/4 skips) ∈ {twin, clean}: the twin frame's inputs with the clean
  frame's swapped in over the twin region dilated by :data:`REGION_DILATION` feature cells (and,
  as a check, over the whole frame). If clean readout + twin query features leaks as much as
  twin/twin, the decoder makes the leak from what it sees; if twin readout + clean query features
  leaks, the read makes it.
* :class:`ReadAtTwin` — per step, the weight that query cells on the twin put on object-labelled
  memory cells in the read the run uses, and where ``q̂`` of those memory cells lands; and the
  read's scale: the logits' standard deviation, the median best − second-best gap per query cell,
  and at twin cells the median of the object memory's margin over the kernel's penalty
  (:func:`margin_over_penalty`), which says whether the kernel has the leverage to act there.

Leakage here is measured at the inference size: the share of the twin's visible pixels labelled
as the object (:func:`kmnlib.metrics.leakage`'s definition), NaN where no twin is visible.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kmnlib.config import InferenceConfig
from kmnlib.data.video import VideoSequence
from kmnlib.inference import labels_from_probs, segment_video
from kmnlib.memory import read_logits
from kmnlib.model.ops import cell_coverage, pad_divide_by, resize_frames, resize_labels, unpad
from kmnlib.propagation import DecoderInputs, Hooks, Step

#: Feature cells by which the twin's cells are dilated for the swap.
REGION_DILATION = 2
SOURCES = ("twin", "clean")


def twin_leak(probs: torch.Tensor, twin: torch.Tensor) -> float:
    """Share of the ``twin`` pixels (bool (H,W)) that ``probs`` (N+1,H,W) labels object 1."""
    if not bool(twin.any()):
        return float("nan")
    return float((labels_from_probs(probs)[twin] == 1).float().mean())


def dilated_cells(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """(1,h,w) bool: the feature cells ``mask`` (H,W) touches at all, dilated by ``cells``."""
    touched = cell_coverage(mask[None].float()) > 0
    if cells:
        touched = F.max_pool2d(touched[:, None].float(), 2 * cells + 1, stride=1,
                               padding=cells)[:, 0] > 0
    return touched


def mix(base: DecoderInputs, other: DecoderInputs, *, readout: bool, query: bool,
        region: torch.Tensor | None) -> DecoderInputs:
    """``base`` with ``other``'s readout (``readout``) and/or query features (``query``: value,
    f8, f4) swapped in over ``region`` ((1,h,w) bool on the 1/16 grid, upsampled to each input's
    grid) or everywhere (``region=None``)."""
    def swap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if region is None:
            return b
        where = F.interpolate(region[:, None].float(), size=a.shape[-2:], mode="nearest") > 0
        return torch.where(where, b, a)
    take = (readout, query, query, query)
    return DecoderInputs(*(swap(a, b) if t else a for a, b, t in zip(base, other, take)))


class DecoderSwap(Hooks):
    """On a clean video's run: the four decoder-input combinations of the twin frame (module
    docstring). ``twin_frames`` (T,3,H,W) float in [0,1] and ``twin_masks`` (T,H,W) bool at the
    inference size; ``rows`` gets one entry per step × swap scope × combination: ``leakage`` and
    ``p_object``, the mean probability of the object over the twin's pixels."""

    def __init__(self, model: torch.nn.Module, twin_frames: torch.Tensor, twin_masks: torch.Tensor,
                 dilation: int = REGION_DILATION) -> None:
        self.model, self.frames, self.masks, self.dilation = model, twin_frames, twin_masks, dilation
        self.rows: list[dict[str, object]] = []

    def before_decode(self, step: Step, inputs: DecoderInputs) -> DecoderInputs:
        frame_p, pad = pad_divide_by(self.frames[step.t].to(step.frame.device))
        n = step.query_key.shape[0]
        qk, qv, f8, f4 = (x.expand(n, -1, -1, -1) for x in self.model.encode_query(frame_p[None]))
        twin = DecoderInputs(step.read(qk), qv, f8, f4)
        region = dilated_cells(self.masks[step.t], self.dilation).to(step.frame.device)
        for scope, where in (("twin region", region), ("frame", None)):
            for readout_from in SOURCES:
                for query_from in SOURCES:
                    mixed = mix(twin, inputs, readout=readout_from == "clean",
                                query=query_from == "clean", region=where)
                    probs = unpad(step.decode(mixed), pad).float().cpu()
                    twin_px = self.masks[step.t]
                    self.rows.append({"frame": step.t, "swap_over": scope,
                                      "readout_from": readout_from, "query_from": query_from,
                                      "leakage": twin_leak(probs, twin_px),
                                      "p_object": float(probs[1][twin_px].mean())
                                      if twin_px.any() else np.nan})
        return inputs


class ReadAtTwin(Hooks):
    """Per step of a twin video's run: the mean weight query cells on the twin (more than half
    covered, not on the object) put on object-labelled memory cells (memorised mask > 0.5) in the
    run's own read (``sigma`` as the run), and where ``q̂`` of those memory cells lands; the read's
    :func:`read_scale` and, with the kernel, the median :func:`margin_over_penalty` of twin cells.
    ``object_masks``/``twin_masks`` (T,H,W) bool at the inference size; object 1's memory."""

    def __init__(self, sigma: float | None, object_masks: torch.Tensor,
                 twin_masks: torch.Tensor) -> None:
        self.sigma, self.objects, self.twins = sigma, object_masks, twin_masks
        self.object_cells: dict[int, torch.Tensor] = {}
        self.rows: list[dict[str, object]] = []

    def memorised(self, frame: int, mask: torch.Tensor) -> None:
        self.object_cells[frame] = (cell_coverage(mask[:1]) > 0.5)[0].flatten().cpu()

    def after_read(self, step: Step, readout: torch.Tensor) -> torch.Tensor:
        mem_obj = torch.cat([self.object_cells[f] for f in step.memory_frames])      # (P,)
        obj_q = (cell_coverage(self.objects[step.t][None].float()) > 0.5)[0].flatten()
        twin_q = (cell_coverage(self.twins[step.t][None].float()) > 0.5)[0].flatten() & ~obj_q
        row: dict[str, object] = {"frame": step.t, "cells": int(twin_q.sum()),
                                  "object_memory_cells": int(mem_obj.sum()),
                                  "weight_on_object": np.nan, "qhat_on_object": np.nan,
                                  "qhat_on_twin": np.nan, "qhat_elsewhere": np.nan,
                                  "margin_over_penalty": np.nan}
        if twin_q.any() and mem_obj.any():
            mk, qk = step.mem_key[0], step.query_key[0]
            weights = torch.softmax(read_logits(mk, qk, self.sigma).cpu(), dim=0)       # (P,Q)
            row["weight_on_object"] = float(weights[mem_obj][:, twin_q].sum(dim=0).mean())
            c = read_logits(mk, qk).cpu()                                              # (P,Q)
            land = c.argmax(dim=1)[mem_obj]                                            # q̂(p)
            row.update(qhat_on_object=float(obj_q[land].float().mean()),
                       qhat_on_twin=float(twin_q[land].float().mean()),
                       qhat_elsewhere=float((~obj_q[land] & ~twin_q[land]).float().mean()))
            if self.sigma is not None and (~mem_obj).any():
                ratio = margin_over_penalty(c, mem_obj, twin_q, step.query_key.shape[-1],
                                            self.sigma)
                row["margin_over_penalty"] = float(ratio.median()) if ratio.numel() else np.nan
        row.update(read_scale(step.mem_key[0], step.query_key[0]))
        self.rows.append(row)
        return readout


def read_scale(mem_key: torch.Tensor, query_key: torch.Tensor) -> dict[str, float]:
    """The scale of one read's logits ``c/√d`` before any kernel: ``logit_std`` over all (p, q)
    and ``top_gap``, the median over query cells of the best − second-best memory logit
    (:class:`kmnlib.memory.LogitStats`'s measures, for one read)."""
    c = read_logits(mem_key, query_key).double()
    top = c.topk(2, dim=0).values if c.shape[0] > 1 else None
    return {"logit_std": float(c.std(unbiased=False)),
            "top_gap": float((top[0] - top[1]).median()) if top is not None else np.nan}


def margin_over_penalty(c: torch.Tensor, memory_object: torch.Tensor, query_cells: torch.Tensor,
                        query_width: int, sigma: float) -> torch.Tensor:
    """For each query cell of ``query_cells`` (Q,) bool whose best object memory cell ``p*`` beats
    every other memory cell (``memory_object`` (P,) bool; ``c`` (P,Q) logits without kernel): that
    margin divided by the kernel's log-penalty ``d²/2σ²`` for ``p*`` at the cell, ``d`` the
    distance (query cells) to ``q̂(p*) = argmax_q c(p*, q)``. Below 1 the kernel can take the
    cell's best match off the object; ``inf`` where ``q̂(p*)`` is the cell itself (no penalty)."""
    cols = c[:, query_cells]
    obj_idx = torch.nonzero(memory_object).flatten()
    best_obj, where = cols[memory_object].max(dim=0)
    margin = best_obj - cols[~memory_object].max(dim=0).values
    qhat = c[obj_idx[where]].argmax(dim=1)                       # q̂ of each cell's p*
    q = torch.nonzero(query_cells).flatten()
    d2 = ((q // query_width - qhat // query_width) ** 2
          + (q % query_width - qhat % query_width) ** 2).double()
    penalty = d2 / (2.0 * sigma * sigma)
    wins = margin > 0
    return margin[wins].double() / penalty[wins]


def swap_summary(per_frame: pd.DataFrame) -> pd.DataFrame:
    """Leakage per combination at ``first_frame`` (frame 1: memory = frame 0 only) and over the
    ``video`` (mean over frames with a visible twin), from :class:`DecoderSwap` rows."""
    keys = ["swap_over", "readout_from", "query_from"]
    first = per_frame[per_frame["frame"] == 1].groupby(keys, sort=False)["leakage"].mean()
    video = per_frame.dropna(subset=["leakage"]).groupby(keys, sort=False)["leakage"].mean()
    return pd.concat([first.rename("first_frame"), video.rename("video")], axis=1) \
        .reset_index().melt(id_vars=keys, var_name="scope", value_name="leakage")


def twin_video_inputs(clean_seq: VideoSequence, twin_seq: VideoSequence, twins: np.ndarray,
                      infer_height: int | None) -> dict[str, torch.Tensor]:
    """The clean video's first ``len(twin_seq)`` frames and the twin video's frames (uint8
    (T,3,h,w)), the object's label maps (long (T,h,w), from the twin set's ground truth = the
    clean video's) and the twin's visible pixels (bool (T,h,w)), at the inference size."""
    n = len(twin_seq)
    if len(clean_seq) < n or tuple(clean_seq.size) != tuple(twin_seq.size) or len(twins) != n:
        raise ValueError(f"{twin_seq.name}: the twin video ({n} frames, {tuple(twin_seq.size)}, "
                         f"{len(twins)} twin maps) does not match its clean original "
                         f"{clean_seq.name} ({len(clean_seq)} frames, {tuple(clean_seq.size)})")
    out = {"clean": torch.from_numpy(clean_seq.load_frames(range(n))).permute(0, 3, 1, 2),
           "twin": torch.from_numpy(twin_seq.load_frames(range(n))).permute(0, 3, 1, 2),
           "labels": torch.from_numpy((twin_seq.load_masks(range(n)) == 1).astype(np.int64)),
           "twins": torch.from_numpy(np.asarray(twins, dtype=np.uint8))}
    if infer_height:
        out["clean"], out["twin"] = (resize_frames(out[k], infer_height) for k in ("clean", "twin"))
        size = tuple(out["clean"].shape[-2:])
        out["labels"], out["twins"] = (resize_labels(out[k], size) for k in ("labels", "twins"))
    out["twins"] = out["twins"].bool()
    return out


def _run(model: torch.nn.Module, frames: torch.Tensor, first: torch.Tensor, hook: Hooks, *,
         sigma: float | None, inference: InferenceConfig, device: str) -> torch.Tensor:
    """Labels of ``segment_video`` on ``frames`` with the study's inference settings and ``hook``."""
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                        enabled=inference.precision == "bf16"):
        return segment_video(model.to(device), frames, first, sigma=sigma,
                             mem_every=inference.mem_every, keep_probs=False,
                             read_backend=inference.read_backend,
                             read_budget_bytes=inference.read_budget_bytes, hooks=[hook])[1]


def decoder_swap(model: torch.nn.Module, clean_seq: VideoSequence, twin_seq: VideoSequence,
                 twins: np.ndarray, *, sigma: float | None, inference: InferenceConfig,
                 device: str = "cpu") -> pd.DataFrame:
    """:class:`DecoderSwap` rows of one twin video (clean run's memory), with ``sequence``."""
    x = twin_video_inputs(clean_seq, twin_seq, twins, inference.infer_height)
    hook = DecoderSwap(model, x["twin"].float().div_(255.0), x["twins"])
    _run(model, x["clean"], x["labels"][0], hook, sigma=sigma, inference=inference, device=device)
    return pd.DataFrame(hook.rows).assign(sequence=twin_seq.name)


def read_at_twin(model: torch.nn.Module, clean_seq: VideoSequence, twin_seq: VideoSequence,
                 twins: np.ndarray, *, sigma: float | None, inference: InferenceConfig,
                 device: str = "cpu") -> pd.DataFrame:
    """:class:`ReadAtTwin` rows of one twin video's own run, with ``sequence`` and the run's
    per-frame twin ``leakage`` (inference size)."""
    x = twin_video_inputs(clean_seq, twin_seq, twins, inference.infer_height)
    hook = ReadAtTwin(sigma, x["labels"] == 1, x["twins"])
    labels = _run(model, x["twin"], x["labels"][0], hook, sigma=sigma, inference=inference,
                  device=device)
    leak = [float((labels[t][x["twins"][t]] == 1).float().mean()) if x["twins"][t].any()
            else np.nan for t in range(len(labels))]
    return pd.DataFrame(hook.rows).assign(sequence=twin_seq.name,
                                          leakage=lambda d: [leak[t] for t in d["frame"]])
