"""The index page's arms × seeds table: DAVIS-16 val J&F of every (stage, pretraining, read) per
seed (:func:`kmnlib.study.summary.arms_by_seed`, this folder and its ``-seed<N>`` replicates),
their mean, the paper's number for the same arm, and the first-frame-copy baseline as a last row.

The paper's numbers come from :mod:`kmnlib.study.paper`: Table 3 (static + DAVIS training, the
four HaS × KM cells) for the video-trained arms, Table 1's static-only KMN (HaS + KM) for the
static-only one; an arm the paper does not report gets none.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from kmnlib.study import paper
from kmnlib.study.findings import PAPER_STAGE
from kmnlib.study.summary import arms_by_seed, runs

BASELINE_CSV = Path("baselines") / "first-frame-copy" / "global_results.csv"
STATIC_STAGE = "static only"
BASELINE_LABEL = "first-frame mask copied to every frame (no model)"


def paper_jf(stage: str, pretraining: str, read: str) -> tuple[float | None, str]:
    """(the paper's DAVIS-16 val J&F for this arm, which table) or (None, "")."""
    has, km = pretraining == "HaS", str(read).startswith("KM")
    if stage == PAPER_STAGE:
        t3 = paper.paper_table3()
        cell = t3[(t3["method"] == "KMN") & (t3["HaS"] == has) & (t3["KM"] == km)]
        if len(cell):
            return float(cell["DAVIS16 J&F"].iloc[0]), "Table 3"
    if stage == STATIC_STAGE and has and km:
        t1 = paper.paper_table1()
        cell = t1[(t1["method"] == "KMN") & (t1["training_data"] == "static images only")
                  & (t1["dataset"] == "DAVIS16 val")]
        if len(cell):
            return float(cell["J&F"].iloc[0]), "Table 1"
    return None, ""


def baseline_path(out_dir: Path) -> Path:
    """Where ``python -m kmnlib.baselines`` writes its table, beside the results folder."""
    return Path(out_dir).parent / BASELINE_CSV


def baseline_jf(out_dir: Path) -> float | None:
    """First-frame-copy J&F in percent (the evaluation writes a fraction), None when absent."""
    path = baseline_path(out_dir)
    if not path.is_file():
        return None
    return 100.0 * float(pd.read_csv(path)["J&F-Mean"].iloc[0])


def arms_table(out_dir: Path) -> tuple[pd.DataFrame, list[str]] | None:
    """(the table, the runs whose ``tables/03_davis16_val.csv`` it holds), None when no run has
    that table yet."""
    out_dir = Path(out_dir)
    sources = [d.name for d in runs(out_dir) if (d / "tables" / "03_davis16_val.csv").is_file()]
    if not sources:
        return None
    df = arms_by_seed(out_dir)
    seed_cols = [c for c in df.columns if str(c).startswith("seed ")]
    df["mean over seeds"] = df[seed_cols].mean(axis=1)
    refs = [paper_jf(r["stage"], r["pretraining"], r["read"]) for _, r in df.iterrows()]
    df["paper"] = [v for v, _ in refs]
    df["paper source"] = [s for _, s in refs]
    base = {"stage": "—", "pretraining": "—", "read": BASELINE_LABEL,
            "mean over seeds": baseline_jf(out_dir), "paper source": ""}
    return pd.concat([df, pd.DataFrame([base])], ignore_index=True), sources
