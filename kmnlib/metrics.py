"""DAVIS region (J) and boundary (F) measures and per-sequence statistics.

Semantics follow the official DAVIS toolkit (davis2017-evaluation, ``davis2017/metrics.py`` and
``davis2017/utils.py``) so that numbers agree with it to floating-point precision:

* J is the IoU of two boolean masks, void pixels excluded, and 1 when the union is empty.
* F is the F-measure of 1-pixel boundary maps (Martin's ``seg2bmap``), a boundary pixel counting as
  matched when the other map has a boundary pixel inside a disk of radius
  ``ceil(bound_th * image diagonal)`` (``bound_th < 1``) or ``bound_th`` pixels (``bound_th >= 1``).
* Leakage (not a DAVIS measure; the distractor study's): the fraction of a distractor's pixels a
  prediction labels as the object, per frame, NaN where the distractor is not visible.
* Statistics: mean, recall (fraction of frames > 0.5) and decay (first-bin mean − last-bin mean with
  the toolkit's four overlapping bins), NaN frames ignored by the means as the toolkit does.

Pure functions over numpy arrays; no file I/O here.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import cv2
import numpy as np
from skimage.morphology import disk

__all__ = ["jaccard", "boundary_f", "seg2bmap", "sequence_stats", "leakage", "DEFAULT_BOUND_TH"]

DEFAULT_BOUND_TH = 0.008  # the toolkit's default: 0.8 % of the image diagonal


def _check_masks(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None,
                 name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim not in (2, 3):
        raise ValueError(f"{name}: masks must be (H,W) or (T,H,W), got gt shape {gt.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: gt shape {gt.shape} differs from pred shape {pred.shape}")
    if void is not None:
        void = np.asarray(void)
        if void.shape != gt.shape:
            if gt.ndim == 3 and void.shape == gt.shape[1:]:
                # One void map for a whole stack: repeat it (read-only view, no copy).
                void = np.broadcast_to(void, gt.shape)
            else:
                raise ValueError(f"{name}: void shape {void.shape} does not match masks {gt.shape}")
        void = void.astype(bool, copy=False)
    return gt.astype(bool, copy=False), pred.astype(bool, copy=False), void


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float | np.ndarray:
    """Region similarity J (IoU) of boolean masks; (H,W) → float, (T,H,W) → float64 array (T,).

    Pixels where ``void`` is true count in neither intersection nor union; an empty union gives 1.
    """
    gt, pred, void = _check_masks(gt, pred, void, "jaccard")
    inter_px, union_px = pred & gt, pred | gt
    if void is not None:
        inter_px &= ~void
        union_px &= ~void
    # count_nonzero: the same integers as the toolkit's np.sum, several times faster on bools.
    inters = np.count_nonzero(inter_px, axis=(-2, -1))
    union = np.count_nonzero(union_px, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is replaced just below
        j = inters / union
    if j.ndim == 0:
        return 1.0 if np.isclose(union, 0) else float(j)
    j[np.isclose(union, 0)] = 1
    return j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (Martin's seg2bmap, as the DAVIS toolkit has it).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; the
    last row compares only eastwards, the last column only southwards, the bottom-right pixel never
    is a boundary. Boundaries therefore sit half a pixel towards the origin of the true contour.
    The toolkit's optional resampling to another (width, height) is never used by its F-measure
    (it always passes the mask's own size), so it is not offered here.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap: expected a 2-D mask, got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _bound_radius(bound_th: float, shape: tuple[int, int]) -> float:
    # Same expression as the toolkit: a float radius (ceil of a float64), handed as is to disk().
    return bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(shape))


@functools.lru_cache(maxsize=16)
def _disk(radius: float) -> np.ndarray:
    return disk(radius).astype(np.uint8)


def _f_measure_frame(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None,
                     bound_th: float) -> float:
    if void is None:
        fg_boundary = seg2bmap(pred)
        gt_boundary = seg2bmap(gt)
    else:
        fg_boundary = seg2bmap(pred & ~void)
        gt_boundary = seg2bmap(gt & ~void)
    n_fg = np.count_nonzero(fg_boundary)
    n_gt = np.count_nonzero(gt_boundary)
    # Empty-boundary conventions of the toolkit.
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        kernel = _disk(float(_bound_radius(bound_th, gt.shape)))
        # Dilate only a window around the boundaries, one kernel size wider on every side: the
        # dilated values at boundary pixels (all we count) are exactly those of a full-frame
        # dilation, as every pixel outside the window is zero or outside the image.
        ys = np.flatnonzero(np.any(fg_boundary | gt_boundary, axis=1))
        xs = np.flatnonzero(np.any(fg_boundary | gt_boundary, axis=0))
        k = kernel.shape[0]
        win = (slice(max(ys[0] - k, 0), ys[-1] + k + 1), slice(max(xs[0] - k, 0), xs[-1] + k + 1))
        fg_b, gt_b = fg_boundary[win], gt_boundary[win]
        fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel)
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel)
        precision = np.count_nonzero(fg_b & (gt_dil > 0)) / float(n_fg)
        recall = np.count_nonzero(gt_b & (fg_dil > 0)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = DEFAULT_BOUND_TH) -> float | np.ndarray:
    """Boundary F-measure of boolean masks; (H,W) → float, (T,H,W) → float64 array (T,).

    ``bound_th`` < 1 is a fraction of the image diagonal (radius = ceil(bound_th · diag)),
    ``bound_th`` >= 1 a radius in pixels. Void pixels are removed from both masks before the
    boundaries are traced. No boundary on either side → 1; only one side empty → 0.
    """
    if bound_th <= 0:
        raise ValueError(f"boundary_f: bound_th must be positive, got {bound_th}")
    gt, pred, void = _check_masks(gt, pred, void, "boundary_f")
    if gt.ndim == 2:
        return _f_measure_frame(gt, pred, void, bound_th)
    out = np.zeros(gt.shape[0])
    for t in range(gt.shape[0]):
        out[t] = _f_measure_frame(gt[t], pred[t], None if void is None else void[t], bound_th)
    return out


def leakage(pred: np.ndarray, distractor: np.ndarray) -> np.ndarray:
    """Per frame, the fraction of the distractor's pixels that ``pred`` marks as the object.

    ``pred`` and ``distractor`` bool (T,H,W) (or (H,W)); frames where the distractor has no pixel
    give NaN (nothing could leak there), so averages skip them.
    """
    pred, distractor = np.asarray(pred, dtype=bool), np.asarray(distractor, dtype=bool)
    if pred.shape != distractor.shape:
        raise ValueError(f"leakage: prediction {pred.shape} and distractor {distractor.shape} "
                         f"differ in shape")
    if pred.ndim == 2:
        return leakage(pred[None], distractor[None])
    area = distractor.reshape(len(distractor), -1).sum(axis=1).astype(np.float64)
    hit = (pred & distractor).reshape(len(pred), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, hit / area, np.nan)


def sequence_stats(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F values, as the DAVIS toolkit.

    mean = nanmean; recall = fraction of frames > 0.5 (NaN frames count as misses); decay = nanmean
    of the first bin − nanmean of the last of four bins. The bins follow the toolkit exactly:
    edges ``round(linspace(1, n, 5)) - 1`` and bin i = values[edge_i : edge_{i+1} + 1], so
    neighbouring bins share their edge frame. (The toolkit stores the edges as uint8, which wraps for
    sequences longer than 256 frames; plain integers are used here, identical up to that length.)
    """
    v = np.asarray(per_frame, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"sequence_stats: expected a 1-D per-frame array, got shape {v.shape}")
    if v.size == 0:
        raise ValueError("sequence_stats: no frames to summarise")
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        mean = np.nanmean(v)
        recall = np.nanmean(v > 0.5)
        edges = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
        bins = [v[edges[i]:edges[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


@contextlib.contextmanager
def _quiet_nanmean() -> Iterator[None]:
    # nanmean of an all-NaN slice warns and returns NaN; the toolkit silences that, so do we.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield
