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
from matplotlib.patches import Rectangle  # noqa: E402
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


def plot_per_sequence(per_seq: Mapping[str, pd.DataFrame], out_png: str | os.PathLike, *,
                      metric: str = "J&F", seq_col: str = "sequence",
                      title: str = "per-sequence J&F") -> Path:
    """Grouped bars, one group per sequence, one bar per run (label → per-sequence table)."""
    rows = []
    for label, df in per_seq.items():
        if seq_col not in df.columns or metric not in df.columns:
            raise ValueError(f"per-sequence table {label!r} needs columns {seq_col!r} and "
                             f"{metric!r} (has {list(df.columns)})")
        rows.append(pd.DataFrame({"sequence": df[seq_col].astype(str), "run": label,
                                  "value": df[metric].astype(float)}))
    long = pd.concat(rows, ignore_index=True)
    order = (long.groupby("sequence")["value"].mean().sort_values(ascending=False).index.tolist())
    runs = list(per_seq)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(order) * max(1, len(runs)) + 2), 3.8))
    width = 0.8 / len(runs)
    xs = np.arange(len(order))
    for k, run in enumerate(runs):
        vals = long[long["run"] == run].set_index("sequence")["value"].reindex(order)
        ax.bar(xs + (k - (len(runs) - 1) / 2) * width, vals.to_numpy(), width, label=run)
    ax.set_xticks(xs, order, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_sigma_curve(df: pd.DataFrame, out_png: str | os.PathLike, *, metric: str = "J&F",
                     group: str | None = None, paper_sigma: float = 7.0,
                     title: str = "kernel width σ vs accuracy") -> Path:
    """Accuracy against σ; ``sigma`` None/NaN/inf (STM's read) is drawn at the right as ∞.

    ``df`` has columns ``sigma`` and ``metric`` (and ``group`` for one line per model).
    """
    if "sigma" not in df.columns or metric not in df.columns:
        raise ValueError(f"σ table needs columns 'sigma' and {metric!r} (has {list(df.columns)})")
    sig = pd.to_numeric(df["sigma"], errors="coerce").fillna(np.inf)
    finite = sorted(set(sig[np.isfinite(sig)].tolist()))
    positions = {s: i for i, s in enumerate(finite)}
    positions[np.inf] = len(finite)
    labels = [f"{s:g}" for s in finite] + ["∞ (STM)"]
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    groups = [(None, df)] if group is None else list(df.groupby(group, sort=False))
    for name, g in groups:
        s = pd.to_numeric(g["sigma"], errors="coerce").fillna(np.inf)
        order = np.argsort([positions[v] for v in s])
        xs = np.array([positions[v] for v in s])[order]
        ys = g[metric].to_numpy(dtype=float)[order]
        ax.plot(xs, ys, marker="o", label=None if name is None else str(name))
    if paper_sigma in positions:
        ax.axvline(positions[paper_sigma], color="grey", ls="--", lw=1,
                   label=f"paper's σ={paper_sigma:g}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="σ (feature cells)", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    if group is not None or paper_sigma in positions:
        ax.legend(fontsize=8)
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


def plot_loss_maps(frames: Any, masks: Any, hidden: Any, loss: Any,
                   out_png: str | os.PathLike, *, title: str = "") -> Path:
    """Fig. 7 style: per-pixel loss of the query frames with ground-truth boundaries (cyan) and
    hidden-cell outlines (yellow), to see whether the loss follows the artificial cell edges."""
    frames = [to_uint8_image(f) for f in frames]
    n = len(frames)
    masks = [np.asarray(m.detach().cpu() if hasattr(m, "detach") else m) for m in masks]
    losses = [np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
              for x in loss]
    hidden = [np.asarray(h.detach().cpu() if hasattr(h, "detach") else h) for h in hidden]
    if not (len(masks) == len(hidden) == n) or len(losses) > n:
        raise ValueError(f"loss maps: {n} frames, {len(masks)} masks, {len(hidden)} hidden grids, "
                         f"{len(losses)} loss maps")
    offset = n - len(losses)  # loss maps exist for the query frames (the last ones) only
    vmax = max(float(np.percentile(x, 99.5)) for x in losses) or 1.0
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(overlay_labels(frames[i], masks[i], alpha=0.35))
        draw_hidden_grid(axes[0, i], hidden[i], frames[i].shape[:2])
        axes[0, i].set_title(f"frame {i + 1}" + (" (memory)" if i < offset else ""), fontsize=8)
        if i >= offset:
            lm = losses[i - offset]
            im = axes[1, i].imshow(lm, cmap="magma", vmin=0.0, vmax=vmax)
            edge = label_boundary(masks[i])
            axes[1, i].contour(edge, levels=[0.5], colors="cyan", linewidths=0.6)
            draw_hidden_grid(axes[1, i], hidden[i], lm.shape)
            axes[1, i].set_title(f"loss, mean {lm.mean():.3f}", fontsize=8)
            fig.colorbar(im, ax=axes[1, i], fraction=0.046, pad=0.02)
    return _finish(fig, axes, out_png, title)


def plot_read_weights(memory_frame: Any, query_frame: Any,
                      rows: Sequence[tuple[str, tuple[int, int], Mapping[str, Any]]],
                      out_png: str | os.PathLike, *, outline: Any = None) -> Path:
    """Fig. 1 style: where query cells read from in the memory frame, one row per query cell.

    ``rows``: (title, query cell (y, x) on the padded feature grid, {read label: (h,w) weights over
    the memory frame's padded grid}). ``outline``: an optional bool (H,W) map drawn on the query
    frame (e.g. the distractor).
    """
    mem, qry = to_uint8_image(memory_frame), to_uint8_image(query_frame)
    h, w = mem.shape[:2]
    lw, _, lh, _ = pad_amounts(h, w)
    ncol = 1 + max(len(maps) for _, _, maps in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.0 * ncol, 2.0 * len(rows) + 0.4),
                             squeeze=False)
    for r, (title, (qy, qx), maps) in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(qry)
        if outline is not None:
            ax.contour(np.asarray(outline, dtype=float), levels=[0.5], colors="yellow",
                       linewidths=0.7)
        ax.plot([(qx + 0.5) * FEATURE_STRIDE - lw - 0.5], [(qy + 0.5) * FEATURE_STRIDE - lh - 0.5],
                marker="+", ms=14, mew=2.5, color="red")
        ax.set_title(f"query frame: {title}", fontsize=8)
        for k, (label, wmap) in enumerate(maps.items(), start=1):
            wm = np.asarray(wmap.detach().cpu() if hasattr(wmap, "detach") else wmap,
                            dtype=np.float32)
            if wm.ndim != 2:
                raise ValueError(f"read weights {label!r} must be (h,w), got shape {wm.shape}")
            gh, gw = wm.shape  # the padded grid, shifted by the padding into image coordinates
            ax = axes[r, k]
            ax.imshow(mem)
            ax.imshow(wm, cmap="jet", alpha=0.55, interpolation="nearest",
                      extent=(-lw - 0.5, gw * FEATURE_STRIDE - lw - 0.5,
                              gh * FEATURE_STRIDE - lh - 0.5, -lh - 0.5))
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(f"memory frame, {label}: max {wm.max():.3f}", fontsize=8)
    return _finish(fig, axes, out_png, "")


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


def overlay_row(sequence: Any, masks_dir: str | os.PathLike, *, n: int = 4,
                title: str | None = None) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """(title, frames, predicted label maps) at ``n`` evenly spaced frames of a sequence.

    ``sequence`` is a :class:`kmnlib.data.video.VideoSequence`; result masks are read from
    ``masks_dir/<name>/<frame stem>.png`` and resized (nearest) to the frame size if needed.
    """
    idx = np.linspace(0, len(sequence) - 1, n).round().astype(int).tolist()
    frames = list(sequence.load_frames(idx))
    labels = []
    for i, frame in zip(idx, frames):
        path = Path(masks_dir) / sequence.name / f"{Path(sequence.frame_paths[i]).stem}.png"
        lab = read_label_map(path)
        if lab.shape != frame.shape[:2]:
            lab = np.asarray(Image.fromarray(lab).resize((frame.shape[1], frame.shape[0]),
                                                         Image.Resampling.NEAREST))
        labels.append(lab)
    return title or sequence.name, frames, labels


def plot_decoder_swap(swap: pd.DataFrame, out_png: str | os.PathLike) -> Path:
    """Bars of twin leakage (%) per decoder-input combination (``07_decoder_swap.csv``: twin-region
    swaps, over the video), one panel per model × read."""
    rows = swap[(swap["swap_over"] == "twin region") & (swap["scope"] == "video")]
    panels = list(rows.groupby(["model", "read"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False,
                             sharey=True)
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
