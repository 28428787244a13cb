"""Whole-video inference benchmark: KM read (sigma=7) over STM read, and s/frame per backbone.

On a DAVIS-2016 val sequence (default ``blackswan``), for each configuration (ResNet-50 at 480p,
EfficientNet-Lite0 at 480p and at 240p; random weights — timing does not depend on them),
``segment_video`` runs with ``sigma=None`` and ``sigma=7`` interleaved (order alternating per
repetition) after an untimed warm-up. s/frame = wall time of ``segment_video`` / number of frames
(frame reading excluded). Printed: s/frame of each read and the KM/STM ratio (goal: <= 1.03; paper,
on a GPU: 0.11 -> 0.12 s/frame).

On a shared CPU whole-video wall times drift by far more than 3% between runs, so a second,
paired estimate is printed too: one more KM run in which every memory read is done twice back to
back (STM and KM, order alternating; the KM result is used), so each frame's two reads see the same
machine load. With W its wall time and R_stm, R_km the summed read times,
``paired ratio = (W - R_stm) / (W - R_km)`` — KM-only time over STM-only time.

    python benchmarks/bench_inference.py --quick               # 4 frames, 1 repetition
    python benchmarks/bench_inference.py                       # whole sequence, 2 repetitions
    python benchmarks/bench_inference.py --configs lite0-240p --frames 20 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from kmnlib.config import MINI, PAPER, resolve_data_root
from kmnlib.data.davis import DAVISDataset
from kmnlib.data.video import frames_to_tensor
from kmnlib.inference import segment_video
from kmnlib.model import network
from kmnlib.model.network import KMN

CONFIGS = {  # name: (model config, frame height; None = native 480p)
    "resnet50-480p": (replace(PAPER.model, pretrained=False), None),
    "lite0-480p": (replace(MINI.model, pretrained=False), None),
    "lite0-240p": (replace(MINI.model, pretrained=False), 240),
}


def load_clip(name: str, n_frames: int | None, height: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    seq = DAVISDataset(resolve_data_root() / "DAVIS-2016", year="2016", split="val",
                       resolution="480p")[name]
    idx = range(len(seq) if n_frames is None else min(n_frames, len(seq)))
    frames = frames_to_tensor(seq.load_frames(idx))
    mask = torch.from_numpy(seq.load_mask(0).astype(np.int64))
    if height is not None:
        size = (height, round(frames.shape[-1] * height / frames.shape[-2]))
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0, 1)
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return frames, mask


def bench(config: str, seq: str, n_frames: int | None, reps: int, mem_every: int) -> dict[str, float]:
    cfg, height = CONFIGS[config]
    torch.manual_seed(0)
    model = KMN(cfg).eval()
    frames, mask = load_clip(seq, n_frames, height)
    segment_video(model, frames[:3], mask, sigma=7.0, mem_every=mem_every)   # warm-up, untimed
    times: dict[str, list[float]] = {"stm": [], "km": []}
    variants = [("stm", None), ("km", 7.0)]
    for rep in range(reps):
        for name, sigma in (variants if rep % 2 == 0 else variants[::-1]):
            start = time.perf_counter()
            segment_video(model, frames, mask, sigma=sigma, mem_every=mem_every)
            times[name].append((time.perf_counter() - start) / len(frames))
    stm, km = statistics.median(times["stm"]), statistics.median(times["km"])
    ratios = [k / s for k, s in zip(times["km"], times["stm"])]
    paired, read_stm, read_km = paired_ratio(model, frames, mask, mem_every)
    print(f"{config:<14} {tuple(frames.shape[-2:])!s:>11} {len(frames):>4} {stm:>9.3f} {km:>9.3f} "
          f"{km / stm:>7.3f} {paired:>7.3f} {read_stm:>8.3f} {read_km:>8.3f}   "
          f"whole-video ratio per rep: {', '.join(f'{r:.3f}' for r in ratios)}", flush=True)
    return {"stm": stm, "km": km, "paired": paired}


def paired_ratio(model: KMN, frames: torch.Tensor, mask: torch.Tensor, mem_every: int
                 ) -> tuple[float, float, float]:
    """(W - R_stm) / (W - R_km) from one run doing both reads per frame; also R_stm, R_km in s/frame."""
    spent = {"stm": 0.0, "km": 0.0}
    original = network.memory_read
    calls = [0]

    def both(mem_key, mem_value, query_key, *, sigma=None):
        order = [("stm", None), ("km", sigma)] if calls[0] % 2 == 0 else [("km", sigma), ("stm", None)]
        calls[0] += 1
        out = None
        for name, s in order:
            start = time.perf_counter()
            r = original(mem_key, mem_value, query_key, sigma=s)
            spent[name] += time.perf_counter() - start
            if name == "km":
                out = r
        return out

    network.memory_read = both  # KMN.segment looks the name up in its module at call time
    try:
        start = time.perf_counter()
        segment_video(model, frames, mask, sigma=7.0, mem_every=mem_every)
        wall = time.perf_counter() - start
    finally:
        network.memory_read = original
    n = len(frames)
    return (wall - spent["stm"]) / (wall - spent["km"]), spent["stm"] / n, spent["km"] / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 frames, 1 repetition")
    ap.add_argument("--sequence", default="blackswan")
    ap.add_argument("--frames", type=int, default=None, help="first N frames (default: all)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--mem-every", type=int, default=PAPER.inference.mem_every)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated of {list(CONFIGS)}")
    args = ap.parse_args()
    n_frames = args.frames if args.frames is not None else (4 if args.quick else None)
    reps = args.reps or (1 if args.quick else 2)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sequence {args.sequence}, "
          f"mem_every {args.mem_every}, median of {reps} interleaved rep(s)")
    print(f"{'config':<14} {'HxW':>11} {'T':>4} {'STM s/f':>9} {'KM s/f':>9} {'KM/STM':>7} "
          f"{'paired':>7} {'read STM':>8} {'read KM':>8}   (s/frame; paired = paired KM/STM estimate)")
    for config in configs:
        bench(config, args.sequence, n_frames, reps, args.mem_every)


if __name__ == "__main__":
    main()
