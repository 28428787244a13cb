"""Reference baselines that need no model: "copy the first-frame mask to every frame".

    python -m kmnlib.baselines            # DAVIS-2016 val → results/baselines/first-frame-copy/

It writes ``<out>/<sequence>/<frame>.png`` for every frame and then evaluates them with
:func:`kmnlib.evaluate.evaluate_davis`, writing the CSVs into the parent of ``<out>``.
The numbers say how much of a sequence a static object already explains: any method below them
has learned nothing about motion.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kmnlib.cli import add_debug_flag, check_output_dir, positive_int, run_command
from kmnlib.config import resolve_data_root, results_root
from kmnlib.data.davis import YEARS, read_split, split_file
from kmnlib.data.masks import VOID, write_label_map
from kmnlib.data.video import select_sequences
from kmnlib.evaluate import (GLOBAL_CSV, SEQUENCE_CSV, annotation_paths, evaluate_davis,
                             print_tables, read_ground_truth)
from kmnlib.files import DiskFullError, disk_full_is_one_line
from kmnlib.provenance import write_provenance

__all__ = ["first_frame_copy", "main"]


def _frame_names(davis_root: Path, sequence: str, resolution: str,
                 gt_paths: list[Path]) -> list[str]:
    # Every video frame gets a mask; frames are the JPEGs (YouTube-style sparse annotations would
    # otherwise leave holes). Fall back to the annotation names if the JPEG folder is absent.
    jpgs = sorted((davis_root / "JPEGImages" / resolution / sequence).glob("*.jpg"))
    return [p.stem for p in jpgs] if jpgs else [p.stem for p in gt_paths]


def first_frame_copy(davis_root: str | os.PathLike, out_dir: str | os.PathLike, year: str = "2016",
                     split: str = "val", resolution: str = "480p",
                     sequences: Sequence[str] | None = None) -> list[str]:
    """Write the first annotation of each sequence as the mask of every frame; return the sequences.

    Masks are DAVIS-palette PNGs ``out_dir/<sequence>/<frame>.png`` (written atomically); void
    (255) in the first annotation becomes background, since a prediction never claims void.
    """
    davis_root = Path(davis_root)
    out_dir = check_output_dir(out_dir, argument="out_dir", inputs=[davis_root])
    names = select_sequences(read_split(davis_root, year, split), sequences,
                             str(split_file(davis_root, year, split)))
    for seq in names:
        gt_paths = annotation_paths(davis_root, seq, resolution)
        first = read_ground_truth(gt_paths[0], year)  # 2016: 0/1, 0/255 or palette → object 1
        first = np.where(first == VOID, 0, first).astype(np.uint8)
        with disk_full_is_one_line(out_dir):
            for frame in _frame_names(davis_root, seq, resolution, gt_paths):
                write_label_map(out_dir / seq / f"{frame}.png", first)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    default_out = results_root() / "baselines" / "first-frame-copy" / "masks"
    p = argparse.ArgumentParser(prog="python -m kmnlib.baselines",
                                description="first-frame-copy baseline on DAVIS, then its evaluation")
    p.add_argument("--davis", default=None, help="DAVIS root (default: <data root>/DAVIS-<year>)")
    p.add_argument("--year", choices=YEARS, default="2016")
    p.add_argument("--split", default="val")
    p.add_argument("--resolution", default="480p")
    p.add_argument("--out", default=str(default_out), help="folder for the result masks")
    p.add_argument("--eval-out", default=None, help="folder for the CSVs (default: parent of --out)")
    p.add_argument("--workers", type=positive_int, default=1, help="evaluation processes")
    add_debug_flag(p)
    args = p.parse_args(argv)

    def work() -> int:
        davis = Path(args.davis) if args.davis else resolve_data_root() / f"DAVIS-{args.year}"
        # Refused before anything is written: an output inside the data would overwrite it.
        out = check_output_dir(args.out, argument="--out", inputs=[davis])
        eval_out = check_output_dir(args.eval_out or out.parent, argument="--eval-out",
                                    inputs=[davis])
        t0 = time.perf_counter()
        names = first_frame_copy(davis, out, args.year, args.split, args.resolution)
        t1 = time.perf_counter()
        g, s = evaluate_davis(davis, out, args.year, args.split, out_dir=eval_out,
                              resolution=args.resolution, workers=args.workers)
        t2 = time.perf_counter()
        write_provenance(eval_out)
        print(f"first-frame-copy on DAVIS-{args.year} {args.split} ({len(names)} sequences)\n")
        print_tables(g, s, args.split)
        print(f"\nmasks: {out}  ({t1 - t0:.1f} s)\ntables: {eval_out / GLOBAL_CSV}, "
              f"{eval_out / SEQUENCE_CSV}  (evaluation {t2 - t1:.1f} s)")
        return 0

    return run_command(work, debug=args.debug, extra_errors=(DiskFullError,))


if __name__ == "__main__":
    sys.exit(main())
