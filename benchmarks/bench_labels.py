"""Label maps from probabilities: ``torch.argmax`` over the channel axis vs ``labels_from_probs``.

    python benchmarks/bench_labels.py [--frames 75] [--height 480] [--width 854] [--threads 1]

Times both on a (T, 2, H, W) float32 tensor (one object + background, the DAVIS-2016 case; default
the size of a 75-frame 480p video), checks they give the same labels, and prints the ratio measured
in this one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmnlib.inference import labels_from_probs  # noqa: E402


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=75)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    probs = torch.rand(args.frames, args.channels, args.height, args.width,
                       generator=torch.Generator().manual_seed(0))
    same = torch.equal(probs.argmax(dim=1).to(torch.uint8), labels_from_probs(probs))
    t_argmax = _time(lambda: probs.argmax(dim=1), args.reps)
    t_ours = _time(lambda: labels_from_probs(probs), args.reps)
    print(f"torch {torch.__version__}, {args.threads} thread(s), probs {tuple(probs.shape)}, "
          f"median of {args.reps}")
    print(f"argmax(dim=1) {t_argmax:.3f} s   labels_from_probs {t_ours:.3f} s   "
          f"ratio {t_argmax / t_ours:.1f}   same labels: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
