"""``python -m kmnlib.study.compare results/mini /path/to/fresh/results/mini --jf-tol T --effect-tol E``:
does a fresh run of the study land within a tolerance of the committed one?

Compares, row by row, the J&F of every arm (``tables/03_davis16_val.csv``: stage, pretraining,
read, σ) and every pooled effect's ``mean_diff`` (``tables/effects.csv``: comparison, stage,
read, metric), prints the differences as Markdown and a verdict line, and exits 0 when every
difference is within its tolerance, 1 when one is not (2: a folder or table is missing or the two
hold different rows). The tolerances are the reader's: the README states the ones measured between
machines.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kmnlib.cli import add_debug_flag, run_command
from kmnlib.study.summary import _markdown as markdown

ARM_KEYS = ["stage", "pretraining", "read", "sigma"]
EFFECT_KEYS = ["comparison", "stage", "read", "metric"]


def _table(folder: Path, name: str) -> pd.DataFrame:
    path = folder / "tables" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table missing; compare two folders a finished study "
                                f"wrote (e.g. results/mini)")
    return pd.read_csv(path)


def differences(a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str], value: str
                ) -> pd.DataFrame:
    """Rows of ``a`` and ``b`` matched on ``keys`` (each must hold the same rows): ``value`` in
    both and their difference ``b − a``."""
    left = a[[*keys, value]].copy()
    right = b[[*keys, value]].copy()
    for df in (left, right):
        df[list(keys)] = df[list(keys)].astype(str)
    merged = left.merge(right, on=list(keys), how="outer", suffixes=(" (a)", " (b)"),
                        indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    if len(unmatched):
        rows = unmatched[list(keys)].head(3).to_dict("records")
        raise ValueError(f"the two studies hold different rows: {rows} (same profile and "
                         f"settings needed)")
    merged = merged.drop(columns="_merge")
    merged["difference"] = merged[f"{value} (b)"] - merged[f"{value} (a)"]
    return merged


def compare(a: Path, b: Path, jf_tol: float, effect_tol: float) -> tuple[pd.DataFrame,
                                                                          pd.DataFrame, bool]:
    """(arm J&F differences, effect differences, whether all are within the tolerances)."""
    arms = differences(_table(a, "03_davis16_val.csv"), _table(b, "03_davis16_val.csv"),
                       ARM_KEYS, "J&F")
    effects = differences(_table(a, "effects.csv"), _table(b, "effects.csv"), EFFECT_KEYS,
                          "mean_diff")
    ok = bool((arms["difference"].abs() <= jf_tol).all()
              and (effects["difference"].abs() <= effect_tol).all())
    return arms, effects, ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kmnlib.study.compare", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("a", type=Path, help="a study folder (e.g. the committed results/mini)")
    p.add_argument("b", type=Path, help="another study folder (e.g. a fresh run's)")
    p.add_argument("--jf-tol", type=float, required=True, help="largest |ΔJ&F| (points) per arm")
    p.add_argument("--effect-tol", type=float, required=True,
                   help="largest |Δ mean_diff| (points) per pooled effect")
    add_debug_flag(p)
    args = p.parse_args(argv)

    def work() -> int:
        arms, effects, ok = compare(args.a, args.b, args.jf_tol, args.effect_tol)
        print(f"## J&F per arm: {args.a} (a) vs {args.b} (b)\n\n{markdown(arms, 2)}")
        print(f"\n## Pooled effects (mean_diff)\n\n{markdown(effects, 2)}")
        worst = max(arms["difference"].abs().max(), 0.0)
        worst_e = max(effects["difference"].abs().max(), 0.0)
        print(f"\n{'within' if ok else 'NOT within'} tolerance: largest |ΔJ&F| {worst:.2f} "
              f"(tolerance {args.jf_tol:g}), largest |Δeffect| {worst_e:.2f} "
              f"(tolerance {args.effect_tol:g})")
        return 0 if ok else 1

    return run_command(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
