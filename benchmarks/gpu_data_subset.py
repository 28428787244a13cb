"""Copy the part of the shared data that ``gpu_check.py`` reads into one small folder.

    python benchmarks/gpu_data_subset.py --out .gpudata                 # ≈ 40 MB
    python benchmarks/gpu_check.py --data-root .gpudata                  # on the CUDA machine

Why: a device machine receives the working tree only (at most 64 MiB; ``../shared`` does not travel),
so the CUDA check needs its data inside the checkout, in a git-ignored folder named in the run's
``carry``. The subset holds exactly what the check reads: the static sets of
``gpu_check.DATA_OVERRIDES`` (whole), the ``--train-sequences`` smallest DAVIS-2016 train sequences
at 240p (main-stage training), and the first ``--val-frames`` frames of the first ``--val-sequences``
DAVIS-2016 val sequences at 480p (the inference section reads the first 50 of the first 3). The
split files list only the copied sequences, so the readers see a small but complete DAVIS tree.

The folder is built beside ``--out`` and renamed into place when complete; an existing ``--out`` is
refused unless it is a subset this script made (it holds ``SUBSET.md``) and ``--force`` is given.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from gpu_check import DATA_OVERRIDES  # noqa: E402  (benchmarks/ is sys.path[0] for a script)

from kmnlib.config import resolve_data_root  # noqa: E402
from kmnlib.data.davis import read_split, split_file  # noqa: E402

STATIC_SETS: tuple[str, ...] = tuple(DATA_OVERRIDES["static_sets"])
MARKER = "SUBSET.md"


def _sequence_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def build_subset(data_root: Path, out: Path, *, train_sequences: int = 8, val_sequences: int = 3,
                 val_frames: int = 50) -> Path:
    """Write the subset to ``out`` (built in ``out``'s parent, renamed when complete); return ``out``."""
    davis = data_root / "DAVIS-2016"
    train = read_split(davis, "2016", "train")
    val = read_split(davis, "2016", "val")[:val_sequences]
    # The smallest train sequences: the check trains 60 main iterations, any sequences will do.
    train = sorted(train, key=lambda s: _sequence_bytes(davis / "JPEGImages" / "240p" / s))
    train = sorted(train[:train_sequences])
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    split_file(tmp / "DAVIS-2016", "2016", "train").parent.mkdir(parents=True)
    for source in (data_root / "static" / "SOURCE.md", davis / "SOURCE.md"):
        if source.is_file():   # provenance and licence travel with the copies
            (tmp / source.parent.name).mkdir(exist_ok=True)
            shutil.copy2(source, tmp / source.parent.name / "SOURCE.md")
    for name in STATIC_SETS:
        shutil.copytree(data_root / "static" / name, tmp / "static" / name)
    for seq in train:
        for kind in ("JPEGImages", "Annotations"):
            shutil.copytree(davis / kind / "240p" / seq, tmp / "DAVIS-2016" / kind / "240p" / seq)
    for seq in val:
        frames = sorted((davis / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:val_frames]
        for kind, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
            dst = tmp / "DAVIS-2016" / kind / "480p" / seq
            dst.mkdir(parents=True)
            for f in frames:
                shutil.copy2(davis / kind / "480p" / seq / (f.stem + ext), dst)
    split_file(tmp / "DAVIS-2016", "2016", "train").write_text("".join(f"{s}\n" for s in train))
    split_file(tmp / "DAVIS-2016", "2016", "val").write_text("".join(f"{s}\n" for s in val))
    (tmp / MARKER).write_text(
        f"Subset of {data_root} made by benchmarks/gpu_data_subset.py for gpu_check.py.\n"
        f"static: {', '.join(STATIC_SETS)}\nDAVIS-2016 train 240p: {', '.join(train)}\n"
        f"DAVIS-2016 val 480p, first {val_frames} frames: {', '.join(val)}\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="new folder (e.g. .gpudata, git-ignored)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="shared data (default: $KMN_DATA, else data/)")
    ap.add_argument("--train-sequences", type=int, default=8)
    ap.add_argument("--val-sequences", type=int, default=3)
    ap.add_argument("--val-frames", type=int, default=50)
    ap.add_argument("--force", action="store_true", help="replace an earlier subset made by this script")
    args = ap.parse_args(argv)
    for name in ("train_sequences", "val_sequences", "val_frames"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be ≥ 1", file=sys.stderr)
            return 2
    out = args.out.resolve()
    if out.exists() and not (args.force and (out / MARKER).is_file()):
        why = "pass --force to replace it" if (out / MARKER).is_file() else \
            "it was not made by this script; choose another --out"
        print(f"error: {out} exists; {why}", file=sys.stderr)
        return 2
    data_root = resolve_data_root(args.data_root)
    try:
        build_subset(data_root, out, train_sequences=args.train_sequences,
                     val_sequences=args.val_sequences, val_frames=args.val_frames)
    except FileNotFoundError as exc:
        what = f"{exc.filename} is missing" if exc.filename else str(exc).split(" (")[0]
        print(f"error: {what}; point --data-root at the shared data (the folder holding DAVIS-2016/ "
              f"and static/)", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB); name it in the run's carry, "
          f"pass gpu_check.py --data-root {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
