"""Whole-video inference: the optimised path against the reference path, and the kernel's cost.

On a DAVIS-2016 val sequence (default ``blackswan``), for each configuration (ResNet-50 with STM's
widths at 480p, EfficientNet-Lite0 with the mini widths at 480p and at 240p), ``segment_video``
runs in these variants, interleaved (order rotating per repetition) after an untimed warm-up, each
with STM's read and with the kernel (σ = 7):

* ``reference`` — the network as built before the speed work: contiguous weights, BatchNorm
  separate, float32, subnormal floats computed as such, and the memory read as it was
  (``bench_memory_read.read_before``: ``exp`` of unclamped logits, the kernel as one ``baddbmm``);
* ``direct``    — channels-last weights, BatchNorm folded into the convolutions, subnormals flushed
  to zero in every thread (``kmnlib.denormals.flush_denormals``), the current read, float32;
* ``fast``      — the same with the wide 3×3 convolutions as Winograd F(4×4, 3×3)
  (``kmnlib.model.winograd``): the network ``kmnlib.model.prepare_for_inference`` builds
  for float32 on CPU (probabilities equal the reference's to ≤ 1e-4, printed as ``max|Δp|``);
* ``fast+bf16`` — the same under bfloat16 autocast (``InferenceConfig.precision``; the mini study's
  setting), where the convolutions run directly (AMX) and Winograd stands aside.

Weights: random (BatchNorm statistics drawn as trained ones look), or, for the Lite0 configs, a
trained mini checkpoint with ``--checkpoint`` — trained weights hold subnormal values that random
ones do not, so the flush only shows with them.

Printed: s/frame (median over repetitions) of every variant and read, ``speed-up`` = reference /
variant (STM read), the KM/STM ratio of each variant, and a paired KM/STM estimate of the fast
variant (one run doing both reads per frame, so each frame's two reads see the same machine load:
``(W − R_stm) / (W − R_km)``).

    python benchmarks/bench_inference.py --quick                    # 4 frames, 1 repetition
    python benchmarks/bench_inference.py --threads 2                # whole sequence, 3 reps
    python benchmarks/bench_inference.py --configs lite0-240p --frames 20 --reps 3 \
        --checkpoint results/mini/checkpoints/main_from_pretrain.pt
    python benchmarks/bench_inference.py --breakdown --frames 15      # where a frame's time goes
    python benchmarks/bench_inference.py --kernel-cost --frames 30 --reps 3   # the kernel's cost
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmnlib.checkpoints import load_model
from kmnlib.config import MINI, PAPER, InferenceConfig, resolve_data_root
from kmnlib.data.davis import DAVISDataset
from kmnlib.data.video import frames_to_tensor
from kmnlib.denormals import flush_denormals
from kmnlib.inference import segment_video
from kmnlib.model import build_model, prepare_for_inference
from kmnlib.model.ops import resize_frames, resize_labels
from kmnlib.read_backends import native

from bench_memory_read import memory_read_replaced, read_before  # noqa: E402  (benchmarks/ on sys.path)

CONFIGS = {  # name: (model config, frame height; None = native 480p)
    "resnet50-480p": (replace(PAPER.model, pretrained=False), None),
    "lite0-480p": (replace(MINI.model, pretrained=False), None),
    "lite0-240p": (replace(MINI.model, pretrained=False), 240),
    "resnet50-240p": (replace(PAPER.model, pretrained=False), 240),
}
SIGMA = 7.0


def load_clip(name: str, n_frames: int | None, height: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    seq = DAVISDataset(resolve_data_root() / "DAVIS-2016", year="2016", split="val",
                       resolution="480p")[name]
    idx = range(len(seq) if n_frames is None else min(n_frames, len(seq)))
    frames = frames_to_tensor(seq.load_frames(idx))
    mask = torch.from_numpy(seq.load_mask(0).astype(np.int64))
    if height is not None:
        frames = resize_frames(frames, height)
        mask = resize_labels(mask, tuple(frames.shape[-2:]))
    return frames, mask


Variant = tuple[torch.nn.Module, bool, bool, bool]  # (model, bf16 autocast, flush subnormals, old read)


def variants(config: str, checkpoint: Path | None) -> dict[str, Variant]:
    """name → (model, bf16 autocast, flush subnormals, the read before issue 10)."""
    cfg, _ = CONFIGS[config]
    torch.manual_seed(0)
    reference = build_model(replace(cfg, memory_format="contiguous")).eval()
    if checkpoint is not None:
        trained = load_model(checkpoint, inference=None)   # as trained: the reference's weights
        if trained.cfg.backbone != cfg.backbone:
            raise SystemExit(f"error: --checkpoint {checkpoint}: a {trained.cfg.backbone} "
                             f"network, config {config} needs {cfg.backbone}")
        reference = build_model(replace(trained.cfg, pretrained=False,
                                        memory_format="contiguous")).eval()
        reference.load_state_dict(trained.state_dict())
    else:
        with torch.no_grad():  # BatchNorm statistics as trained weights have (not 0 / 1)
            g = torch.Generator().manual_seed(1)
            for m in reference.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
    cl = build_model(replace(reference.cfg, memory_format="channels_last"))
    cl.load_state_dict(reference.state_dict())
    direct = prepare_for_inference(cl, InferenceConfig(winograd=False))
    fast = prepare_for_inference(cl, InferenceConfig(winograd=True))
    return {"reference": (reference, False, False, True), "direct": (direct, False, True, False),
            "fast": (fast, False, True, False), "fast+bf16": (fast, True, True, False)}


def old_read(mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, *,
             sigma: float | None = None, **kwargs: Any) -> torch.Tensor:
    """``memory_read``'s signature over the pre-issue-10 read (one chunk, its own kernel: the
    caller's ``kernel`` and ``budget_bytes`` are ignored; no ``edit_logits``, no ``stats``)."""
    if kwargs.get("edit_logits") is not None or kwargs.get("stats") is not None:
        raise ValueError("the reference read has no logit edit (oracle) and no logit statistics")
    return read_before(mem_key.float(), mem_value.float(), query_key.float(), sigma).to(mem_value.dtype)


def run(model: torch.nn.Module, bf16: bool, flush: bool, before: bool, frames: torch.Tensor,
        mask: torch.Tensor, sigma: float | None, mem_every: int) -> tuple[float, torch.Tensor]:
    flush_denormals(flush)  # in every thread (kmnlib.denormals); set for every run, variants interleave
    read = memory_read_replaced(lambda _: old_read) if before else contextlib.nullcontext()
    with read, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        probs, _ = segment_video(model, frames, mask, sigma=sigma, mem_every=mem_every)
        return (time.perf_counter() - start) / len(frames), probs


def bench(config: str, seq: str, n_frames: int | None, reps: int, mem_every: int,
          checkpoint: Path | None) -> None:
    frames, mask = load_clip(seq, n_frames, CONFIGS[config][1])
    models = variants(config, checkpoint)
    for variant in models.values():  # warm-up, untimed
        run(*variant, frames[:3], mask, SIGMA, mem_every)
    cases = [(v, s) for v in models for s in (None, SIGMA)]
    times: dict[tuple[str, float | None], list[float]] = {c: [] for c in cases}
    probs: dict[tuple[str, float | None], torch.Tensor] = {}
    for rep in range(reps):
        k = rep % len(cases)
        for case in cases[k:] + cases[:k]:
            t, p = run(*models[case[0]], frames, mask, case[1], mem_every)
            times[case].append(t)
            probs[case] = p
    med = {c: statistics.median(v) for c, v in times.items()}
    flush_denormals(True)
    paired, _, _ = paired_ratio(models["fast"][0], frames, mask, mem_every)
    ref = med[("reference", None)]
    weights = f"trained ({checkpoint})" if checkpoint is not None else "random"
    print(f"{config:<14} {tuple(frames.shape[-2:])!s:>11} {len(frames):>4}   weights {weights}",
          flush=True)
    for name in models:
        stm, km = med[(name, None)], med[(name, SIGMA)]
        diff = max(float((probs[(name, s)] - probs[("reference", s)]).abs().max())
                   for s in (None, SIGMA))
        print(f"    {name:<10} STM {stm:.4f}  KM {km:.4f} s/frame   speed-up {ref / stm:5.2f}x   "
              f"KM/STM {km / stm:.3f}   max|Δp| vs reference {diff:.1e}", flush=True)
    print(f"    fast       paired KM/STM estimate {paired:.3f}", flush=True)
    # Where the fast path's difference arises: at the first frames, or grown through the memory
    # (each frame's probabilities are encoded into the memory the next frames read).
    for s, read in ((None, "STM read"), (SIGMA, f"KM σ={SIGMA:g}")):
        per_frame = (probs[("fast", s)] - probs[("reference", s)]).abs().flatten(1).amax(1)
        print(f"    fast       max|Δp| vs reference by frame ({read}): "
              + " ".join(f"{float(d):.1e}" for d in per_frame), flush=True)
    qhat_flips(models, frames, mask, mem_every, at=max(1, int(per_frame.argmax())))


def qhat_flips(models: dict[str, Variant], frames: torch.Tensor, mask: torch.Tensor,
               mem_every: int, at: int) -> None:
    """The KM read of frame ``at`` (the frame where the two differ most) in the reference and the
    fast network: how far their keys and logits differ, and for how many memory cells the kernel's
    centre q̂ = argmax_q c(p, q) lands on another query cell. q̂ is not continuous: where two query
    cells match a memory cell almost equally, float rounding can move it a whole cell."""
    caught: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in ("reference", "fast"):
        model, _, flush, before = models[name]

        def spy(current: Any, _name: str = name, _before: bool = before) -> Any:
            read = old_read if _before else current     # each variant with its own read, as timed

            def spied(mk, mv, qk, *, sigma=None, **kwargs):  # noqa: ANN001, ANN003
                caught[_name] = (mk.float().clone(), qk.float().clone())  # the last read: frame `at`
                return read(mk, mv, qk, sigma=sigma, **kwargs)
            return spied

        flush_denormals(flush)
        with memory_read_replaced(spy):
            segment_video(model, frames[:at + 1], mask, sigma=SIGMA, mem_every=mem_every)
    (mk_r, qk_r), (mk_f, qk_f) = caught["reference"], caught["fast"]
    c_r = torch.bmm(mk_r.flatten(2).transpose(1, 2), qk_r.flatten(2))
    c_f = torch.bmm(mk_f.flatten(2).transpose(1, 2), qk_f.flatten(2))
    flips = (c_r.argmax(dim=2) != c_f.argmax(dim=2)).float().mean()
    top2 = c_r.topk(2, dim=2).values
    near = ((top2[..., 0] - top2[..., 1]) < (c_r - c_f).abs().amax()).float().mean()
    print(f"    fast       KM read of frame {at}: max|Δkey| {float((mk_r - mk_f).abs().max()):.1e}, "
          f"max|Δc| {float((c_r - c_f).abs().max()):.1e}; q̂ moved for {100 * float(flips):.2f} % "
          f"of memory cells; {100 * float(near):.2f} % have their best two query cells closer "
          f"than that max|Δc|", flush=True)


def breakdown(config: str, seq: str, n_frames: int | None, mem_every: int,
              checkpoint: Path | None) -> None:
    """Where a frame's time goes in the fast path (fp32, KM read): s/frame inside the memory
    encoder, the query encoder, the memory read and the decoder, and the rest (soft aggregation,
    copies, Python), after an untimed run of the first 2 frames."""
    frames, mask = load_clip(seq, n_frames, CONFIGS[config][1])
    model = variants(config, checkpoint)["fast"][0]
    flush_denormals(True)
    spent: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    originals = {n: getattr(model, n) for n in ("encode_memory", "encode_query", "decode")}
    for n, fn in originals.items():
        setattr(model, n, timed(n, fn))     # instance attributes shadow the methods
    try:
        with memory_read_replaced(lambda current: timed("read", current)):
            segment_video(model, frames[:2], mask, sigma=SIGMA, mem_every=mem_every)
            spent.clear()
            start = time.perf_counter()
            segment_video(model, frames, mask, sigma=SIGMA, mem_every=mem_every)
            wall = time.perf_counter() - start
    finally:
        for n in originals:
            delattr(model, n)
    n = len(frames) - 1                     # frame 0 is given, not segmented
    parts = {**spent, "rest": wall - sum(spent.values())}
    print(f"{config:<14} {tuple(frames.shape[-2:])!s:>11} {len(frames):>4}   fast, KM σ={SIGMA:g}: "
          f"{wall / n:.3f} s/frame = " + ", ".join(f"{k} {v / n:.3f} ({100 * v / wall:.0f} %)"
                                                 for k, v in parts.items()), flush=True)


def paired_ratio(model: torch.nn.Module, frames: torch.Tensor, mask: torch.Tensor, mem_every: int,
                 read_backend: str = InferenceConfig.read_backend) -> tuple[float, float, float]:
    """(W - R_stm) / (W - R_km) from one run doing both reads per frame; also R_stm, R_km in s/frame.
    ``read_backend``: how ``segment_video`` computes the read (``InferenceConfig.read_backend``)."""
    spent = {"stm": 0.0, "km": 0.0}
    calls = [0]

    def both(read: Any) -> Any:
        def both_reads(mem_key, mem_value, query_key, *, sigma=None, **kwargs):  # noqa: ANN001, ANN003
            order = [("stm", None), ("km", sigma)] if calls[0] % 2 == 0 else [("km", sigma), ("stm", None)]
            calls[0] += 1
            out = None
            for name, s in order:
                start = time.perf_counter()
                r = read(mem_key, mem_value, query_key, sigma=s, **kwargs)
                spent[name] += time.perf_counter() - start
                if name == "km":
                    out = r
            return out
        return both_reads

    with memory_read_replaced(both):
        start = time.perf_counter()
        segment_video(model, frames, mask, sigma=SIGMA, mem_every=mem_every,
                      read_backend=read_backend)
        wall = time.perf_counter() - start
    n = len(frames)
    return (wall - spent["stm"]) / (wall - spent["km"]), spent["stm"] / n, spent["km"] / n


def kernel_path(path: str) -> dict[str, str]:
    """``segment_video``'s keywords that make the kernel read's work on the logits done by ``path``,
    through the public switch ``InferenceConfig.read_backend``: ``native`` (what runs by default,
    ``kmnlib.read_backends.native``: one compiled pass per memory row) or ``torch`` (the reference
    ``kmnlib.memory.gaussian_kernel``: PyTorch's arg-max and two broadcast additions, as before the
    native pass). The former ``numpy`` path (the PyTorch path with a NumPy arg-max, what ran without
    a C compiler) is no longer in the library and is dropped here; its figures in
    benchmarks/README.md were measured with the code of their time."""
    if path not in KERNEL_PATHS:
        raise ValueError(f"kernel path {path!r}: expected one of {list(KERNEL_PATHS)}")
    return {"read_backend": path}


KERNEL_PATHS = {"native": "native pass (now)", "torch": "argmax + adds (ref.)"}


def kernel_cost(config: str, seq: str, n_frames: int | None, reps: int, mem_every: int,
                checkpoint: Path | None) -> None:
    """The paired KM/STM estimate of the fast path, repeated, for each way of doing the kernel's
    work (``kernel_path``), interleaved with the order rotating per repetition."""
    if native.library() is None:
        raise SystemExit("error: the native kernel did not build (see the warning); --kernel-cost "
                         "compares it with the PyTorch path")
    frames, mask = load_clip(seq, n_frames, CONFIGS[config][1])
    model = variants(config, checkpoint)["fast"][0]
    flush_denormals(True)
    segment_video(model, frames[:3], mask, sigma=SIGMA, mem_every=mem_every)   # warm-up
    got: dict[str, list[tuple[float, float, float]]] = {p: [] for p in KERNEL_PATHS}
    for rep in range(reps):
        k = rep % len(KERNEL_PATHS)
        for path in (list(KERNEL_PATHS)[k:] + list(KERNEL_PATHS)[:k]):
            got[path].append(paired_ratio(model, frames, mask, mem_every, **kernel_path(path)))
    weights = f"trained ({checkpoint})" if checkpoint is not None else "random"
    print(f"{config:<14} {tuple(frames.shape[-2:])!s:>11} {len(frames):>4}   weights {weights}, fast path",
          flush=True)
    for path, runs in got.items():
        ratios = [r[0] for r in runs]
        print(f"    {KERNEL_PATHS[path]:<21} paired KM/STM {statistics.median(ratios):.3f} (per rep: "
              + ", ".join(f"{r:.3f}" for r in ratios)
              + f");  read STM {statistics.median(r[1] for r in runs) * 1e3:.1f}, "
                f"KM {statistics.median(r[2] for r in runs) * 1e3:.1f} ms/frame", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 frames, 1 repetition")
    ap.add_argument("--breakdown", action="store_true",
                    help="only: where a frame's time goes in the fast path (encoders, read, decoder)")
    ap.add_argument("--kernel-cost", action="store_true",
                    help="only: the kernel's paired cost in the fast path, native pass and PyTorch path")
    ap.add_argument("--sequence", default="blackswan")
    ap.add_argument("--frames", type=int, default=None, help="first N frames (default: all)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--mem-every", type=int, default=PAPER.inference.mem_every)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated of {list(CONFIGS)}")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a trained mini checkpoint for the lite0 configs (default: random weights)")
    args = ap.parse_args()
    if args.checkpoint is not None and not args.checkpoint.is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no such file (a mini run writes "
                 f"results/mini/checkpoints/main_from_pretrain.pt)")
    if args.threads:
        torch.set_num_threads(args.threads)
    n_frames = args.frames if args.frames is not None else (4 if args.quick else None)
    reps = args.reps or (1 if args.quick else 3)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sequence {args.sequence}, "
          f"mem_every {args.mem_every}, σ={SIGMA:g}, median of {reps} interleaved rep(s)")
    for config in configs:
        ckpt = args.checkpoint if config.startswith("lite0") else None
        if args.breakdown:
            breakdown(config, args.sequence, n_frames, args.mem_every, ckpt)
        elif args.kernel_cost:
            kernel_cost(config, args.sequence, n_frames, reps, args.mem_every, ckpt)
        else:
            bench(config, args.sequence, n_frames, reps, args.mem_every, ckpt)


if __name__ == "__main__":
    main()
