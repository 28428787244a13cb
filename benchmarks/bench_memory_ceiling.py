"""Whole-video memory ceiling: peak RSS of inference + evaluation of one long 480p video.

A 180-frame video is built by looping a shared DAVIS-2016 val sequence back and forth (frames and
ground truth linked into a temporary DAVIS layout), then segmented with the kernel read (σ = 7) by
``kmnlib.predict.run_dataset`` (results written at 480p) and scored by
``kmnlib.evaluate.evaluate_davis`` — in a fresh process per case, whose peak resident set size
(``ru_maxrss``) is the figure. Cases: ResNet-50 (STM widths) and EfficientNet-Lite0 (mini widths),
at 45, 90 and 180 frames, so that growth with the number of memory frames (every 5th frame stays
in memory: 10, 19, 37 of them) shows. Goal: ≤ 2 GiB at 180 frames, growing at most linearly.

    python benchmarks/bench_memory_ceiling.py                   # both backbones, 45/90/180 frames
    python benchmarks/bench_memory_ceiling.py --frames 180 --configs lite0
    python benchmarks/bench_memory_ceiling.py --frames 180 --configs resnet50 --phases  # where it peaks
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIGS = ("resnet50", "lite0")


def build_looped(davis16: Path, sequence: str, n_frames: int, root: Path) -> None:
    """``root`` as a DAVIS-2016 layout holding one video: ``sequence`` looped back and forth."""
    src_j = sorted((davis16 / "JPEGImages" / "480p" / sequence).glob("*.jpg"))
    src_a = sorted((davis16 / "Annotations" / "480p" / sequence).glob("*.png"))
    order = list(range(len(src_j))) + list(range(len(src_j) - 2, 0, -1))
    for kind, src, ext in (("JPEGImages", src_j, "jpg"), ("Annotations", src_a, "png")):
        folder = root / kind / "480p" / "looped"
        folder.mkdir(parents=True)
        for t in range(n_frames):
            (folder / f"{t:05d}.{ext}").symlink_to(src[order[t % len(order)]])
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("looped\n")


class PhasePeaks:
    """Peak RSS per phase of this process: a thread samples VmRSS every 10 ms and charges it to
    the phase named last (``enter``), so a figure says *where* the process peaked."""

    def __init__(self) -> None:
        self.phase, self.peaks = "start-up", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), kib / 2**20)   # GiB

    def enter(self, phase: str) -> None:
        self.phase = phase

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def child(config: str, n_frames: int, sequence: str, phases: bool = False) -> dict:
    """Runs in a fresh process: inference + evaluation of the looped video; returns the figures
    (with ``phases``, also the peak RSS of each phase, GiB)."""
    import torch
    from dataclasses import replace

    import kmnlib.predict
    from kmnlib.config import MINI, PAPER, resolve_data_root
    from kmnlib.data import DAVISDataset
    from kmnlib.denormals import flush_denormals
    from kmnlib.evaluate import evaluate_davis
    from kmnlib.memory_bank import memory_schedule
    from kmnlib.model import build_model, prepare_for_inference
    from kmnlib.predict import run_dataset

    torch.set_num_threads(2)
    flush_denormals()   # an entry point (a fresh process), as the study's evaluations run
    sampler = PhasePeaks() if phases else None
    if sampler is not None:   # run_dataset = read the video, segment_video, write the label maps
        segment = kmnlib.predict.segment_video

        def timed_segment(*args, **kwargs):
            sampler.enter("segment_video")
            try:
                return segment(*args, **kwargs)
            finally:
                sampler.enter("write label maps")
        kmnlib.predict.segment_video = timed_segment
    cfg = replace((PAPER if config == "resnet50" else MINI).model, pretrained=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "DAVIS-2016"
        build_looped(resolve_data_root() / "DAVIS-2016", sequence, n_frames, root)
        ds = DAVISDataset(root, "2016", "val", "480p")
        torch.manual_seed(0)
        if sampler is not None:
            sampler.enter("build model")
        # As the study's load_model(..., inference=profile.inference): fp32, folded and Winograd,
        # in place (one network in memory).
        model = prepare_for_inference(build_model(cfg), PAPER.inference, in_place=True)
        start = time.perf_counter()
        run_dataset(model, ds, Path(tmp) / "masks", sigma=7.0, mem_every=5, infer_height=None,
                    resolution_out="gt")
        infer_s = time.perf_counter() - start
        if sampler is not None:
            sampler.enter("evaluate_davis")
        evaluate_davis(root, Path(tmp) / "masks", "2016", "val")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    memory_frames = max(len(frames) for frames in memory_schedule(n_frames, 5))
    out = {"config": config, "frames": n_frames, "memory_frames": memory_frames,
           "peak_rss_gib": peak / 2**30, "s_per_frame": infer_s / n_frames}
    if sampler is not None:
        out["phases"] = sampler.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--frames", nargs="+", type=int, default=[45, 90, 180])
    ap.add_argument("--sequence", default="blackswan")
    ap.add_argument("--phases", action="store_true",
                    help="also print each row's peak RSS per phase (VmRSS sampled every 10 ms)")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.sequence, args.phases)))
        return
    print(f"{'config':<9} {'frames':>6} {'memory frames':>13} {'peak RSS GiB':>12} {'s/frame':>8}")
    for config in args.configs:
        for n in args.frames:
            out = subprocess.run([sys.executable, __file__, "--child", config, str(n),
                                  "--sequence", args.sequence] + ["--phases"] * args.phases,
                                 capture_output=True, text=True, env=dict(os.environ), check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['config']:<9} {r['frames']:>6} {r['memory_frames']:>13} "
                  f"{r['peak_rss_gib']:>12.2f} {r['s_per_frame']:>8.3f}", flush=True)
            if args.phases:
                print("          peak RSS GiB by phase: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in r["phases"].items()), flush=True)


if __name__ == "__main__":
    main()
