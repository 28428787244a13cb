"""Semi-supervised DAVIS evaluation of a folder of result PNGs (official toolkit protocol).

    python -m kmnlib.evaluate --davis data/DAVIS-2016 --year 2016 --split val \\
        --results results/mini/kmn/masks --out results/mini/kmn

Results are ``<results>/<sequence>/<frame>.png`` (palette ids, or L-mode 0/255 for one object).
DAVIS-2016 ground truth may be 0/255 (official), 0/1 (8- or 16-bit) or palette masks
(:func:`kmnlib.data.masks.read_davis2016_mask` has the rule); DAVIS-2017 palette or grey ids.
Per sequence, the first and the last annotated frame are left out (the first is given to the
method, the toolkit drops the last too); every ground-truth object is scored per frame with J and F
(:mod:`kmnlib.metrics`) and summarised with :func:`kmnlib.metrics.sequence_stats`. The global row
is the mean over objects; ``J&F-Mean`` = (J-Mean + F-Mean) / 2. CSVs are written as the toolkit
writes them (``%.3f``), atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kmnlib.cli import add_debug_flag, check_output_dir, positive_int, run_command
from kmnlib.data.davis import YEARS, read_split, split_file
from kmnlib.data.masks import VOID, read_davis2016_mask, read_label_map
from kmnlib.data.video import select_sequences
from kmnlib.files import DiskFullError, atomic_write, disk_full_is_one_line
from kmnlib.metrics import boundary_f, jaccard, sequence_stats

__all__ = [
    "GLOBAL_COLUMNS", "SEQUENCE_COLUMNS", "GLOBAL_CSV", "SEQUENCE_CSV", "ObjectScores",
    "annotation_paths", "read_ground_truth", "evaluate_sequence", "evaluate_davis", "print_tables",
    "main",
]

GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]
GLOBAL_CSV = "global_results.csv"
SEQUENCE_CSV = "per-sequence_results.csv"


@dataclass
class ObjectScores:
    """Per-frame scores of one ground-truth object of one sequence (evaluated frames only)."""

    sequence: str
    object_id: int
    frames: list[str]
    j: np.ndarray  # (T,) float64
    f: np.ndarray  # (T,) float64

    @property
    def name(self) -> str:
        """The toolkit's row name, ``<sequence>_<object id>``."""
        return f"{self.sequence}_{self.object_id}"


# ----------------------------------------------------------------------------------- dataset files
def annotation_paths(davis_root: str | os.PathLike, sequence: str,
                     resolution: str = "480p") -> list[Path]:
    """Sorted ground-truth PNGs ``Annotations/<resolution>/<sequence>/*.png``.

    A missing folder names the sequence with ``repr`` (a stray character in the split list shows);
    a folder that cannot be read says so, rather than that it holds no annotations.
    """
    folder = Path(davis_root) / "Annotations" / resolution / sequence
    try:
        with os.scandir(folder) as entries:
            paths = sorted(Path(e.path) for e in entries
                           if e.name.endswith(".png") and not e.name.startswith("."))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: ground-truth folder of sequence {sequence!r} not found "
                                f"(is the name in the split list spelled as the folder, and is "
                                f"--resolution {resolution!r} right?)") from None
    except PermissionError:
        raise PermissionError(f"{folder}: ground-truth folder cannot be read (permission denied); "
                              f"give read access to it (chmod -R a+rX) and run again") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"{folder}: is a file, not the ground-truth folder of sequence "
                                 f"{sequence!r}") from None
    if not paths:
        raise FileNotFoundError(f"{folder}: no ground-truth annotations (*.png) found")
    return paths


def read_ground_truth(path: Path, year: str) -> np.ndarray:
    """A ground-truth label map: DAVIS-2016 as {0 background, 1 object, 255 void} whatever its
    encoding (:func:`kmnlib.data.masks.read_davis2016_mask`), DAVIS-2017 ids as stored (0/255 grey:
    one object)."""
    return read_davis2016_mask(path) if str(year) == "2016" else read_label_map(path)


def _same_aspect(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether ``size`` (H,W) is ``other`` scaled by one factor, to a pixel of rounding a side."""
    (h, w), (gh, gw) = size, other
    low = max((h - 1) / gh, (w - 1) / gw)
    high = min((h + 1) / gh, (w + 1) / gw)
    return low <= high


# ------------------------------------------------------------------------------------- scoring
def _read_result(path: Path, gt_shape: tuple[int, int], gt_path: Path, resize: bool,
                 n_objects: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: result mask missing (every annotated frame except the "
                                f"first and last needs one, named as {gt_path.name})")
    labels = read_label_map(path)
    # As the official DAVIS-2017 evaluation: a result may only hold 0..N (N objects); void (255)
    # or other values mean a broken file — most often a 0/255 mask resized with interpolation,
    # whose grey edge values would silently be scored as background.
    if (bad := np.unique(labels[labels > n_objects])).size:
        shown = ", ".join(str(int(v)) for v in bad[:6]) + (" …" if bad.size > 6 else "")
        raise ValueError(f"{path}: holds id(s) {shown} but the sequence has {n_objects} "
                         f"object(s) (ids 0..{n_objects}); a mask resized with interpolation has "
                         f"such grey values — resize masks nearest-neighbour and write ids (or "
                         f"0/255 for one object)")
    if labels.shape != gt_shape:
        # Another aspect ratio (transposed, cropped, square) is a wrong mask, not a scaled one:
        # stretching it would score a distorted mask, so no flag lets it through.
        if not _same_aspect(labels.shape, gt_shape):
            raise ValueError(f"{path}: result size {labels.shape[1]}x{labels.shape[0]} has another "
                             f"aspect ratio than the ground truth {gt_shape[1]}x{gt_shape[0]} "
                             f"({gt_path}); --resize-results only rescales uniformly — write the "
                             f"result at the ground-truth size or a scaled copy of it (e.g. "
                             f"{round(gt_shape[1] / 2)}x{round(gt_shape[0] / 2)}), not transposed "
                             f"or cropped")
        if not resize:
            raise ValueError(f"{path}: result size {labels.shape[1]}x{labels.shape[0]} differs from "
                             f"the ground truth {gt_shape[1]}x{gt_shape[0]} ({gt_path}); pass "
                             f"--resize-results (resize_results=True) to upsample nearest-neighbour")
        # PIL's NEAREST samples pixel centres, so a 2x upsample repeats each pixel exactly.
        im = Image.fromarray(labels).resize((gt_shape[1], gt_shape[0]), Image.Resampling.NEAREST)
        labels = np.asarray(im)
    return labels


_FRAMES_PER_BLOCK = 16


def evaluate_sequence(davis_root: str | os.PathLike, results_dir: str | os.PathLike, sequence: str,
                      year: str = "2016", resolution: str = "480p",
                      resize_results: bool = False) -> list[ObjectScores]:
    """Per-frame J and F for every ground-truth object of one sequence.

    Objects are 1..max id of the first annotation. DAVIS 2016 has one object: every non-zero,
    non-void GT pixel (the 2016 protocol merges objects), scored against result id 1 (a 0/255
    grey result reads as id 1). A result that lacks an object scores 0 on it (J=0, F=0 unless the
    object is absent from the GT frame too); result ids the GT does not have are ignored. Pixels
    labelled 255 in the GT (void) are excluded from J and F.
    """
    gt_paths = annotation_paths(davis_root, sequence, resolution)
    if len(gt_paths) < 3:
        raise ValueError(f"{gt_paths[0].parent}: {len(gt_paths)} annotated frame(s); the protocol "
                         f"scores frames between the first and the last, so at least 3 are needed")
    single = str(year) == "2016"
    first = read_ground_truth(gt_paths[0], year)
    n_objects = 1 if single else int(np.max(np.where(first == VOID, 0, first)))
    object_ids = list(range(1, n_objects + 1))
    eval_paths = gt_paths[1:-1]  # semi-supervised protocol: drop the first and the last frame
    res_dir = Path(results_dir) / sequence
    j: dict[int, list[np.ndarray]] = {k: [] for k in object_ids}
    f: dict[int, list[np.ndarray]] = {k: [] for k in object_ids}
    # A block of frames at a time: J and F are per frame, and a long video's masks, stacked whole,
    # were most of an evaluation's memory (benchmarks/bench_memory_ceiling.py --phases).
    for start in range(0, len(eval_paths), _FRAMES_PER_BLOCK):
        block = eval_paths[start:start + _FRAMES_PER_BLOCK]
        gt_list = [read_ground_truth(p, year) for p in block]
        for p, g in zip(block, gt_list):
            if g.shape != first.shape:
                raise ValueError(f"{p}: ground-truth size {g.shape[1]}x{g.shape[0]} differs from "
                                 f"the first frame's {first.shape[1]}x{first.shape[0]}")
        gt = np.stack(gt_list)
        del gt_list
        res = np.stack([_read_result(res_dir / p.name, first.shape, p, resize_results, n_objects)
                        for p in block])
        void = gt == VOID
        void = void if void.any() else None
        for k in object_ids:
            gt_k = ((gt != 0) & (gt != VOID)) if single else gt == k
            res_k = res == k
            j[k].append(np.atleast_1d(jaccard(gt_k, res_k, void)))
            f[k].append(np.atleast_1d(boundary_f(gt_k, res_k, void)))
    frames = [p.stem for p in eval_paths]
    return [ObjectScores(sequence, k, frames, np.concatenate(j[k]), np.concatenate(f[k]))
            for k in object_ids]


def _evaluate_one(args: tuple) -> list[ObjectScores]:
    return evaluate_sequence(*args)


def _tables(scores: list[ObjectScores]) -> tuple[pd.DataFrame, pd.DataFrame]:
    j_stats = np.array([sequence_stats(o.j) for o in scores])  # (objects, 3): mean, recall, decay
    f_stats = np.array([sequence_stats(o.f) for o in scores])
    jm, jr, jd = j_stats.T
    fm, fr, fd = f_stats.T
    g = [(np.mean(jm) + np.mean(fm)) / 2.0, np.mean(jm), np.mean(jr), np.mean(jd),
         np.mean(fm), np.mean(fr), np.mean(fd)]
    global_df = pd.DataFrame([g], columns=GLOBAL_COLUMNS)
    per_seq_df = pd.DataFrame({"Sequence": [s.name for s in scores], "J-Mean": jm, "F-Mean": fm},
                              columns=SEQUENCE_COLUMNS)
    return global_df, per_seq_df


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    # The toolkit writes "%.3f".
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.3f"))


def evaluate_davis(davis_root: str | os.PathLike, results_dir: str | os.PathLike,
                   year: str = "2016", split: str = "val", out_dir: str | os.PathLike | None = None,
                   sequences: Sequence[str] | None = None, resolution: str = "480p", *,
                   resize_results: bool = False, workers: int = 1,
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate a result folder on a DAVIS split; return (global_df, per_seq_df).

    ``global_df``: one row, columns :data:`GLOBAL_COLUMNS`; ``per_seq_df``: one row per object
    (``<seq>_<id>``), columns :data:`SEQUENCE_COLUMNS`; full precision. With ``out_dir`` the two
    tables are also written there as ``global_results.csv`` / ``per-sequence_results.csv``.
    ``sequences`` restricts the split's list (names must belong to it). ``workers`` > 1 spreads
    sequences over processes.
    """
    year = str(year)
    if year not in YEARS:
        raise ValueError(f"unsupported DAVIS year {year!r}; expected one of {YEARS}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: results folder not found")
    if out_dir is not None:
        out_dir = check_output_dir(out_dir, argument="out_dir", inputs=[davis_root])
    names = select_sequences(read_split(davis_root, year, split), sequences,
                             str(split_file(davis_root, year, split)))
    jobs = [(davis_root, results_dir, s, year, resolution, resize_results) for s in names]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            per_seq = list(pool.map(_evaluate_one, jobs))
    else:
        per_seq = [_evaluate_one(j) for j in jobs]
    scores = [o for seq in per_seq for o in seq]
    if not scores:
        raise ValueError(f"{davis_root}: no objects to evaluate in DAVIS-{year} {split}")
    global_df, per_seq_df = _tables(scores)
    if out_dir is not None:
        with disk_full_is_one_line(out_dir):
            _write_csv_atomic(global_df, out_dir / GLOBAL_CSV)
            _write_csv_atomic(per_seq_df, out_dir / SEQUENCE_CSV)
    return global_df, per_seq_df


# ----------------------------------------------------------------------------------------- CLI
def print_tables(global_df: pd.DataFrame, per_seq_df: pd.DataFrame, split: str = "val",
                 file=None) -> None:
    """Print both tables the way the toolkit's evaluation script does (3 decimals)."""
    file = file or sys.stdout
    fmt = "{:.3f}".format
    print(f"--------------------------- Global results for {split} ---------------------------",
          file=file)
    print(global_df.to_string(index=False, float_format=fmt), file=file)
    print(f"\n---------- Per sequence results for {split} ----------", file=file)
    print(per_seq_df.to_string(index=False, float_format=fmt), file=file)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kmnlib.evaluate",
                                description=__doc__.split("\n")[0])
    p.add_argument("--davis", required=True, help="DAVIS root (holds ImageSets/, Annotations/)")
    p.add_argument("--year", choices=YEARS, default="2016")
    p.add_argument("--split", default="val")
    p.add_argument("--results", required=True, help="folder of <sequence>/<frame>.png results")
    p.add_argument("--out", default=None, help="folder for the two CSVs (default: --results)")
    p.add_argument("--resolution", default="480p", help="ground-truth resolution folder")
    p.add_argument("--sequences", nargs="+", default=None, help="evaluate only these sequences")
    p.add_argument("--resize-results", action="store_true",
                   help="nearest-neighbour rescale results whose size differs from the GT "
                        "(same aspect ratio only)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes over sequences")
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        t0 = time.perf_counter()
        out = check_output_dir(args.out or args.results, argument="--out", inputs=[args.davis])
        g, s = evaluate_davis(args.davis, args.results, args.year, args.split, out_dir=out,
                              sequences=args.sequences, resolution=args.resolution,
                              resize_results=args.resize_results, workers=args.workers)
        print_tables(g, s, args.split)
        print(f"\nwrote {out / GLOBAL_CSV} and {out / SEQUENCE_CSV} "
              f"({time.perf_counter() - t0:.1f} s)")
        return 0

    return run_command(work, debug=args.debug, extra_errors=(DiskFullError,))


if __name__ == "__main__":
    sys.exit(main())
