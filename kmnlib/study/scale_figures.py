"""Figures of the scale axis (notebook 08): each quantity against J&F with its trend, J&F along
training, and the long run's training curve. Sizes fit a page (≤ 1500 px wide)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kmnlib.files import save_figure  # noqa: E402
from kmnlib.study.scale import PAPER_JF, QUANTITIES  # noqa: E402

LABELS = {"km_minus_stm": "KM − STM J&F (kernel's effect)",
          "logit_std": "read logit std (STM read)",
          "top_gap": "best − second logit gap",
          "margin_over_penalty": "margin / kernel penalty at twin cells",
          "leakage": "twin leakage, STM read (%)"}
STYLE = {("HaS", "study"): ("tab:blue", "o"), ("no HaS", "study"): ("tab:orange", "s"),
         ("HaS", "long run"): ("tab:green", "D")}


def _panel(ax: plt.Axes, table: pd.DataFrame, trends: pd.DataFrame, q: str) -> None:
    for (arm, run), g in table.groupby(["arm", "run"], sort=False):
        colour, marker = STYLE.get((arm, run), ("grey", "x"))
        err = None
        if q == "km_minus_stm":
            err = np.vstack([g[q] - g["ci_low"], g["ci_high"] - g[q]])
        ax.errorbar(g["J&F"], g[q], yerr=err, fmt=marker, color=colour, ms=5, capsize=2,
                    label=f"{arm} ({run})", alpha=0.85)
    ax.axvspan(*PAPER_JF, color="0.9", label="paper's J&F range")
    fit = trends[trends["quantity"] == q]
    if len(fit):
        f = fit.iloc[0]
        lo, hi = f["jf_min"], f["jf_max"]
        slope = f["slope_per_jf"]
        intercept = f["predicted"] - slope * f["at_jf"]
        ax.plot([lo, hi], [intercept + slope * lo, intercept + slope * hi], "k-", lw=1)
        far = max(PAPER_JF)
        ax.plot([hi, far], [intercept + slope * hi, intercept + slope * far], "k--", lw=1,
                label="trend (dashed: extrapolated)")
        ax.errorbar(fit["at_jf"], fit["predicted"],
                    yerr=np.vstack([fit["predicted"] - fit["pi_low"],
                                    fit["pi_high"] - fit["predicted"]]),
                    fmt="none", ecolor="k", capsize=3)
    if q == "km_minus_stm":
        ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("DAVIS-2016 val J&F, subset (STM read)")
    ax.set_ylabel(LABELS[q])


def plot_scale(table: pd.DataFrame, trends: pd.DataFrame, path: Path) -> Path:
    """One panel per quantity against J&F: points by arm and run, the fitted line (dashed where
    it is extrapolated to the paper's J&F) and its 95 % prediction interval at 81 and 88."""
    qs = [q for q in QUANTITIES if q in table and table[q].notna().any()]
    cols = 3
    rows = max(1, -(-len(qs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(14, 4.2 * rows), squeeze=False)
    for ax, q in zip(axes.flat, qs):
        _panel(ax, table.replace([np.inf, -np.inf], np.nan), trends, q)
    for ax in list(axes.flat)[len(qs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=9, frameon=False)
    fig.suptitle("The scale axis: each quantity against model quality (one point per checkpoint)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_along_training(table: pd.DataFrame, path: Path) -> Path:
    """J&F with STM's read (solid) and the kernel (dashed) against training iterations, one line
    per arm × seed × run."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for (arm, run, seed), g in table.sort_values("iterations").groupby(["arm", "run", "seed"],
                                                                     sort=False):
        colour, marker = STYLE.get((arm, run), ("grey", "x"))
        ax.plot(g["iterations"], g["J&F"], marker=marker, color=colour, ms=4,
                label=f"{arm} ({run}), seed {seed}")
        ax.plot(g["iterations"], g["J&F_km"], ls="--", color=colour, lw=1)
    ax.set_xlabel("training iterations (static pre-training + video training)")
    ax.set_ylabel("J&F, DAVIS-2016 val subset")
    ax.set_title("J&F along training (solid: STM read; dashed: kernel read)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_training_curve(log: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Loss (smoothed over 50 iterations) and learning rate of one training run's log."""
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(log["step"], log["loss"], color="0.75", lw=0.5, label="loss")
    ax.plot(log["step"], log["loss"].rolling(50, min_periods=1).mean(), color="tab:blue",
            label="loss, 50-iteration mean")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    twin = ax.twinx()
    twin.plot(log["step"], log["lr"], color="tab:red", lw=1, label="learning rate")
    twin.set_ylabel("learning rate", color="tab:red")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
