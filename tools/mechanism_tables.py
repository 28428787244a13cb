"""The README's means over seeds of the leak-mechanism tables and of the arms.

Each run writes its own seed's rows of ``07_decoder_swap.csv``, ``07_leak_onset.csv``,
``07_read_in_use.csv``, ``07_clean_control.csv`` and ``07_oracle_strength.csv`` (the pooled
effects with intervals are ``07_mechanism_effects.csv``); this prints their means over the study
folder and its ``-seed<N>`` replicates, per seed where the README quotes it, as Markdown::

    .venv/bin/python tools/mechanism_tables.py results/mini

It lives outside ``kmnlib`` so that the committed results, made before it, still name code that
has not changed since; it reads the tables with ``kmnlib.study.summary``'s readers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from kmnlib.study.summary import _markdown, _read_runs, arms_by_seed, check_study_folder

MODEL_READ = ["model", "read"]


def _per_seed(values: pd.Series) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def arms(out_dir: Path) -> pd.DataFrame:
    """Every arm's J&F per seed with the mean and standard deviation over seeds."""
    wide = arms_by_seed(out_dir)
    seeds = [c for c in wide.columns if c.startswith("seed ")]
    return wide.assign(mean=wide[seeds].mean(axis=1), sd=wide[seeds].std(axis=1, ddof=1))


def decoder_swap(out_dir: Path) -> tuple[pd.DataFrame, float, float, float]:
    """Leakage per swap over the twin region: mean over seeds and per seed; then the largest
    |σ − STM read| difference of a mean and of one seed, and the largest |whole frame − twin
    region| difference of one seed."""
    swap = _read_runs(out_dir, "07_decoder_swap.csv").sort_values("seed")
    cells = ["scope", "readout_from", "query_from"]
    region = swap[swap["swap_over"] == "twin region"]
    table = region.groupby(MODEL_READ + cells, sort=False)["leakage"].agg(
        seeds="size", mean="mean", per_seed=_per_seed).reset_index()
    by_read = region.pivot_table(index=["model"] + cells + ["seed"], columns="read",
                                 values="leakage")
    seed_gap = (by_read.max(axis=1) - by_read.min(axis=1)).max()
    means = by_read.groupby(level=["model"] + cells).mean()
    mean_gap = (means.max(axis=1) - means.min(axis=1)).max()
    by_scope = swap.pivot_table(index=MODEL_READ + cells + ["seed"], columns="swap_over",
                                values="leakage")
    scope_gap = (by_scope.max(axis=1) - by_scope.min(axis=1)).max()
    return table, float(mean_gap), float(seed_gap), float(scope_gap)


def leak_onset(out_dir: Path) -> pd.DataFrame:
    """Leakage at frame 1 (memory = frame 0 only), over all frames and at the last frame, mean
    over seeds, and frame 1's share of the video mean."""
    onset = _read_runs(out_dir, "07_leak_onset.csv")
    per_seed = onset.groupby(MODEL_READ + ["seed"], sort=False).apply(
        lambda r: pd.Series({"frame_1": r.loc[r["frame"] == r["frame"].min(), "leakage"].mean(),
                             "all_frames": r["leakage"].mean(),
                             "last_frame": r.loc[r["frame"] == r["frame"].max(), "leakage"].mean()}),
        include_groups=False).reset_index()
    per_seed["frame_1_share_%"] = 100 * per_seed["frame_1"] / per_seed["all_frames"]
    return per_seed.groupby(MODEL_READ, sort=False).agg(
        seeds=("seed", "nunique"), frame_1=("frame_1", "mean"), all_frames=("all_frames", "mean"),
        last_frame=("last_frame", "mean"), frame_1_share=("frame_1_share_%", "mean"),
        frame_1_per_seed=("frame_1", _per_seed)).reset_index()


def read_in_use(out_dir: Path) -> pd.DataFrame:
    """The read the model uses at twin cells: mean over frames per seed, then mean, min and max
    over seeds."""
    use = _read_runs(out_dir, "07_read_in_use.csv")
    cols = ["weight_on_object", "qhat_on_object", "qhat_on_twin", "qhat_elsewhere", "logit_std",
            "top_gap", "margin_over_penalty"]
    per_seed = use.groupby(MODEL_READ + ["seed"], sort=False)[cols].mean()
    rows = []
    for (model, read), seeds in per_seed.groupby(level=MODEL_READ, sort=False):
        for col in cols:
            rows.append({"model": model, "read": read, "quantity": col, "mean": seeds[col].mean(),
                         "min over seeds": seeds[col].min(), "max over seeds": seeds[col].max()})
    return pd.DataFrame(rows)


def means_over_seeds(out_dir: Path, table: str, by: list[str], values: list[str]) -> pd.DataFrame:
    df = _read_runs(out_dir, table)
    out = df.groupby(by, sort=False)[values].mean().reset_index()
    return out.assign(seeds=df.groupby(by, sort=False)["seed"].nunique().to_numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="a finished study's folder, e.g. results/mini")
    args = parser.parse_args(argv)
    try:
        check_study_folder(args.out_dir)
        swap, mean_gap, seed_gap, scope_gap = decoder_swap(args.out_dir)
        sections = [
            ("Every arm, DAVIS-16 val J&F (03_davis16_val.csv)", _markdown(arms(args.out_dir))),
            ("Decoder-input swap over the twin region, twin leakage % (07_decoder_swap.csv)",
             _markdown(swap) + f"\n\nlargest |σ − STM read|: {mean_gap:.2f} (means), "
             f"{seed_gap:.2f} (one seed); largest |whole frame − twin region|: {scope_gap:.3f}"),
            ("Leak onset, twin leakage % (07_leak_onset.csv)", _markdown(leak_onset(args.out_dir))),
            ("The read in use at twin cells (07_read_in_use.csv)",
             _markdown(read_in_use(args.out_dir), digits=3)),
            ("Clean control (07_clean_control.csv)", _markdown(means_over_seeds(
                args.out_dir, "07_clean_control.csv", MODEL_READ,
                ["J&F", "J&F with twin", "mirrored_fp", "leakage"]))),
            ("Oracle strength (07_oracle_strength.csv)", _markdown(means_over_seeds(
                args.out_dir, "07_oracle_strength.csv", MODEL_READ + ["oracle"],
                ["leakage", "J&F"]))),
        ]
    except FileNotFoundError as err:
        print(f"mechanism_tables: {err}", file=sys.stderr)
        return 2
    print("\n\n".join(f"## {title}\n\n{body}" for title, body in sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
