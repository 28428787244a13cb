"""Winograd F(4×4, 3×3) against oneDNN's direct convolution, layer by layer, on the real shapes.

For each configuration (as ``bench_inference.py``: ResNet-50 with STM's widths at 480p, Lite0 with
the mini widths at 480p and 240p), every 3×3 stride-1 convolution of the inference network
(``kmnlib.model.winograd.eligible`` at any width) is timed on the input size it sees on a DAVIS
frame: direct (``F.conv2d``, channels-last, as the fast path runs it) and
``winograd_conv3x3``, interleaved, median of the paired ratios over ``--reps``. Also printed: the
relative error of each against a float64 convolution (max |Δ| / max |reference|), and which layers
``winograd_convolutions`` converts at its ``MIN_CHANNELS``.

    python benchmarks/bench_winograd.py --threads 2
    python benchmarks/bench_winograd.py --threads 2 --configs resnet50-480p --reps 9
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from kmnlib.denormals import flush_denormals
from kmnlib.inference import segment_video
from kmnlib.model.winograd import MIN_CHANNELS, eligible, winograd_conv3x3

from bench_inference import CONFIGS, load_clip, variants  # noqa: E402  (benchmarks/ on sys.path)


def layer_inputs(config: str) -> list[tuple[str, torch.nn.Conv2d, torch.Size]]:
    """(name, convolution, input shape) of every eligible convolution, once per distinct shape."""
    frames, mask = load_clip("blackswan", 2, CONFIGS[config][1])
    model = variants(config, None)["direct"][0]    # folded, channels-last, nothing converted yet
    seen: dict[tuple[str, torch.Size], torch.nn.Conv2d] = {}

    def record(name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            seen.setdefault((name, inputs[0].shape), module)
        return hook

    hooks = [m.register_forward_hook(record(name))
             for name, m in model.named_modules() if eligible(m, min_channels=1)]
    with torch.no_grad():
        segment_video(model, frames, mask, sigma=None, mem_every=5)
    for h in hooks:
        h.remove()
    return [(name, conv, shape) for (name, shape), conv in seen.items()]


def compare(conv: torch.nn.Conv2d, shape: torch.Size, reps: int) -> tuple[float, float, float, float]:
    """(direct ms, Winograd ms, median paired ratio direct/Winograd, Winograd rel. error / direct's)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).relu().contiguous(memory_format=torch.channels_last)
    w, b = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    with torch.no_grad():
        ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
        scale = float(ref.abs().max())
        direct = F.conv2d(x, w, b, padding=1)
        wino = winograd_conv3x3(x, w, b)
        err_d = float((direct - ref).abs().max()) / scale
        err_w = float((wino - ref).abs().max()) / scale
        td, tw = [], []
        for rep in range(reps):
            pair = [("d", lambda: F.conv2d(x, w, b, padding=1)), ("w", lambda: winograd_conv3x3(x, w, b))]
            for kind, fn in (pair if rep % 2 == 0 else pair[::-1]):
                start = time.perf_counter()
                fn()
                (td if kind == "d" else tw).append(time.perf_counter() - start)
    ratio = statistics.median(d / v for d, v in zip(td, tw))
    return 1e3 * statistics.median(td), 1e3 * statistics.median(tw), ratio, err_w / max(err_d, 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated of {list(CONFIGS)}")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    flush_denormals(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.reps} "
          f"interleaved pairs; converted = min(in, out) ≥ MIN_CHANNELS = {MIN_CHANNELS}")
    for config in configs:
        print(f"{config}")
        for name, conv, shape in layer_inputs(config):
            d, w, ratio, err = compare(conv, shape, args.reps)
            mark = "converted" if eligible(conv, MIN_CHANNELS) else "direct"
            print(f"    {name:<36} {conv.in_channels:>5}→{conv.out_channels:<5} "
                  f"{shape[-2]:>4}×{shape[-1]:<4} direct {d:7.2f} ms  Winograd {w:7.2f} ms  "
                  f"ratio {ratio:5.2f}  error ×{err:4.1f} of direct  {mark}", flush=True)


if __name__ == "__main__":
    main()
