"""The index page's forest plot: every effect of ``tables/effects.csv`` on one axis.

One row per effect: the point estimate and its 95 % interval (the interval the findings quote,
:func:`kmnlib.study.findings.interval`), a zero line, the smallest detectable effect shaded around
zero on that row, and the paper's Table-3 difference as a distinct marker where it has one. Sized
for a page: at most :data:`MAX_WIDTH_PX` wide and never wider than :data:`MAX_ASPECT` × its height.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from kmnlib.files import save_figure
from kmnlib.study.findings import interval, paper_effect

FOREST_PNG = "index_forest.png"
DPI = 120
WIDTH_IN = 13.0                  # 1560 px at DPI before the tight bounding box trims it
MAX_WIDTH_PX = 1800
MAX_ASPECT = 3.0                 # below the report checker's 3.5, with a margin for trimming
ROW_IN = 0.42


def row_label(row: pd.Series) -> str:
    """What a row is: the comparison, the models' training stage, the read, the metric."""
    metric = row.get("metric", "J&F")
    return f"{row['comparison']} · {row['stage']} · {row['read']}" + \
        ("" if metric == "J&F" else f" · {metric}")


def forest_plot(effects: pd.DataFrame, path: Path, *, source: str = "tables/effects.csv") -> Path:
    """Draw ``effects`` (rows of an effects table) to ``path`` (PNG, atomically); return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(effects)
    height = max(ROW_IN * n + 1.6, WIDTH_IN / MAX_ASPECT)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, height), dpi=DPI)
    ys = list(range(n))[::-1]   # first table row on top
    kinds = set()
    for y, (_, row) in zip(ys, effects.iterrows()):
        iv = interval(row)
        kinds.add(iv.kind.split(" (")[0])
        ax.fill_betweenx([y - 0.35, y + 0.35], -iv.mde, iv.mde, color="0.88", lw=0,
                         label="smallest detectable effect (80 % power)" if y == ys[0] else None)
        ax.plot([iv.low, iv.high], [y, y], color="C0", lw=2.2)
        ax.plot(float(row["mean_diff"]), y, "o", color="C0", ms=6,
                label="ours: mean and 95 % interval" if y == ys[0] else None)
        ref = paper_effect(row)
        if ref is not None:
            ax.plot(ref, y, "D", color="C3", ms=7, mfc="none", mew=1.8,
                    label="paper, Table 3" if "paper, Table 3" not in
                    ax.get_legend_handles_labels()[1] else None)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(ys, [row_label(r) for _, r in effects.iterrows()], fontsize=9)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("difference A − B (J&F points; leakage rows: percentage points)")
    ax.set_title(f"Every effect of {source}; intervals: {', '.join(sorted(kinds))}", fontsize=10)
    ax.grid(axis="x", color="0.9")
    # Below the axes: inside, it would hide a row.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1 * 6 / height), ncol=3, fontsize=8,
              frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=DPI)
