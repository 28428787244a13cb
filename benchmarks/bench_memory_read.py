"""Memory-read benchmark: KM read vs STM read cost, and peak RSS vs number of memory frames.

Realistic feature sizes: a 480p DAVIS frame padded to 480x864 gives a 30x54 key grid; ResNet-50
widths Ck=128, Cv=512; one object. With STM's schedule (mem_every=5) a 180-frame video holds up
to 180/5+1 = 37 memory frames.

Two measurements, each printed as ratios from one run:

* time: ``memory_read`` with ``sigma=7`` (KM) and ``sigma=None`` (STM), interleaved, per T;
* peak RSS: each (T, variant) in a fresh subprocess (ru_maxrss is a process-lifetime maximum),
  reported next to the RSS before the read, for the chunked read (default byte budget) and the
  unchunked one (whole logits in one pass) for comparison.

    python benchmarks/bench_memory_read.py --quick
    python benchmarks/bench_memory_read.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from kmnlib.memory import memory_read

GRID = (30, 54)       # 480p padded to 480x864, stride 16
KEY_DIM, VALUE_DIM = 128, 512
UNCHUNKED = 1 << 50   # a budget that never splits


def _inputs(t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = GRID
    return (torch.randn(1, KEY_DIM, t, h, w, generator=g), torch.randn(1, VALUE_DIM, t, h, w, generator=g),
            torch.randn(1, KEY_DIM, h, w, generator=g))


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: current, VmHWM: peak) in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS, so the peak seen afterwards is the
    # read's own (not torch's import, which alone holds ~0.7 GiB of the CUDA build).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(t: int, sigma: float | None, budget: int | None) -> None:
    """Run one read in this (fresh) process; print RSS before and the peak during it (MiB), as JSON."""
    mk, mv, qk = _inputs(t)
    with torch.inference_mode():
        memory_read(mk[:, :, :1], mv[:, :, :1], qk, sigma=sigma)   # allocator/oneDNN warm-up
        _reset_peak()
        before = _status_mib("VmRSS")
        memory_read(mk, mv, qk, sigma=sigma, budget_bytes=budget)
        peak = _status_mib("VmHWM")
    print(json.dumps({"before_mib": before, "peak_mib": peak}))


def measure_rss(t: int, sigma: float | None, budget: int | None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(t), str(sigma), str(budget)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_reads(ts: list[int], reps: int) -> None:
    print(f"\n== read time, grid {GRID}, Ck={KEY_DIM}, Cv={VALUE_DIM}, 1 object; "
          f"median of {reps} interleaved reps ==")
    print(f"{'T':>4} {'STM ms':>9} {'KM ms':>9} {'KM/STM':>7}")
    with torch.inference_mode():
        memory_read(*_inputs(1), sigma=7.0)  # warm-up
        for t in ts:
            mk, mv, qk = _inputs(t)
            times: dict[str, list[float]] = {"stm": [], "km": []}
            for rep in range(reps):
                order = [("stm", None), ("km", 7.0)]
                for name, sigma in (order if rep % 2 == 0 else order[::-1]):
                    start = time.perf_counter()
                    memory_read(mk, mv, qk, sigma=sigma)
                    times[name].append(time.perf_counter() - start)
            stm, km = statistics.median(times["stm"]), statistics.median(times["km"])
            print(f"{t:>4} {stm * 1e3:>9.1f} {km * 1e3:>9.1f} {km / stm:>7.3f}", flush=True)


def rss_sweep(ts: list[int]) -> None:
    print("\n== peak RSS of one KM read (sigma=7), fresh process per row, MiB ==")
    print(f"{'T':>4} {'inputs':>8} {'chunked peak':>13} {'read extra':>11} {'unchunked peak':>15} "
          f"{'read extra':>11}")
    for t in ts:
        inputs_mib = (2 * KEY_DIM + VALUE_DIM) * t * GRID[0] * GRID[1] * 4 / 2**20
        c = measure_rss(t, 7.0, None)
        u = measure_rss(t, 7.0, UNCHUNKED)
        print(f"{t:>4} {inputs_mib:>8.0f} {c['peak_mib']:>13.0f} {c['peak_mib'] - c['before_mib']:>11.0f} "
              f"{u['peak_mib']:>15.0f} {u['peak_mib'] - u['before_mib']:>11.0f}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        t, sigma, budget = sys.argv[2:5]
        child(int(t), None if sigma == "None" else float(sigma), None if budget == "None" else int(budget))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few sizes, few repetitions")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        time_ts, rss_ts, reps = [1, 10, 37], [1, 10, 37], args.reps or 3
    else:
        time_ts, rss_ts, reps = [1, 2, 5, 10, 19, 28, 37], [1, 5, 10, 19, 28, 37], args.reps or 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    time_reads(time_ts, reps)
    rss_sweep(rss_ts)


if __name__ == "__main__":
    main()
