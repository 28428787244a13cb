"""The study's figures (PNG, written atomically) and the image helpers they share.

Fig. 1 (read weights), Fig. 4 (synthetic clips), Fig. 5/6 (overlays), Fig. 7 (loss maps) of the
paper in our data, plus loss curves, per-sequence bars and the σ curve. Headless (Agg backend):
the study runs under papermill and in CI.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from kmnlib.analysis.loss_maps import label_boundary  # noqa: E402
from kmnlib.config import FEATURE_STRIDE  # noqa: E402
from kmnlib.model.ops import pad_amounts  # noqa: E402
from kmnlib.data.masks import davis_palette, read_label_map  # noqa: E402
from kmnlib.files import save_figure  # noqa: E402
from kmnlib.training.log import read_log  # noqa: E402


def to_uint8_image(frame: Any) -> np.ndarray:
    """(H,W,3) uint8 from a uint8 (H,W,3) array or a float [0,1] (3,H,W)/(H,W,3) array/tensor."""
    arr = frame.detach().cpu().numpy() if hasattr(frame, "detach") else np.asarray(frame)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


def overlay_labels(image: Any, labels: Any, *, alpha: float = 0.5) -> np.ndarray:
    """Blend DAVIS-palette colours of a label map (0 = background left as is) over an image."""
    img = to_uint8_image(image).astype(np.float32)
    lab = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"label map {lab.shape} does not match image {img.shape[:2]}")
    pal = np.asarray(davis_palette(), dtype=np.float32).reshape(256, 3)
    colour = pal[np.clip(lab, 0, 255)]
    fg = ((lab > 0) & (lab != 255))[..., None]
    out = np.where(fg, (1 - alpha) * img + alpha * colour, img)
    return out.astype(np.uint8)


def draw_hidden_grid(ax: plt.Axes, hidden: Any, size: tuple[int, int], *,
                     colour: str = "yellow") -> None:
    """Outline the hidden Hide-and-Seek cells of a (g,g) boolean grid over an image of ``size``."""
    hid = np.asarray(hidden.detach().cpu() if hasattr(hidden, "detach") else hidden).astype(bool)
    if hid.ndim != 2:
        raise ValueError(f"hidden grid must be 2-D (g,g), got shape {hid.shape}")
    h, w = size
    ch, cw = h / hid.shape[0], w / hid.shape[1]
    for i, j in zip(*np.nonzero(hid)):
        ax.add_patch(Rectangle((j * cw - 0.5, i * ch - 0.5), cw, ch, fill=False, lw=0.8,
                               edgecolor=colour))


def _finish(fig: plt.Figure, axes: np.ndarray, out_png: str | os.PathLike, title: str) -> Path:
    """Axes off, optional title, tight layout, written atomically (image-grid figures)."""
    for ax in np.asarray(axes).ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_loss_curves(logs: Mapping[str, str | os.PathLike], out_png: str | os.PathLike, *,
                     x: str = "step", y: str = "loss", smooth: int = 20,
                     title: str = "training loss") -> Path:
    """Loss curves of several training runs (label → CSV log) on one axis, raw and smoothed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, (label, path) in enumerate(logs.items()):
        df = read_log(path, columns=(x, y))
        colour = f"C{i}"
        ax.plot(df[x], df[y], color=colour, alpha=0.25, lw=0.8)
        win = max(1, min(smooth, len(df) // 5 or 1))
        ax.plot(df[x], df[y].rolling(win, min_periods=1).mean(), color=colour, lw=1.6,
                label=f"{label} (mean of {win})" if win > 1 else label)
    ax.set(xlabel=x, ylabel=y, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


#: Page width of a figure in inches (at :func:`kmnlib.files.save_figure`'s 110 dpi, ~1000 px).
PAGE_WIDTH = 9.0


def _sequence_order(diffs: pd.DataFrame) -> list[str]:
    """Sequences ordered by their mean difference, smallest at the bottom of a horizontal plot."""
    return diffs.groupby("sequence")["diff"].mean().sort_values().index.tolist()


def plot_paired_differences(panels: Mapping[str, pd.DataFrame], out_png: str | os.PathLike, *,
                            xlabel: str, title: str = "") -> Path:
    """Sorted horizontal dot plots of per-sequence paired differences, one panel per comparison.

    Each panel's table has columns ``sequence``, ``seed``, ``diff`` (a − b for the same sequence and
    seed): one small dot per seed, the mean over seeds as a black diamond, a line at zero."""
    if not panels:
        raise ValueError("plot_paired_differences needs at least one comparison")
    n_seq = max(p["sequence"].nunique() for p in panels.values())
    height = min(PAGE_WIDTH * 1.25, max(3.2, 0.24 * n_seq + 1.4))
    fig, axes = plt.subplots(1, len(panels), figsize=(PAGE_WIDTH, height), squeeze=False)
    for ax, (name, diffs) in zip(axes[0], panels.items()):
        if not {"sequence", "seed", "diff"} <= set(diffs.columns):
            raise ValueError(f"panel {name!r} needs columns sequence, seed, diff "
                             f"(has {list(diffs.columns)})")
        order = _sequence_order(diffs)
        ypos = {q: i for i, q in enumerate(order)}
        ys = diffs["sequence"].map(ypos).to_numpy(dtype=float)
        seeds = diffs["seed"].nunique()
        ax.scatter(diffs["diff"], ys, s=14, color="C0", alpha=0.6,
                   label=f"one seed ({seeds} seeds)" if seeds > 1 else "seed " +
                   str(diffs["seed"].iloc[0]))
        if seeds > 1:
            means = diffs.groupby("sequence")["diff"].mean().reindex(order)
            ax.scatter(means, range(len(order)), marker="D", s=22, color="k",
                       label="mean over seeds", zorder=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(order)), order, fontsize=7)
        ax.set_ylim(-0.7, len(order) - 0.3)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_sigma_effects(effects: pd.DataFrame, out_png: str | os.PathLike, *, headline: float,
                       headline_label: str, min_half_range: float = 2.0,
                       title: str = "kernel read − STM read, by kernel width σ") -> Path:
    """The kernel's paired effect against STM's read at each σ, with its interval and the zero
    line (STM's read), one line per model.

    ``effects`` has columns ``model``, ``sigma``, ``mean_diff``, ``low``, ``high`` and
    ``interval`` (what the error bars are). The y-range spans at least ±``min_half_range``
    points, so a difference of a few tenths is not drawn as a large one."""
    need = {"model", "sigma", "mean_diff", "low", "high", "interval"}
    if missing := need - set(effects.columns):
        raise ValueError(f"σ effects table lacks columns {sorted(missing)}")
    sigmas = sorted(set(effects["sigma"].astype(float)))
    pos = {s: i for i, s in enumerate(sigmas)}
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    groups = list(effects.groupby("model", sort=False))
    for k, (model, g) in enumerate(groups):
        g = g.sort_values("sigma")
        xs = np.array([pos[float(v)] for v in g["sigma"]]) + (k - (len(groups) - 1) / 2) * 0.08
        mean = g["mean_diff"].to_numpy(dtype=float)
        err = np.vstack([mean - g["low"].to_numpy(dtype=float),
                         g["high"].to_numpy(dtype=float) - mean])
        ax.errorbar(xs, mean, yerr=err, marker="o", capsize=4, color=f"C{k}", label=str(model))
    ax.axhline(0, color="k", lw=1, label="STM read (σ = ∞)")
    if float(headline) in pos:
        ax.axvline(pos[float(headline)], color="grey", ls="--", lw=1, label=headline_label)
    values = effects[["low", "high", "mean_diff"]].to_numpy(dtype=float)
    half = max(min_half_range, float(np.nanmax(np.abs(values))) * 1.15)
    ax.set_ylim(-half, half)
    ax.set_xlim(-0.5, len(sigmas) - 0.5)
    ax.set_xticks(range(len(sigmas)), [f"{s:g}" for s in sigmas])
    kinds = "; ".join(sorted(set(effects["interval"].astype(str))))
    ax.set(xlabel="σ (feature cells)", ylabel="Δ J&F vs STM read (points)", title=title)
    ax.text(0.01, 0.02, f"bars: 95 % interval ({kinds})", transform=ax.transAxes, fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, out_png)


def plot_overlays(rows: Sequence[tuple[str, Sequence[Any], Sequence[Any]]],
                  out_png: str | os.PathLike, *, alpha: float = 0.5,
                  col_titles: Sequence[str] | None = None) -> Path:
    """Fig. 5/6-style grid: one row per (title, frames, label maps), masks blended in colour."""
    if not rows:
        raise ValueError("plot_overlays needs at least one row")
    ncol = max(len(frames) for _, frames, _ in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.6 * ncol, 1.9 * len(rows) + 0.3),
                             squeeze=False)
    for r, (title, frames, labels) in enumerate(rows):
        if len(frames) != len(labels):
            raise ValueError(f"row {title!r}: {len(frames)} frames but {len(labels)} masks")
        for c in range(ncol):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(frames):
                ax.imshow(overlay_labels(frames[c], labels[c], alpha=alpha))
                if col_titles is not None and r == 0 and c < len(col_titles):
                    ax.set_title(col_titles[c], fontsize=8)
        axes[r, 0].text(-0.04, 0.5, title, transform=axes[r, 0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_synthetic_clip(frames: Any, masks: Any, hidden: Any, out_png: str | os.PathLike, *,
                        title: str = "") -> Path:
    """Fig. 4 style: the frames of one synthesised clip (hidden cells outlined) over their masks."""
    frames = [to_uint8_image(f) for f in frames]
    masks = [np.asarray(m.detach().cpu() if hasattr(m, "detach") else m) for m in masks]
    hidden = [np.asarray(h.detach().cpu() if hasattr(h, "detach") else h) for h in hidden]
    n = len(frames)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.0), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(frames[i])
        draw_hidden_grid(axes[0, i], hidden[i], frames[i].shape[:2])
        axes[0, i].set_title(f"frame {i + 1} ({int(hidden[i].sum())} cells hidden)", fontsize=8)
        axes[1, i].imshow(overlay_labels(np.zeros_like(frames[i]) + 40, masks[i], alpha=0.9))
        axes[1, i].set_title(f"mask {i + 1}", fontsize=8)
    return _finish(fig, axes, out_png, title)


LOSS_LABEL = "per-pixel cross-entropy (nats)"


def _array(x: Any, dtype: Any = None) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=dtype)


def loss_limit(*losses: Any, percentile: float = 99.5) -> float:
    """One upper colour limit for several loss maps (e.g. the plain and hidden clip of one image),
    so equal colours mean equal loss across them: a high percentile of all their pixels."""
    values = np.concatenate([_array(x, np.float32).ravel() for x in losses])
    return float(np.percentile(values, percentile)) or 1.0


def plot_loss_maps(frames: Any, masks: Any, hidden: Any, loss: Any,
                   out_png: str | os.PathLike, *, title: str = "", vmax: float | None = None
                   ) -> Path:
    """Fig. 7 style: per-pixel loss of the query frames with ground-truth boundaries (cyan) and
    hidden-cell outlines (yellow), to see whether the loss follows the artificial cell edges.

    ``vmax``: the colour limit (:func:`loss_limit` over every figure that is to be compared);
    by default this figure's own."""
    frames = [to_uint8_image(f) for f in frames]
    n = len(frames)
    masks = [_array(m) for m in masks]
    losses = [_array(x, np.float32) for x in loss]
    hidden = [_array(h) for h in hidden]
    if not (len(masks) == len(hidden) == n) or len(losses) > n:
        raise ValueError(f"loss maps: {n} frames, {len(masks)} masks, {len(hidden)} hidden grids, "
                         f"{len(losses)} loss maps")
    offset = n - len(losses)  # loss maps exist for the query frames (the last ones) only
    vmax = loss_limit(*losses) if vmax is None else float(vmax)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 0.8, 5.2), squeeze=False,
                             layout="constrained")
    im = None
    for i in range(n):
        axes[0, i].imshow(overlay_labels(frames[i], masks[i], alpha=0.35))
        draw_hidden_grid(axes[0, i], hidden[i], frames[i].shape[:2])
        axes[0, i].set_title(f"frame {i + 1}" + (" (memory)" if i < offset else ""), fontsize=8)
        if i >= offset:
            lm = losses[i - offset]
            im = axes[1, i].imshow(lm, cmap="magma", vmin=0.0, vmax=vmax)
            axes[1, i].contour(label_boundary(masks[i]), levels=[0.5], colors="cyan",
                               linewidths=0.6)
            draw_hidden_grid(axes[1, i], hidden[i], lm.shape)
            axes[1, i].set_title(f"loss, mean {lm.mean():.3f}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes[1, :].tolist(), label=LOSS_LABEL, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_png)


#: Outline colours of what a read-weight or stress-set figure marks, by what it is.
OUTLINE_COLOURS = {"object": "lime", "twin": "orange", "pasted object": "magenta"}
WEIGHT_LABEL = "read weight of each memory cell (all cells sum to 1)"


def _resized_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at ``size`` (H, W), nearest-neighbour resized when it differs."""
    arr = _array(mask).astype(np.uint8)
    if arr.shape != size:
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]),
                                                     Image.Resampling.NEAREST))
    return arr > 0


def _outline(ax: plt.Axes, masks: Mapping[str, Any], size: tuple[int, int]) -> None:
    for name, mask in masks.items():
        m = _resized_mask(mask, size)
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], linewidths=1.0,
                       colors=OUTLINE_COLOURS.get(name, "yellow"))


def _outline_legend(fig: plt.Figure, names: Sequence[str]) -> None:
    handles = [Line2D([], [], color=OUTLINE_COLOURS.get(n, "yellow"), lw=2, label=f"{n} outline")
               for n in names]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)


def plot_read_weights(memory_frame: Any, query_frame: Any,
                      rows: Sequence[tuple[str, tuple[int, int], Mapping[str, Any]]],
                      out_png: str | os.PathLike, *,
                      memory_outlines: Mapping[str, Any] | None = None,
                      query_outlines: Mapping[str, Any] | None = None) -> Path:
    """Fig. 1 style: where query cells read from in the memory frame, one row per query cell.

    ``rows``: (title, query cell (y, x) on the padded feature grid, {read label: (h,w) weights over
    the memory frame's padded grid}). ``memory_outlines`` / ``query_outlines``: {"object" |
    "twin" | …: bool mask, any size} outlined in that frame. One colour scale for every panel."""
    mem, qry = to_uint8_image(memory_frame), to_uint8_image(query_frame)
    h, w = mem.shape[:2]
    lw, _, lh, _ = pad_amounts(h, w)
    weights = [[_array(m, np.float32) for m in maps.values()] for _, _, maps in rows]
    if any(wm.ndim != 2 for r in weights for wm in r):
        raise ValueError("read weights must be (h,w) maps")
    vmax = max(float(wm.max()) for r in weights for wm in r) or 1.0
    ncol = 1 + max(len(maps) for _, _, maps in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.0 * ncol + 0.8, 2.1 * len(rows) + 0.8),
                             squeeze=False, layout="constrained")
    im = None
    for r, (title, (qy, qx), maps) in enumerate(rows):
        axes[r, 0].imshow(qry)
        _outline(axes[r, 0], query_outlines or {}, (h, w))
        axes[r, 0].plot([(qx + 0.5) * FEATURE_STRIDE - lw - 0.5],
                        [(qy + 0.5) * FEATURE_STRIDE - lh - 0.5], marker="+", ms=14, mew=2.5,
                        color="red")
        axes[r, 0].set_title(f"query frame: {title} (+)", fontsize=8)
        for k, (label, wm) in enumerate(zip(maps, weights[r]), start=1):
            gh, gw = wm.shape  # the padded grid, shifted by the padding into image coordinates
            ax = axes[r, k]
            ax.imshow(mem)
            im = ax.imshow(wm, cmap="viridis", alpha=0.6, interpolation="nearest", vmin=0.0,
                           vmax=vmax, extent=(-lw - 0.5, gw * FEATURE_STRIDE - lw - 0.5,
                                              gh * FEATURE_STRIDE - lh - 0.5, -lh - 0.5))
            _outline(ax, memory_outlines or {}, (h, w))
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(f"memory frame, {label}: max {wm.max():.3f}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), label=WEIGHT_LABEL, shrink=0.85)
    _outline_legend(fig, list(dict.fromkeys([*(memory_outlines or {}), *(query_outlines or {})])))
    return save_figure(fig, out_png)


def plot_stress_sets(examples: Sequence[tuple[str, Any, Mapping[str, Any]]],
                     out_png: str | os.PathLike, *, columns: int = 2) -> Path:
    """Example frames of the stress sets, each region tinted and outlined in the colour of what
    it is (:data:`OUTLINE_COLOURS`, named in the legend). ``examples``: (title, frame,
    {"object" | "twin" | "pasted object": bool mask})."""
    if not examples:
        raise ValueError("plot_stress_sets needs at least one example")
    ncol = min(columns, len(examples))
    nrow = -(-len(examples) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(PAGE_WIDTH, 2.9 * nrow + 0.5), squeeze=False,
                             layout="constrained")
    for ax, (title, frame, regions) in zip(axes.ravel(), examples):
        img = to_uint8_image(frame).astype(np.float32)
        for name, mask in regions.items():
            m = _resized_mask(mask, img.shape[:2])[..., None]
            colour = np.asarray(matplotlib.colors.to_rgb(OUTLINE_COLOURS.get(name, "yellow")))
            img = np.where(m, 0.6 * img + 0.4 * 255 * colour, img)
        ax.imshow(img.astype(np.uint8))
        _outline(ax, regions, img.shape[:2])
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    _outline_legend(fig, list(dict.fromkeys(n for *_, r in examples for n in r)))
    return save_figure(fig, out_png)


def plot_gap_histogram(gaps: pd.DataFrame, sigmas: Sequence[float], out_png: str | os.PathLike
                       ) -> Path:
    """At twin cells: the distribution of the object's logit advantage (best object − best
    non-object memory logit) beside the kernel's log-penalty d²/2σ² at each cell's distance, per σ."""
    if gaps.empty:
        raise ValueError("plot_gap_histogram: no twin cells to plot")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    hi = float(np.percentile(np.r_[gaps["object_gap"].abs(), 1.0], 99))
    bins = np.linspace(-hi, hi, 50)
    ax.hist(gaps["object_gap"], bins=bins, alpha=0.5, color="k", label="object gap (logits)")
    for i, s in enumerate(sigmas):
        pen = (gaps["distance"] ** 2 / (2 * s * s)).clip(upper=hi)
        ax.hist(pen, bins=bins, histtype="step", lw=1.5, color=f"C{i}",
                label=f"kernel penalty d²/2σ², σ={s:g}")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="logit units (c/√d)", ylabel="twin cells",
           title="twin cells: object's logit advantage vs the kernel's penalty")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


#: Colours of the error overlay: what the prediction got right and wrong against the ground truth.
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "true positive": (0, 190, 0), "false positive": (230, 0, 0), "false negative": (0, 90, 255)}


def error_overlay(image: Any, pred: Any, truth: Any, *, alpha: float = 0.55,
                  void: int = 255) -> np.ndarray:
    """``image`` with each pixel tinted by what the prediction did there: true positive (the
    right object, green), false positive (an object where the truth has background, red), false
    negative (an object of the truth labelled otherwise, blue); void and true background as is."""
    img = to_uint8_image(image).astype(np.float32)
    p, t = _array(pred).astype(np.int64), _array(truth).astype(np.int64)
    if p.shape != img.shape[:2] or t.shape != img.shape[:2]:
        raise ValueError(f"masks {p.shape}, {t.shape} do not match image {img.shape[:2]}")
    known = t != void
    kinds = {"true positive": known & (t > 0) & (p == t),
             "false positive": known & (t == 0) & (p > 0),
             "false negative": known & (t > 0) & (p != t)}
    for name, where in kinds.items():
        colour = np.asarray(ERROR_COLOURS[name], dtype=np.float32)
        img = np.where(where[..., None], (1 - alpha) * img + alpha * colour, img)
    return img.astype(np.uint8)


def error_row(sequence: Any, masks_dir: str | os.PathLike, *, n: int = 4, title: str | None = None,
              frames: Sequence[int] | None = None) -> dict[str, Any]:
    """One row of :func:`plot_error_overlays`: ``frames`` (default ``n`` evenly spaced) of a
    :class:`kmnlib.data.video.VideoSequence` with the predicted label maps read from
    ``masks_dir/<name>/<frame stem>.png`` (resized, nearest, to the frame size) and the truth."""
    idx = list(frames) if frames is not None else \
        np.linspace(0, len(sequence) - 1, n).round().astype(int).tolist()
    images = list(sequence.load_frames(idx))
    preds = []
    for i, frame in zip(idx, images):
        path = Path(masks_dir) / sequence.name / f"{Path(sequence.frame_paths[i]).stem}.png"
        preds.append(_resized_labels(read_label_map(path), frame.shape[:2]))
    return {"title": title or sequence.name, "frames": images, "preds": preds,
            "truths": [sequence.load_mask(i) for i in idx], "numbers": idx}


def _resized_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if labels.shape == size:
        return labels
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]),
                                                     Image.Resampling.NEAREST))


def plot_error_overlays(rows: Sequence[Mapping[str, Any]], out_png: str | os.PathLike, *,
                        title: str = "") -> Path:
    """Fig. 5/6 style with the errors shown: one row per :func:`error_row`, each frame tinted by
    :func:`error_overlay` and titled with its frame number; the colours named in a legend."""
    if not rows:
        raise ValueError("plot_error_overlays needs at least one row")
    ncol = max(len(r["frames"]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(PAGE_WIDTH, 1.75 * len(rows) + 0.7),
                             squeeze=False, layout="constrained")
    for r, row in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(row["frames"]):
                ax.imshow(error_overlay(row["frames"][c], row["preds"][c], row["truths"][c]))
                ax.set_title(f"{row['title']}, frame {row['numbers'][c]}" if c == 0
                             else f"frame {row['numbers'][c]}", fontsize=8)
    handles = [Patch(color=np.asarray(c) / 255, label=n) for n, c in ERROR_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_png)


def plot_decoder_swap(swap: pd.DataFrame, out_png: str | os.PathLike) -> Path:
    """Bars of twin leakage (%) per decoder-input combination (``07_decoder_swap.csv``: twin-region
    swaps, over the video), one panel per model × read."""
    rows = swap[(swap["swap_over"] == "twin region") & (swap["scope"] == "video")]
    panels = list(rows.groupby(["model", "read"], sort=False))
    width = 3.2 * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, max(3.4, width / 3.0)),
                             squeeze=False, sharey=True)
    for ax, ((model, read), g) in zip(axes[0], panels):
        labels = [f"{r} / {q}" for r, q in zip(g["readout_from"], g["query_from"])]
        ax.bar(range(len(g)), g["leakage"], color=["C3", "C1", "C0", "C2"][:len(g)])
        ax.set_xticks(range(len(g)), labels, fontsize=8)
        ax.set_xlabel("readout / query features from", fontsize=8)
        ax.set_title(f"{model}\n{read}", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("twin leakage (% of twin pixels)")
    fig.suptitle("decoder-input swap over the twin region (clean memory)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_leak_onset(use: pd.DataFrame, out_png: str | os.PathLike) -> Path:
    """Twin leakage (%) and the weight twin cells put on object memory, per frame
    (``07_read_in_use.csv``), one line per model × read."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
    for i, ((model, read), g) in enumerate(use.groupby(["model", "read"], sort=False)):
        style = dict(color=f"C{i}", lw=1.4, label=f"{model}, {read}")
        axes[0, 0].plot(g["frame"], g["leakage"], **style)
        axes[0, 1].plot(g["frame"], g["weight_on_object"], **style)
    axes[0, 0].set(xlabel="frame", ylabel="twin leakage (%)", title="leak onset")
    axes[0, 1].set(xlabel="frame", ylabel="weight on object memory",
                   title="read at twin cells (the read in use)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=7)
    fig.suptitle("twin videos, mean over videos", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)
