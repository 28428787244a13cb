"""``python -m kmnlib.study.summary results/mini``: the study's headline numbers as Markdown.

Reads the tables a finished study wrote (its own and those of the replicates beside it,
``<out_dir>-seed<N>``) and prints the tables the README quotes: every arm per seed, the paired
effects with their intervals, and the distractor study. Nothing is computed that the tables do not
hold, so every number printed carries its source file.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kmnlib.cli import add_debug_flag, run_command


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table missing (has the study run to the end?)")
    return pd.read_csv(path)


def replicates(out_dir: Path) -> list[Path]:
    """The seed replicates beside ``out_dir``: folders ``<out_dir>-seed<N>``, by N."""
    found = [(int(d.name.rsplit("-seed", 1)[1]), d)
             for d in out_dir.parent.glob(f"{out_dir.name}-seed*")
             if d.is_dir() and d.name.rsplit("-seed", 1)[1].isdigit()]
    return [d for _, d in sorted(found)]


def runs(out_dir: Path) -> list[Path]:
    """``out_dir`` and its seed replicates: the runs whose tables the summaries pool."""
    return [out_dir] + replicates(out_dir)


def _read_runs(out_dir: Path, table: str) -> pd.DataFrame:
    """``tables/<table>`` of every run, concatenated; a one-line error when no run holds it."""
    frames = [_read(d / "tables" / table) for d in runs(out_dir)
              if (d / "tables" / table).is_file()]
    if not frames:
        raise FileNotFoundError(f"{out_dir}: holds no tables/{table} (nor do its -seed<N> "
                                f"replicates); run `make study` first, or name the folder a study "
                                f"wrote (e.g. results/mini)")
    return pd.concat(frames, ignore_index=True)


def check_study_folder(out_dir: Path) -> None:
    """Refuse a folder that is missing or holds no study tables, naming it and the fix."""
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: results folder not found; run `make study` first, or "
                                f"name the folder a study wrote (e.g. results/mini)")
    if not any((d / "tables").is_dir() for d in runs(out_dir)):
        raise FileNotFoundError(f"{out_dir}: holds no study tables (no tables/ folder); run "
                                f"`make study` first, or name the folder a study wrote (e.g. "
                                f"results/mini)")


def _markdown(df: pd.DataFrame, digits: int = 1) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if pd.isna(v):
                cells.append("—")
            else:
                cells.append(f"{v:.{digits}f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arms_by_seed(out_dir: Path) -> pd.DataFrame:
    """J&F of every (stage, arm, read) per seed, from each run's ``03_davis16_val.csv``."""
    df = _read_runs(out_dir, "03_davis16_val.csv")
    df["read"] = df.apply(lambda r: "STM read" if pd.isna(r["sigma"]) else f"KM σ={r['sigma']:g}",
                          axis=1)
    wide = df.pivot_table(index=["stage", "pretraining", "read"], columns="seed", values="J&F",
                          sort=False).reset_index()
    wide.columns = [f"seed {c}" if isinstance(c, (int, float)) else c for c in wide.columns]
    return wide


EFFECT_VIEW = ["comparison", "stage", "read", "metric", "seeds", "n_sequences", "mean_diff",
               "ci_low", "ci_high", "mde80", "seed_ci_low", "seed_ci_high", "seed_mde80"]


def effects(out_dir: Path, table: str) -> pd.DataFrame:
    df = _read(out_dir / "tables" / table)
    return df[[c for c in EFFECT_VIEW if c in df.columns]]


def recomputed_effects(out_dir: Path) -> dict[str, pd.DataFrame]:
    """``effects.csv`` and ``07_effects.csv`` recomputed with the current effect function
    (:mod:`kmnlib.study.effects`, seed-level intervals included) from the per-sequence tables of
    ``out_dir`` and its replicates — for results written before a column existed. The
    comparisons are those the notebooks make, with the σ of ``out_dir/profile.json``."""
    import json

    from kmnlib.config import PAPER_SIGMA
    from kmnlib.study import distractors as distractor_tables
    from kmnlib.study import tables

    inference = json.loads((out_dir / "profile.json").read_text())["inference"]
    sigmas = tuple(dict.fromkeys((inference["sigma"], PAPER_SIGMA)))
    val = pd.concat([_read_runs(out_dir, "03_per_sequence.csv"),
                     _read_runs(out_dir, "04_per_sequence.csv")], ignore_index=True)
    stress = _read_runs(out_dir, "07_per_sequence.csv")
    comparisons = distractor_tables.distractor_comparisons(
        sigmas, tuple(inference.get("extension_sigmas") or ()))
    return {"effects.csv": tables.effects(val, tables.val_comparisons(sigmas))[EFFECT_VIEW],
            "07_effects.csv": tables.effects(stress, comparisons)[EFFECT_VIEW]}


def distractors(out_dir: Path) -> pd.DataFrame:
    """Twin / pair J&F and twin leakage per model and read, mean over the seeds found."""
    df = _read_runs(out_dir, "07_distractors.csv")
    df["read"] = df.apply(lambda r: ("oracle, " if r["oracle"] else "")
                          + ("extension, " if r.get("extension", False) else "")
                          + ("STM read" if pd.isna(r["sigma"]) else f"KM σ={r['sigma']:g}"),
                          axis=1)
    agg = df.groupby(["set_name", "pretraining", "read"], sort=False).agg(
        seeds=("seed", "nunique"), jf=("J&F", "mean"), leakage=("leakage", "mean")).reset_index()
    return agg.rename(columns={"jf": "J&F (mean over seeds)", "leakage": "twin leakage %"})


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmnlib.study.summary",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path, help="a finished study's folder, e.g. results/mini")
    ap.add_argument("--recompute-effects", action="store_true",
                    help="recompute the effect tables from the per-sequence tables with the current "
                         "effect function (seed-level intervals for results written before them)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)

    def work() -> int:
        out = args.out_dir.resolve()
        check_study_folder(out)
        arms = arms_by_seed(out)  # before any output: a folder without the table prints nothing
        print(f"## Every arm, DAVIS-16 val J&F (`{out.name}/tables/03_davis16_val.csv` per run)\n")
        print(_markdown(arms))
        fresh = recomputed_effects(out) if args.recompute_effects else {}
        how = ", recomputed from the per-sequence tables" if fresh else ""
        print(f"\n## Effects on DAVIS-16 val (`tables/effects.csv`{how})\n")
        print(_markdown(fresh.get("effects.csv", effects(out, "effects.csv")), 2))
        print("\n## Distractor sets (`tables/07_distractors.csv` per run)\n")
        print(_markdown(distractors(out)))
        print(f"\n## Distractor effects (`tables/07_effects.csv`{how})\n")
        print(_markdown(fresh.get("07_effects.csv", effects(out, "07_effects.csv")), 2))
        for name in ("07_read_at_distractors.csv", "07_logit_gaps.csv"):
            print(f"\n## `tables/{name}`\n")
            print(_markdown(_read(out / "tables" / name), 3))
        return 0

    return run_command(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
