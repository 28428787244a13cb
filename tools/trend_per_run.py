"""The scale axis's trends with training runs, not checkpoints, as the unit.

``08_trend.csv`` fits one line through every checkpoint of every run, so its intervals treat
checkpoints of one run as independent observations (too narrow by an unknown amount; see
``kmnlib/analysis/trend.py``). Here each run (arm × seed, and the long run) gets its own slope
(``fit_trend``), and the slopes get a t interval over runs (``effects.seed_level``, runs in
place of seeds)::

    .venv/bin/python tools/trend_per_run.py results/mini
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from kmnlib.analysis.trend import fit_trend
from kmnlib.study.effects import seed_level

QUANTITIES = ("km_minus_stm", "logit_std", "top_gap", "margin_over_penalty", "leakage")


def per_run_slopes(scale: pd.DataFrame, quantity: str) -> pd.Series:
    """One least-squares slope of ``quantity`` against J&F per (arm, run, seed)."""
    slopes = {key: fit_trend(rows["J&F"], rows[quantity]).slope
              for key, rows in scale.groupby(["arm", "run", "seed"])}
    return pd.Series(slopes, name=quantity)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="a finished study's folder, e.g. results/mini")
    args = parser.parse_args(argv)
    table = args.out_dir / "tables" / "08_scale.csv"
    if not table.is_file():
        print(f"trend_per_run: {table} not found — run notebook 08 (make study) first", file=sys.stderr)
        return 2
    scale = pd.read_csv(table)
    print("| quantity | runs | mean slope per J&F point | 95 % t interval over runs |")
    print("|---|---|---|---|")
    for quantity in QUANTITIES:
        slopes = per_run_slopes(scale, quantity)
        low, high, _ = seed_level(slopes.to_frame())
        print(f"| {quantity} | {slopes.size} | {slopes.mean():+.4f} | [{low:+.4f}, {high:+.4f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
