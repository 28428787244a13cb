"""Paper numbers, table assembly and plotting helpers for the study notebooks.

The notebooks stay thin: every table they show is assembled here and every figure is drawn here,
so that the tests in ``tests/test_report.py`` reach them. Figures are PNG, tables CSV, both written
atomically (temp file in the target folder + ``os.replace``).

Published numbers are those of Seong et al., "Kernelized Memory Network for Video Object
Segmentation", ECCV 2020 (Tables 1-3), in percent. "J&F" is the DAVIS global mean ("G").
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the study runs under papermill and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from kmnlib.data.masks import davis_palette  # noqa: E402
from kmnlib.files import atomic_write  # noqa: E402

PAPER = "Seong et al. 2020"
PAPER_PROTOCOL = "published: ResNet-50, 384² crops, 480p, 1080Ti"

# --- the paper's published numbers ------------------------------------------------------------
# Table 1 (DAVIS 2016 / 2017 val): (method, training data, dataset, J&F, J, F).
TABLE1: tuple[tuple[str, str, str, float, float, float], ...] = (
    ("KMN", "static images only", "DAVIS16 val", 74.8, 74.7, 74.8),
    ("KMN", "static images only", "DAVIS17 val", 68.9, 67.1, 70.8),
    ("KMN", "static + DAVIS", "DAVIS16 val", 87.6, 87.1, 88.1),
    ("KMN", "static + DAVIS", "DAVIS17 val", 76.0, 74.2, 77.8),
    ("STM", "static + DAVIS", "DAVIS16 val", 86.5, 84.8, 88.1),
    ("STM", "static + DAVIS", "DAVIS17 val", 71.6, 69.2, 74.0),
    ("KMN", "static + DAVIS + YouTube-VOS", "DAVIS16 val", 90.5, 89.5, 91.5),
    ("KMN", "static + DAVIS + YouTube-VOS", "DAVIS17 val", 82.8, 80.0, 85.6),
    ("STM", "static + DAVIS + YouTube-VOS", "DAVIS16 val", 89.3, 88.7, 89.9),
    ("STM", "static + DAVIS + YouTube-VOS", "DAVIS17 val", 81.8, 79.2, 84.3),
)
# Table 1 runtime column, seconds per frame on one GTX 1080Ti.
RUNTIME_S_PER_FRAME: dict[str, float] = {"KMN": 0.12, "STM": 0.16}
RUNTIME_GPU = "GTX 1080Ti"

# Table 2, DAVIS 2017 test-dev: (method, J&F, J, F).
TABLE2_DAVIS17_TESTDEV: tuple[tuple[str, float, float, float], ...] = (
    ("KMN", 77.2, 74.1, 80.3),
    ("STM", 72.2, 69.3, 75.2),
)
# Table 2, YouTube-VOS 2018 val: (method, overall, J seen, J unseen, F seen, F unseen).
TABLE2_YTVOS18: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("KMN", 81.4, 81.4, 75.3, 85.6, 83.3),
    ("STM", 79.4, 79.7, 72.8, 84.2, 80.9),
)
# Table 3 ablation: (method, HaS, KM, DAVIS16 J&F, DAVIS17 J&F, YouTube-VOS 2018 overall).
# HaS/KM are None for STM, which is a different model rather than one cell of the ablation.
TABLE3: tuple[tuple[str, bool | None, bool | None, float, float, float], ...] = (
    ("KMN", False, False, 81.3, 72.6, 79.0),
    ("KMN", True, False, 87.1, 75.9, 79.5),
    ("KMN", False, True, 87.2, 73.5, 81.0),
    ("KMN", True, True, 87.6, 76.0, 81.4),
    ("STM", None, None, 86.5, 71.6, 79.4),
)


def paper_table1() -> pd.DataFrame:
    """Table 1 as a frame: method, training_data, dataset, J&F, J, F, s/frame (runtime column)."""
    df = pd.DataFrame(TABLE1, columns=["method", "training_data", "dataset", "J&F", "J", "F"])
    df["s/frame"] = df["method"].map(RUNTIME_S_PER_FRAME)
    return df


def paper_table2() -> pd.DataFrame:
    """Table 2 as one long frame: DAVIS17 test-dev (J&F, J, F) and YouTube-VOS 2018 val rows."""
    davis = pd.DataFrame(TABLE2_DAVIS17_TESTDEV, columns=["method", "J&F", "J", "F"])
    davis.insert(1, "dataset", "DAVIS17 test-dev")
    ytvos = pd.DataFrame(TABLE2_YTVOS18,
                         columns=["method", "overall", "J_seen", "J_unseen", "F_seen", "F_unseen"])
    ytvos.insert(1, "dataset", "YouTube-VOS 2018 val")
    return pd.concat([davis, ytvos], ignore_index=True)


def paper_table3() -> pd.DataFrame:
    """Table 3 as a frame: method, HaS, KM, DAVIS16 J&F, DAVIS17 J&F, YouTube-VOS overall."""
    return pd.DataFrame(TABLE3, columns=["method", "HaS", "KM", "DAVIS16 J&F", "DAVIS17 J&F",
                                         "YouTube-VOS overall"])


# --- our numbers --------------------------------------------------------------------------------
def jf_from_global(global_df: pd.DataFrame, *, source: str = "global table") -> dict[str, float]:
    """Pick J&F, J and F (in percent) from an evaluation's global table.

    Accepts the official DAVIS column names (``J&F-Mean``, ``J-Mean``, ``F-Mean``) or plain
    ``J&F``/``J``/``F``, with one row. The official toolkit stores fractions in [0, 1]; a table
    whose three values all lie in [0, 1] is taken as fractions and scaled to percent.
    """
    if len(global_df) != 1:
        raise ValueError(f"{source}: expected one row of global metrics, got {len(global_df)}")
    row = global_df.iloc[0]
    out = {}
    for key in ("J&F", "J", "F"):
        for col in (f"{key}-Mean", key, f"{key}_mean"):
            if col in global_df.columns:
                out[key] = float(row[col])
                break
        else:
            raise ValueError(f"{source}: no column for {key} (columns: {list(global_df.columns)})")
    if all(0.0 <= v <= 1.0 for v in out.values()):
        out = {k: 100.0 * v for k, v in out.items()}
    return out


def per_sequence_table(per_seq_df: pd.DataFrame, *, source: str = "per-sequence table"
                       ) -> pd.DataFrame:
    """Per-sequence J, F and J&F in percent from an evaluation's per-object table.

    Input columns ``Sequence`` (``<seq>_<object id>``), ``J-Mean``, ``F-Mean`` (fractions, as
    :func:`kmnlib.evaluate.evaluate_davis` returns). Objects of one sequence are averaged, so the
    output has one row per video: ``sequence``, ``objects``, ``J``, ``F``, ``J&F``.
    """
    need = ["Sequence", "J-Mean", "F-Mean"]
    if any(c not in per_seq_df.columns for c in need):
        raise ValueError(f"{source}: needs columns {need} (has {list(per_seq_df.columns)})")
    seq = per_seq_df["Sequence"].astype(str).str.rsplit("_", n=1).str[0]
    df = pd.DataFrame({"sequence": seq, "J": 100.0 * per_seq_df["J-Mean"].astype(float),
                       "F": 100.0 * per_seq_df["F-Mean"].astype(float)})
    out = df.groupby("sequence", sort=False).agg(objects=("J", "size"), J=("J", "mean"),
                                                 F=("F", "mean")).reset_index()
    out["J&F"] = (out["J"] + out["F"]) / 2.0
    return out


def inference_resolution(profile: Any) -> str:
    """The frame height inference runs at, as ``"<h>p"``: ``infer_height`` if the profile sets
    one, else the DAVIS folder it reads (``inference.resolution``)."""
    h = getattr(profile.inference, "infer_height", None)
    return f"{int(h)}p" if h else str(profile.inference.resolution)


def protocol_label(profile: Any, *, training_data: str, iterations: str | int | None = None,
                   resolution: str | None = None) -> str:
    """One line that says how a row of ours was made: profile, backbone, resolution, data, iterations.

    ``profile`` is a :class:`kmnlib.config.Profile`; ``iterations`` defaults to
    ``"<pretrain>+<main>"`` of the profile, ``resolution`` to its inference resolution.
    """
    if iterations is None:
        iterations = f"{profile.pretrain.iterations}+{profile.main.iterations}"
    res = resolution or inference_resolution(profile)
    return (f"ours ({profile.name}): {profile.model.backbone}, {profile.main.crop_size}² crops, "
            f"{res}, {training_data}, {iterations} it")


def side_by_side(paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Paper rows then our rows, one frame, with ``source`` and ``protocol`` columns.

    Every row of ``ours`` must carry a non-empty ``protocol`` (how it was made); paper rows get
    :data:`PAPER_PROTOCOL`. Columns missing on one side are left empty (NaN).
    """
    if "protocol" not in ours.columns:
        raise ValueError("our rows need a 'protocol' column (see protocol_label)")
    labels = ours["protocol"]
    if labels.isna().any() or (labels.astype(str).str.strip() == "").any():
        raise ValueError("every one of our rows needs a protocol label")
    left = paper.copy()
    left.insert(0, "source", PAPER)
    left["protocol"] = PAPER_PROTOCOL
    right = ours.copy()
    if "source" in right.columns:
        right = right.drop(columns="source")
    right.insert(0, "source", "ours")
    cols = list(left.columns) + [c for c in right.columns if c not in left.columns]
    frames = [f for f in (left, right) if len(f)]
    return pd.concat(frames, ignore_index=True).reindex(columns=cols)


def sigma_label(sigma: float | None) -> str:
    """Human label of a read: ``σ=7`` for the kernel, ``STM read (σ=∞)`` for ``None``."""
    if sigma is None or (isinstance(sigma, float) and math.isinf(sigma)):
        return "STM read (σ=∞)"
    return f"σ={sigma:g}"


def run_name(model_tag: str, sigma: float | None) -> str:
    """Folder name of one (model, read) evaluation, e.g. ``has_sigma7`` or ``has_stm``."""
    return f"{model_tag}_stm" if sigma is None else f"{model_tag}_sigma{sigma:g}"


# --- atomic writers (kmnlib.files.atomic_write: temp file beside the target, then rename) ------


def save_csv(df: pd.DataFrame, path: str | os.PathLike, *, index: bool = False) -> Path:
    """Write a table as CSV atomically (floats to 6 significant digits); returns the path."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=index, float_format="%.6g"))


def save_figure(fig: plt.Figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically and close it; returns the path."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi,
                                                     bbox_inches="tight"))
    finally:
        plt.close(fig)


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (UTF-8); returns the path."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def environment_summary() -> dict[str, str]:
    """Interpreter and library versions, shown at the top of each notebook (and checked by tests)."""
    import torch

    return {"python": sys.executable, "version": sys.version.split()[0], "torch": torch.__version__,
            "threads": str(torch.get_num_threads())}


# --- image helpers ------------------------------------------------------------------------------
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


def label_boundary(labels: Any) -> np.ndarray:
    """Boolean (H,W) map of pixels whose right or lower neighbour has a different label."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return edge


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


# --- figures ------------------------------------------------------------------------------------
def read_training_log(path: str | os.PathLike, *, x: str = "step",
                      y: str = "loss") -> pd.DataFrame:
    """Read a training CSV log, checking it has the ``x`` and ``y`` columns and at least one row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training log not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot parse training log as CSV ({exc})") from exc
    missing = [c for c in (x, y) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: training log lacks column(s) {missing} (has {list(df.columns)})")
    if df.empty:
        raise ValueError(f"{path}: training log has no rows")
    return df


def plot_loss_curves(logs: Mapping[str, str | os.PathLike], out_png: str | os.PathLike, *,
                     x: str = "step", y: str = "loss", smooth: int = 20,
                     title: str = "training loss") -> Path:
    """Loss curves of several training runs (label → CSV log) on one axis, raw and smoothed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, (label, path) in enumerate(logs.items()):
        df = read_training_log(path, x=x, y=y)
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
        for ax in axes[:, i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


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
        for ax in axes[:, i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_read_weights(memory_frame: Any, query_frame: Any, query_yx: tuple[int, int],
                      weights: Mapping[str, Any], out_png: str | os.PathLike, *,
                      stride: int = 16) -> Path:
    """Fig. 1 style: where one query position reads from in the memory frame, per read.

    ``query_yx`` is in feature cells (stride ``stride``); ``weights`` maps a label (e.g. "STM",
    "KMN σ=7") to an (h,w) weight map over the memory frame's feature grid.
    """
    mem, qry = to_uint8_image(memory_frame), to_uint8_image(query_frame)
    n = len(weights)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 2.6), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(qry)
    qy, qx = query_yx
    ax.plot([(qx + 0.5) * stride - 0.5], [(qy + 0.5) * stride - 0.5], marker="+", ms=14, mew=2.5,
            color="red")
    ax.set_title("query frame, query position", fontsize=8)
    ax.axis("off")
    h, w = mem.shape[:2]
    for k, (label, wmap) in enumerate(weights.items(), start=1):
        wm = np.asarray(wmap.detach().cpu() if hasattr(wmap, "detach") else wmap, dtype=np.float32)
        if wm.ndim != 2:
            raise ValueError(f"read weights {label!r} must be (h,w), got shape {wm.shape}")
        ax = axes[0, k]
        ax.imshow(mem)
        ax.imshow(wm, cmap="jet", alpha=0.55, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                  interpolation="nearest")
        ax.set_title(f"memory frame, {label}: max weight {wm.max():.3f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out_png)


# --- numbers behind the figures -----------------------------------------------------------------
def _dilate(edge: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)² square, with numpy only."""
    out = edge.copy()
    h, w = edge.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = edge[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


def boundary_loss_stats(loss: Any, masks: Any, hidden_pixels: Any, *, band: int = 2,
                        void: int = 255) -> pd.DataFrame:
    """Mean per-pixel loss in three disjoint regions of each query frame (Fig. 7's claim in numbers).

    ``loss`` (Q,H,W) for the last Q frames of a clip, ``masks`` (T,H,W) ground truth,
    ``hidden_pixels`` (T,H,W) bool Hide-and-Seek cells at pixel resolution. Regions: within
    ``band`` px of a ground-truth boundary (``gt_boundary``); within ``band`` px of a hidden-cell
    edge but not of a GT boundary (``hidden_edge``); everything else (``elsewhere``). Void pixels
    are left out. Returns one row per query frame with the three means and pixel counts.
    """
    def arr(x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)

    loss, masks, hid = arr(loss).astype(np.float64), arr(masks), arr(hidden_pixels).astype(bool)
    q = loss.shape[0]
    if masks.shape[0] < q or hid.shape[0] != masks.shape[0] or masks.shape[1:] != loss.shape[1:]:
        raise ValueError(f"boundary_loss_stats: loss {loss.shape}, masks {masks.shape}, "
                         f"hidden {hid.shape} do not fit together")
    rows = []
    offset = masks.shape[0] - q
    for i in range(q):
        m, h = masks[offset + i], hid[offset + i]
        valid = m != void
        gt_band = _dilate(label_boundary(m), band)
        hid_band = _dilate(label_boundary(h.astype(np.uint8)), band) & ~gt_band
        rest = ~(gt_band | hid_band)
        row = {"frame": offset + i}
        for name, region in (("gt_boundary", gt_band), ("hidden_edge", hid_band),
                             ("elsewhere", rest)):
            sel = region & valid
            row[f"{name}_loss"] = float(loss[i][sel].mean()) if sel.any() else float("nan")
            row[f"{name}_pixels"] = int(sel.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def read_weight_maps(model: Any, memory_frame: np.ndarray, memory_mask: np.ndarray,
                     query_frame: np.ndarray, query_yx: tuple[int, int],
                     sigmas: Sequence[float | None], *, device: str = "cpu"
                     ) -> dict[str, np.ndarray]:
    """Where one query position reads from in a one-frame memory, for each read in ``sigmas``.

    Frames uint8 (H,W,3), ``memory_mask`` (H,W) ids (object 1 is memorised), ``query_yx`` in
    key-feature cells of the padded query. Returns ``{sigma_label: weights (h,w)}`` summing to 1.
    """
    import torch

    from kmnlib.memory import read_weights
    from kmnlib.model.ops import pad_divide_by

    def tensor(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(to_uint8_image(img)).permute(2, 0, 1)[None].float().div(255.0)

    model = model.to(device).eval()
    with torch.no_grad():
        mf, _ = pad_divide_by(tensor(memory_frame).to(device))
        qf, _ = pad_divide_by(tensor(query_frame).to(device))
        mm = torch.from_numpy((np.asarray(memory_mask) == 1).astype(np.float32))[None].to(device)
        mm, _ = pad_divide_by(mm)
        mk, _ = model.encode_memory(mf, mm, torch.zeros_like(mm))
        qk = model.encode_query(qf)[0]
        out = {}
        for s in sigmas:
            w = read_weights(mk[:, :, None], qk, query_yx, sigma=s)  # one memory frame: T = 1
            out[sigma_label(s)] = w[0].cpu().numpy()
    return out


def object_centre_cell(mask: np.ndarray, *, stride: int = 16, obj: int = 1) -> tuple[int, int]:
    """Key-feature cell (y, x) at the centroid of object ``obj`` in a mask, after stride padding."""
    ys, xs = np.nonzero(np.asarray(mask) == obj)
    if ys.size == 0:
        raise ValueError(f"object {obj} is absent from the mask")
    h, w = np.asarray(mask).shape
    ph, pw = (-(-h // stride) * stride - h) // 2, (-(-w // stride) * stride - w) // 2
    return int((ys.mean() + ph) // stride), int((xs.mean() + pw) // stride)


def overlay_row(sequence: Any, masks_dir: str | os.PathLike, *, n: int = 4,
                title: str | None = None) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """(title, frames, predicted label maps) at ``n`` evenly spaced frames of a sequence.

    ``sequence`` is a :class:`kmnlib.data.video.VideoSequence`; result masks are read from
    ``masks_dir/<name>/<frame stem>.png`` and resized (nearest) to the frame size if needed.
    """
    from PIL import Image

    from kmnlib.data.masks import read_label_map

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


def training_summary(logs: Mapping[str, str | os.PathLike], *, tail: float = 0.1) -> pd.DataFrame:
    """One row per training run (label → CSV log of :func:`kmnlib.train.train_stage`).

    Columns: run, iterations (last ``step``), wall_s (last ``wall_s``), first_loss (mean of the
    first ``tail`` fraction of rows), final_loss (mean of the last ``tail`` fraction), clips_per_s
    (median).
    """
    rows = []
    for label, path in logs.items():
        df = read_training_log(path, x="step", y="loss")
        k = max(1, int(round(len(df) * tail)))
        rows.append({"run": label, "iterations": int(df["step"].iloc[-1]),
                     "wall_s": float(df["wall_s"].iloc[-1]) if "wall_s" in df else float("nan"),
                     "first_loss": float(df["loss"].head(k).mean()),
                     "final_loss": float(df["loss"].tail(k).mean()),
                     "clips_per_s": (float(df["clips_per_s"].median()) if "clips_per_s" in df
                                     else float("nan"))})
    return pd.DataFrame(rows)
