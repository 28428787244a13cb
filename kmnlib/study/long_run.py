"""``python -m kmnlib.study.long_run``: the committed long run measured as notebook 08 measures it.

Writes ``results/mini-long/tables/long_run_val.csv`` (the final model on all of DAVIS-2016 val with
each read) and ``results/mini-long/tables/scale_points.csv`` (its checkpoints on the scale subset,
:func:`kmnlib.study.scale.measure`), reusing the committed evaluations while their run keys hold,
and prints both; ``results/mini-long/provenance.json`` records the code that made the tables (the
training's commands and commits are in ``RUN.md``). Notebook 08 computes the same rows; this
command makes them without a study.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from kmnlib.cli import add_debug_flag, run_command
from kmnlib.denormals import flush_denormals
from kmnlib.files import save_csv
from kmnlib.provenance import provenance, write_provenance
from kmnlib.study import scale
from kmnlib.study.session import resolve_study


def _work(threads: int | None) -> int:
    flush_denormals()
    started = provenance()
    base = resolve_study("mini", {"threads": threads} if threads else {})
    long = scale.long_run_study(base)
    val = scale.long_run_val(long)
    points = scale.measure(long, scale.long_run_points(long))
    tables = long.out_dir / "tables"
    save_csv(val, tables / "long_run_val.csv")
    save_csv(points, tables / "scale_points.csv")
    write_provenance(long.out_dir, started=started)
    print(val.round(3).to_string(index=False))
    print(points.round(3).to_string(index=False))
    print(f"written: {tables / 'long_run_val.csv'}, {tables / 'scale_points.csv'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmnlib.study.long_run",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads per evaluation")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_command(lambda: _work(args.threads), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
