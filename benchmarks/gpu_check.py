"""CUDA readiness check of the ``paper`` profile: one command, one summary table, one JSON file.

    python benchmarks/gpu_check.py                                  # CUDA machine, < 8 min
    python benchmarks/gpu_check.py --sections device,inference      # a subset
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gc.json   # tiny sizes on the CPU (CI)

Sections (run in this order; ``--sections`` picks a subset):

``device``
    The network's forward/backward on the device against the CPU (strict fp32: TF32 off), and three
    AMP training steps at the paper size through the trainer's ``train_step``; the memory read
    (:func:`kmnlib.memory.memory_read`) under fp16 and bf16 autocast against its float64 CPU reference
    (σ = None / 7, a chunked read, and keys ×30 that would overflow a half-precision read: no
    NaN/inf); :func:`kmnlib.inference.segment_video` on the device against the CPU on a DAVIS-2016 val
    sequence (probabilities within 1e-3 in strict fp32; PyTorch's default TF32 convolutions reported).
``train``
    A paper-profile training smoke run: ResNet-50 widths, random init (``model.pretrained=False``),
    384² crops, batch 4, AMP (the trainer turns ``profile.amp`` on for CUDA); the profile's datasets are
    replaced by the shared ones (:data:`DATA_OVERRIDES`). 50 pre-training iterations, 50 main
    iterations then a kill, and a resume of the main stage for 10 more. Checked: losses finite and
    falling (mean of the last fifth below the first fifth), the resume continued from the checkpoint
    (:func:`resume_verdict`); reported: iterations/s and peak GPU memory.
``inference``
    s/frame of ``segment_video`` at 480p on 3 DAVIS-2016 val sequences (first ``--frames`` frames
    each), STM read (σ=None) and kernel read (σ=7), fp32 and AMP (fp16 autocast), ResNet-50
    (paper widths) and EfficientNet-Lite0 (mini widths), random weights, BatchNorm folded (as
    :func:`kmnlib.checkpoints.inference_model`), plus peak GPU memory — the paper's runtime column
    (Table 1: KMN 0.12 / STM 0.16 s/frame on a GTX 1080Ti) re-measured.
``ddp``
    ``python -m torch.distributed.run --standalone --nproc_per_node=N`` on a temporary driver that
    calls :func:`kmnlib.training.train_stage` (``kmnlib.train`` takes no dataset overrides) for 10
    pre-training iterations; N = the number of GPUs. With N = 1 the trainer runs without a process
    group (WORLD_SIZE 1: no DDP, no nccl), so the driver also runs one nccl all_reduce itself;
    DDP over nccl needs N >= 2 (two ranks cannot share one GPU under nccl).

Without CUDA (or with ``--cpu-smoke``) the same checks run on the CPU at the ``test`` profile's sizes
(tiny widths, a few iterations, 96-pixel frames, torchrun with 2 gloo processes); the script says so
and exits 0 when every check passes, so CI keeps it working (``tests/test_gpu_check.py``).

Results: one row per check (PASS / FAIL / WARN = reported, not required / SKIP / ERROR), printed as a
table and written atomically to ``--out`` (default ``benchmarks/gpu_check.json``) after every section.
Exit status 1 if any row is FAIL or ERROR, 3 if the global ``--timeout-s`` watchdog fired (the JSON
then holds what was done), else 0. Every section has a time budget (``--budget SECTION=SECONDS``);
a section out of budget stops early and marks what it did not do as SKIP.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmnlib.checkpoints import load_checkpoint
from kmnlib.config import MINI, PAPER, REPO_ROOT, TEST, Profile, resolve_data_root
from kmnlib.data import DAVISDataset, frames_to_tensor
from kmnlib.files import save_text
from kmnlib.inference import segment_video
from kmnlib.memory import memory_read
from kmnlib.model import build_model
from kmnlib.model.fold import fold_batchnorm
from kmnlib.model.ops import resize_frames, resize_labels
from kmnlib.synthesis import collate_clips
from kmnlib.training import train_stage
from kmnlib.training.batches import build_clip_dataset
from kmnlib.training.step import StepModule, clip_losses, train_step

SECTIONS = ("device", "train", "inference", "ddp")
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "gpu_check.json"

#: The paper profile's training sets are not on this machine: the shared ones replace them.
DATA_OVERRIDES: dict[str, Any] = {
    "static_sets": ["coco-panoptic-200", "weizmann-horse"],
    "video_sets": ["DAVIS-2016:train"],
    "main.video_resolution": "240p",   # the shared DAVIS-2016 train exists only at 240p
}

#: Paper Table 1, s/frame on one GTX 1080Ti (kmnlib.study.paper.RUNTIME_S_PER_FRAME).
PAPER_RUNTIME_S_PER_FRAME = {"KMN": 0.12, "STM": 0.16}

# Tolerances.
SEG_PROB_TOL = 1e-3        # segment_video probabilities, device vs CPU, strict fp32
TF32_PROB_WARN = 1e-2      # the same with PyTorch's default TF32 convolutions (reported only)
LOSS_REL_TOL = 1e-3        # fp32 loss, device vs CPU
GRAD_REL_TOL = 1e-2        # fp32 gradient vector, relative L2 distance, device vs CPU
READ_ATOL = 1e-4           # memory read: float32 arithmetic on top of the output dtype's rounding


# ------------------------------------------------------------------------------------------------
# Sizes of one run: the CUDA check at the paper's sizes, or the CPU smoke run at tiny ones.
# ------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    mode: str                                  # "cuda" | "cpu-smoke"
    train_profile: Profile                     # training / fwd-bwd / torchrun profile
    infer_models: dict[str, Any]               # name -> ModelConfig (inference section)
    seg_model: Any                             # ModelConfig of the segment_video comparison
    infer_height: int | None                   # None = native 480p
    infer_frames: int                          # frames per sequence (inference section)
    infer_sequences: tuple[str, ...]
    seg_frames: int                            # frames of the device-vs-CPU segment_video check
    read_shape: tuple[int, int, int, int, int, int]   # B, Ck, Cv, T, h, w
    fwd_crop: int                              # crop of the fp32 device-vs-CPU forward/backward
    fwd_batch: int
    pretrain_iters: int
    main_kill: int                             # main stage killed after this iteration ...
    main_extra: int                            # ... and resumed for this many more
    checkpoint_every: int
    ddp_iters: int
    nproc: int
    amp_dtype: torch.dtype
    budgets: dict[str, float]
    timeout_s: float
    threads: int | None
    break_resume: bool = False                 # test hook: resume=False, so the resume check must fail


def make_plan(cuda: bool, args: argparse.Namespace) -> Plan:
    if cuda:
        base = PAPER.with_overrides({**DATA_OVERRIDES, "model.pretrained": False})
        workers = max(0, min(base.pretrain.num_workers, (os.cpu_count() or 2) - 2))
        base = base.with_overrides({"pretrain.num_workers": workers, "main.num_workers": workers})
        plan = Plan(
            mode="cuda", train_profile=base,
            infer_models={"resnet50": replace(PAPER.model, pretrained=False),
                          "lite0": replace(MINI.model, pretrained=False)},
            seg_model=replace(PAPER.model, pretrained=False), infer_height=None, infer_frames=50,
            infer_sequences=(), seg_frames=10, read_shape=(1, 128, 512, 8, 30, 54),
            fwd_crop=128, fwd_batch=2, pretrain_iters=50, main_kill=50, main_extra=10,
            checkpoint_every=10, ddp_iters=10, nproc=max(1, torch.cuda.device_count()),
            amp_dtype=torch.float16,
            budgets={"device": 80, "train": 170, "inference": 110, "ddp": 80},
            timeout_s=450, threads=None)
    else:
        base = TEST.with_overrides(DATA_OVERRIDES)
        tiny = {k: getattr(TEST.model, k) for k in ("key_dim", "value_dim", "decoder_dim")}
        plan = Plan(
            mode="cpu-smoke", train_profile=base,
            infer_models={"resnet50": replace(PAPER.model, pretrained=False, **tiny),
                          "lite0": replace(TEST.model, pretrained=False)},
            seg_model=replace(TEST.model, pretrained=False), infer_height=96, infer_frames=3,
            infer_sequences=(), seg_frames=3, read_shape=(1, 16, 32, 2, 6, 11),
            fwd_crop=96, fwd_batch=2, pretrain_iters=4, main_kill=4, main_extra=2,
            checkpoint_every=2, ddp_iters=3, nproc=2, amp_dtype=torch.bfloat16,
            budgets={"device": 120, "train": 240, "inference": 120, "ddp": 240},
            timeout_s=900, threads=1)
    if args.frames is not None:
        plan.infer_frames = args.frames
    if args.sequences:
        plan.infer_sequences = tuple(s.strip() for s in args.sequences.split(",") if s.strip())
    if args.nproc is not None:
        plan.nproc = args.nproc
    if args.timeout_s is not None:
        plan.timeout_s = args.timeout_s
    if args.threads is not None:
        plan.threads = args.threads
    plan.break_resume = bool(args.break_resume)
    for item in args.budget or []:
        name, _, value = item.partition("=")
        if name not in SECTIONS or not value:
            raise SystemExit(f"--budget {item!r}: expected SECTION=SECONDS with SECTION in {SECTIONS}")
        plan.budgets[name] = float(value)
    return plan


# ------------------------------------------------------------------------------------------------
# Results: rows, the table, the JSON.
# ------------------------------------------------------------------------------------------------
def to_jsonable(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become the strings "nan"/"inf"/"-inf" (strict JSON has no
    NaN), tuples lists, numpy/torch scalars Python numbers, paths and dtypes strings."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return to_jsonable(x.item())
    if x is None or isinstance(x, str):
        return x
    return str(x)


def nonfinite_paths(obj: Any, path: str = "") -> list[str]:
    """Paths of every non-finite number (or its "nan"/"inf" stand-in) in a JSON-like object."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{path}[{i}]")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    if obj in ("nan", "inf", "-inf"):
        return [path]
    return []


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.2e}" if a < 1e-2 or a >= 1e5 else f"{v:.4g}"
    return str(v)


class Report:
    """Rows of checks, section summaries, the table and the JSON file (written atomically)."""

    def __init__(self, out: Path, env: dict[str, Any], plan: Plan, argv: list[str]) -> None:
        self.out, self.env, self.plan, self.argv = out, env, plan, argv
        self.rows: list[dict[str, Any]] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.started = time.perf_counter()
        self.current: str | None = None
        self.aborted: str | None = None

    def add(self, section: str, name: str, device: str, status: str,
            numbers: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
        row = {"section": section, "check": name, "device": device, "status": status,
               "numbers": dict(numbers or {}), "note": note}
        with self.lock:
            self.rows.append(row)
        return row

    def section_data(self, section: str) -> dict[str, Any]:
        return self.sections.setdefault(section, {"status": "NOT RUN", "wall_s": 0.0})

    def status_of(self, section: str) -> str:
        rows = [r["status"] for r in self.rows if r["section"] == section]
        for s in ("ERROR", "FAIL", "TIMEOUT"):
            if s in rows:
                return s
        if not rows:
            return "NOT RUN"
        return "PASS" if any(r in ("PASS", "WARN") for r in rows) else rows[-1]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def exit_code(self) -> int:
        if self.aborted:
            return 3
        return 1 if any(r["status"] in ("FAIL", "ERROR", "TIMEOUT") for r in self.rows) else 0

    def document(self) -> dict[str, Any]:
        with self.lock:
            return {
                "schema": 1, "tool": "benchmarks/gpu_check.py", "argv": self.argv,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "mode": self.plan.mode, "environment": self.env,
                "plan": {"sections": list(self.sections), "budgets_s": self.plan.budgets,
                         "timeout_s": self.plan.timeout_s,
                         "train_profile": self.plan.train_profile.name,
                         "data_overrides": DATA_OVERRIDES, "infer_frames": self.plan.infer_frames,
                         "infer_height": self.plan.infer_height, "nproc": self.plan.nproc,
                         "amp_dtype": str(self.plan.amp_dtype).replace("torch.", "")},
                "wall_s": time.perf_counter() - self.started,
                "aborted": self.aborted, "counts": self.counts(), "exit_code": self.exit_code(),
                "sections": copy.deepcopy(self.sections), "rows": copy.deepcopy(self.rows),
            }

    def write(self) -> None:
        with self.lock:
            doc = to_jsonable(self.document())
            save_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", self.out)

    def table(self) -> str:
        with self.lock:
            head = ("check", "device", "result", "key numbers")
            lines = [(f"{r['section']}: {r['check']}", r["device"], r["status"],
                      "  ".join(f"{k}={_fmt(v)}" for k, v in r["numbers"].items())
                      + (f"  [{r['note']}]" if r["note"] else "")) for r in self.rows]
            w0 = max([len(head[0])] + [len(x[0]) for x in lines])
            w1 = max([len(head[1])] + [len(x[1]) for x in lines])
            w2 = max([len(head[2])] + [len(x[2]) for x in lines])
            fmt = f"{{:<{w0}}}  {{:<{w1}}}  {{:<{w2}}}  {{}}"
            out = [fmt.format(*head), fmt.format("-" * w0, "-" * w1, "-" * w2, "-" * 11)]
            out += [fmt.format(*x) for x in lines]
            return "\n".join(out)


class Budget:
    """Time left to a section: its own budget, capped by the global deadline."""

    def __init__(self, seconds: float, global_deadline: float) -> None:
        self.start = time.perf_counter()
        self.deadline = min(self.start + seconds, global_deadline - 5.0)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class OutOfTime(Exception):
    """Raised by a training callback when the section's budget is spent."""


class Killed(Exception):
    """The simulated kill of the main stage (raised by its callback after the kill iteration)."""


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """IEEE fp32 convolutions and matmuls on CUDA (TF32 off), restored afterwards. PyTorch's default
    runs cuDNN convolutions in TF32 on Ampere and later (about 1e-3 relative), which would swamp a
    1e-3 comparison with the CPU. Only the new ``fp32_precision`` API is used (mixing it with the
    legacy ``allow_tf32`` flags is an error in recent PyTorch)."""
    if device.type != "cuda":
        yield
        return
    if not hasattr(torch.backends.cudnn, "conv"):   # PyTorch < 2.9: the legacy flags only
        saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy
        return
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    saved = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "ieee"
        yield
    finally:
        for k, v in zip(knobs, saved):
            k.fp32_precision = v


def fp32_settings() -> dict[str, str]:
    try:
        return {"cuda.matmul": torch.backends.cuda.matmul.fp32_precision,
                "cudnn.conv": torch.backends.cudnn.conv.fp32_precision}
    except AttributeError:  # older PyTorch
        return {"cuda.matmul.allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
                "cudnn.allow_tf32": str(torch.backends.cudnn.allow_tf32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem(device: torch.device) -> dict[str, float]:
    """Peak GPU memory since :func:`reset_peak` (MiB), or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return {"peak_gpu_MiB": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_reserved_MiB": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_sequence(data_root: Path, name: str, n_frames: int, height: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``n_frames`` frames of a DAVIS-2016 val sequence at 480p (float (T,3,H,W)) and the
    first-frame label map, resized to ``height`` when given."""
    seq = DAVISDataset(data_root / "DAVIS-2016", "2016", "val", "480p")[name]
    frames = frames_to_tensor(seq.load_frames(range(min(n_frames, len(seq)))))
    mask = torch.from_numpy(seq.load_mask(0).astype(np.int64))
    mask[mask == 255] = 0
    if height is not None:
        frames = resize_frames(frames, height)
        mask = resize_labels(mask, tuple(frames.shape[-2:]))
    return frames, mask


def val_sequences(data_root: Path, plan: Plan) -> list[str]:
    if plan.infer_sequences:
        return list(plan.infer_sequences)
    return list(DAVISDataset(data_root / "DAVIS-2016", "2016", "val", "480p").names[:3])


def seeded_model(cfg: Any, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)


# ------------------------------------------------------------------------------------------------
# Verdicts (pure functions of recorded numbers; unit-tested in tests/test_gpu_check.py)
# ------------------------------------------------------------------------------------------------
def loss_trend(losses: list[float]) -> dict[str, Any]:
    """Finite? and the mean of the first vs the last fifth (at least 1 iteration each)."""
    k = max(1, len(losses) // 5)
    first = float(np.mean(losses[:k])) if losses else float("nan")
    last = float(np.mean(losses[-k:])) if losses else float("nan")
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    return {"iterations": len(losses), "finite": finite, "loss_first": first, "loss_last": last,
            "decreasing": bool(finite and last < first)}


def adam_step_bound(t: int, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """Largest change one Adam step (its ``t``-th, no weight decay) can make to one weight.

    With m_t = (1-β1)Σβ1^(t-i)g_i and v_t = (1-β2)Σβ2^(t-i)g_i², Cauchy-Schwarz gives
    |m_t|/√v_t <= (1-β1)/√(1-β2) · √(Σ_{k<t} γ^k), γ = β1²/β2; the bias corrections scale it by
    √(1-β2^t)/(1-β1^t), and the update is lr times that (eps only shrinks it). About 1.0·lr at
    t = 5 and 1.6·lr at t = 51.
    """
    b1, b2 = betas
    t = max(1, int(t))
    gamma = b1 * b1 / b2
    series = (1 - gamma ** t) / (1 - gamma)
    return lr * (1 - b1) / math.sqrt(1 - b2) * math.sqrt(series) * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)


def resume_verdict(info: dict[str, Any]) -> list[str]:
    """Why a kill-and-resume did *not* continue from its checkpoint ([] = it did).

    ``info``: ``kill_step`` (last iteration before the kill), ``total``, ``ckpt_step`` (step of the
    ``.last.pt`` left by the kill), ``resumed_steps`` (iterations the resumed run's callback saw),
    ``log_steps`` (the CSV log's steps afterwards), ``final_step``, ``final_finished``,
    ``last_left`` (``.last.pt`` still there after finishing), ``adam_step_ckpt`` /
    ``adam_step_final`` (Adam's step count in the checkpoint and the final file; AMP may skip a few
    steps, never add), ``first_step_change`` (max |weight change| between the checkpoint and the
    first resumed iteration), ``change_bound`` (what one Adam step can move a weight),
    ``ckpt_vs_init`` (max |weight difference| between the checkpoint and the stage's init).
    """
    why: list[str] = []
    kill, total, ck = info["kill_step"], info["total"], info["ckpt_step"]
    if ck != kill:
        why.append(f"checkpoint left by the kill is at step {ck}, not {kill}")
    expected = list(range(ck + 1, total + 1))
    if info["resumed_steps"] != expected:
        seen = info["resumed_steps"]
        why.append(f"resumed run did iterations {seen[:3]}…{seen[-1:]} ({len(seen)}), "
                   f"expected {ck + 1}…{total}" if seen else "resumed run did no iteration")
    if info["log_steps"] != list(range(1, total + 1)):
        why.append("training log is not one row per iteration 1…total after the resume")
    if info["final_step"] != total or not info["final_finished"]:
        why.append(f"final checkpoint at step {info['final_step']} (finished={info['final_finished']})")
    if info["last_left"]:
        why.append(".last.pt still there after the run finished")
    a0, a1 = info["adam_step_ckpt"], info["adam_step_final"]
    if not (a0 >= 1 and a0 <= a1 <= a0 + (total - ck)):
        why.append(f"optimizer state not continued: Adam step {a0} in the checkpoint, {a1} at the end")
    change, bound = info["first_step_change"], info["change_bound"]
    if not change <= bound:
        why.append(f"weights moved {change:.3g} in the first resumed iteration (one step moves "
                   f"<= {bound:.3g}): not the checkpoint's weights")
    return why


# ------------------------------------------------------------------------------------------------
# Section: device tests
# ------------------------------------------------------------------------------------------------
def read_inputs(shape: tuple[int, ...], dtype: torch.dtype, scale: float, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, ck, cv, t, h, w = shape
    g = torch.Generator().manual_seed(seed)
    mk = torch.randn(b, ck, t, h, w, generator=g) * scale
    mv = torch.randn(b, cv, t, h, w, generator=g)
    qk = torch.randn(b, ck, h, w, generator=g) * scale
    return mk.to(dtype), mv.to(dtype), qk.to(dtype)


def check_memory_read(rep: Report, dev: torch.device, plan: Plan, budget: Budget) -> None:
    """memory_read under fp16/bf16 autocast on ``dev`` vs float64 on the CPU from the same inputs."""
    b, ck, cv, t, h, w = plan.read_shape
    cases = [("fp16", torch.float16, None, 1.0, None), ("fp16", torch.float16, 7.0, 1.0, None),
             ("bf16", torch.bfloat16, None, 1.0, None), ("bf16", torch.bfloat16, 7.0, 1.0, None),
             # a read split into several chunks of memory positions (online softmax)
             ("fp16", torch.float16, 7.0, 1.0, max(1, b * h * w * 8 * (t * h * w) // 7)),
             # keys ×30: logits c/√d ~ 1e3, beyond what a half-precision softmax survives
             ("fp16", torch.float16, 7.0, 30.0, None), ("bf16", torch.bfloat16, 7.0, 30.0, None)]
    refs: dict[tuple, torch.Tensor] = {}
    for dname, dtype, sigma, scale, chunk_budget in cases:
        label = (f"memory_read autocast {dname} σ={'None' if sigma is None else f'{sigma:g}'}"
                 + (" chunked" if chunk_budget else "") + (f" keys×{scale:g}" if scale != 1 else ""))
        if budget.left() < 2:
            rep.add("device", label, str(dev), "SKIP", note="section budget spent")
            continue
        mk, mv, qk = read_inputs(plan.read_shape, dtype, scale, seed=10 + int(scale))
        key = (dname, sigma, scale)
        if key not in refs:
            refs[key] = memory_read(mk.double(), mv.double(), qk.double(), sigma=sigma)
        ref = refs[key]
        with torch.autocast(dev.type, dtype=dtype):
            out = memory_read(mk.to(dev), mv.to(dev), qk.to(dev), sigma=sigma,
                              budget_bytes=chunk_budget)
        sync(dev)
        out = out.cpu()
        n_bad = int((~torch.isfinite(out)).sum())
        err = (out.double() - ref).abs()
        # The read returns mem_value's dtype: a correct result is the float64 one rounded to it
        # (within half an ulp, eps/2·|x|), plus float32 arithmetic (READ_ATOL).
        bound = 0.5 * torch.finfo(dtype).eps * ref.abs() + READ_ATOL
        worst = float((err / bound).max())
        numbers = {"max_abs_diff": float(err.max()), "err_over_bound": worst,
                   "nonfinite": n_bad, "out_dtype": str(out.dtype).replace("torch.", "")}
        if chunk_budget:
            numbers["chunks"] = -(-(t * h * w) // max(1, chunk_budget // (b * h * w * 8)))
        if scale != 1:
            # Near-ties among huge logits can flip a query's arg-max between float32 and float64
            # (a large but legitimate difference): only finiteness is required here.
            status = "PASS" if n_bad == 0 else "FAIL"
            note = "finiteness only (near-ties at this scale)"
        else:
            status = "PASS" if n_bad == 0 and worst <= 1 else "FAIL"
            note = f"bound ½ulp({dname})·|ref|+{READ_ATOL:g}"
        rep.add("device", label, str(dev), status, numbers, note)


def _fwd_bwd(model: torch.nn.Module, batch: dict[str, Any], dev: torch.device
             ) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    b = {"frames": batch["frames"].to(dev), "masks": batch["masks"].to(dev),
         "num_objects": batch["num_objects"]}
    out = clip_losses(model, b)
    out["loss"].backward()
    grads = torch.cat([p.grad.detach().float().flatten().cpu()
                       for p in model.parameters() if p.grad is not None])
    return float(out["loss"].detach()), grads


def check_forward_backward(rep: Report, dev: torch.device, plan: Plan, data_root: Path,
                           budget: Budget) -> None:
    base = plan.train_profile
    small = base.with_overrides({"pretrain.crop_size": plan.fwd_crop,
                                 "pretrain.has_grid": max(1, plan.fwd_crop // 16),
                                 "pretrain.batch_size": plan.fwd_batch})
    clips = build_clip_dataset(small, "pretrain", data_root, hide=True)
    batch = collate_clips([clips[i] for i in range(plan.fwd_batch)])
    cpu_model = seeded_model(base.model)
    cpu_model.train()
    cpu_model.freeze_bn()
    dev_model = copy.deepcopy(cpu_model).to(dev)
    t0 = time.perf_counter()
    with strict_fp32(dev):
        loss_d, grad_d = _fwd_bwd(dev_model, batch, dev)
    sync(dev)
    t_dev = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss_c, grad_c = _fwd_bwd(cpu_model, batch, torch.device("cpu"))
    t_cpu = time.perf_counter() - t0
    loss_rel = abs(loss_d - loss_c) / max(abs(loss_c), 1e-12)
    grad_rel = float((grad_d.double() - grad_c.double()).norm() / grad_c.double().norm().clamp_min(1e-30))
    finite = bool(math.isfinite(loss_d) and torch.isfinite(grad_d).all())
    ok = finite and loss_rel <= LOSS_REL_TOL and grad_rel <= GRAD_REL_TOL
    rep.add("device", f"forward/backward fp32 vs CPU (crop {plan.fwd_crop}, batch {plan.fwd_batch})",
            str(dev), "PASS" if ok else "FAIL",
            {"loss_dev": loss_d, "loss_cpu": loss_c, "loss_rel_diff": loss_rel,
             "grad_rel_l2": grad_rel, "finite": finite, "s_dev": t_dev, "s_cpu": t_cpu},
            f"tol loss {LOSS_REL_TOL:g}, grads {GRAD_REL_TOL:g}; TF32 off")
    del cpu_model, dev_model, grad_c, grad_d
    free(dev)

    # Three AMP training steps at the profile's size through the trainer's own step function.
    if budget.left() < 10:
        rep.add("device", "AMP train_step x3", str(dev), "SKIP", note="section budget spent")
        return
    cfg = base.pretrain
    clips = build_clip_dataset(base, "pretrain", data_root, hide=True)
    model = seeded_model(base.model).to(dev)
    model.train()
    model.freeze_bn()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scaler = torch.amp.GradScaler(dev.type, enabled=True)
    step_module = StepModule(model)
    reset_peak(dev)
    losses, times = [], []
    for s in range(3):
        batch = collate_clips([clips[s * cfg.batch_size + j] for j in range(cfg.batch_size)])
        t0 = time.perf_counter()
        if dev.type == "cuda":
            out = train_step(step_module, opt, scaler, batch, step=s + 1, device=dev, amp=True)
        else:  # train_step's autocast is fp16; on the CPU autocast runs bf16
            out = _cpu_amp_step(step_module, opt, batch, plan.amp_dtype)
        sync(dev)
        times.append(time.perf_counter() - t0)
        losses.append(out["loss"])
    finite = all(math.isfinite(x) for x in losses)
    params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    rep.add("device", f"AMP train_step x3 (crop {cfg.crop_size}, batch {cfg.batch_size})", str(dev),
            "PASS" if finite and params_finite else "FAIL",
            {"loss_1": losses[0], "loss_3": losses[-1], "weights_finite": params_finite,
             "s_per_step_last": times[-1],
             **({"grad_scale": float(scaler.get_scale())} if dev.type == "cuda" else {}),
             **peak_mem(dev)},
            "fp16 autocast + GradScaler" if dev.type == "cuda" else "CPU: bf16 autocast, no scaler")
    del model, opt, step_module
    free(dev)


def _cpu_amp_step(step_module: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any],
                  dtype: torch.dtype) -> dict[str, float]:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype):
        f1, f2 = step_module(batch["frames"], batch["masks"], torch.as_tensor(batch["num_objects"]))
    (f1 + f2).backward()
    opt.step()
    return {"loss": float(f1.detach()) + float(f2.detach())}


def check_segment_video(rep: Report, dev: torch.device, plan: Plan, data_root: Path,
                        budget: Budget) -> None:
    name = val_sequences(data_root, plan)[0]
    frames, mask = load_sequence(data_root, name, plan.seg_frames, plan.infer_height)
    cpu_model = seeded_model(plan.seg_model).eval()
    dev_model = copy.deepcopy(cpu_model).to(dev)
    size = "x".join(str(s) for s in frames.shape[-2:])
    runs = [(7.0, True), (None, True), (7.0, False)]
    refs: dict[Any, torch.Tensor] = {}
    cpu_s: dict[Any, float] = {}
    for sigma, strict in runs:
        label = (f"segment_video {'KM σ=7' if sigma else 'STM'} {'fp32' if strict else 'TF32 default'}"
                 f" vs CPU ({name}, {len(frames)} frames {size})")
        if not strict and dev.type != "cuda":
            rep.add("device", label, str(dev), "SKIP", note="TF32 exists on CUDA only")
            continue
        if budget.left() < 5:
            rep.add("device", label, str(dev), "SKIP", note="section budget spent")
            continue
        if sigma not in refs:
            t0 = time.perf_counter()
            refs[sigma] = segment_video(cpu_model, frames, mask, sigma=sigma, mem_every=5)[0]
            cpu_s[sigma] = (time.perf_counter() - t0) / len(frames)
        ref = refs[sigma]
        ctx = strict_fp32(dev) if strict else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx:
            probs, labels = segment_video(dev_model, frames, mask, sigma=sigma, mem_every=5)
        dev_s = (time.perf_counter() - t0) / len(frames)
        diff = float((probs - ref).abs().max())
        agree = float((labels == ref.argmax(dim=1).to(labels.dtype)).double().mean())
        finite = bool(torch.isfinite(probs).all())
        tol = SEG_PROB_TOL if strict else TF32_PROB_WARN
        if not finite:
            status = "FAIL"
        elif diff <= tol:
            status = "PASS"
        else:
            status = "FAIL" if strict else "WARN"
        rep.add("device", label, str(dev), status,
                {"max_abs_prob_diff": diff, "label_agreement": agree, "finite": finite,
                 "s_per_frame_dev": dev_s, "s_per_frame_cpu": cpu_s[sigma]},
                f"tol {tol:g}" + ("" if strict else " (reported only)"))
    del cpu_model, dev_model
    free(dev)


def section_device(rep: Report, dev: torch.device, plan: Plan, data_root: Path, budget: Budget,
                   work: Path) -> None:
    data = rep.section_data("device")
    data["fp32_precision_default"] = fp32_settings()
    for fn in (lambda: check_memory_read(rep, dev, plan, budget),
               lambda: check_forward_backward(rep, dev, plan, data_root, budget),
               lambda: check_segment_video(rep, dev, plan, data_root, budget)):
        try:
            fn()
        except Exception as exc:  # one failing check must not hide the others
            rep.add("device", "exception", str(dev), "ERROR", note=_short(exc))
            data.setdefault("errors", []).append(traceback.format_exc()[-4000:])
            free(dev)


# ------------------------------------------------------------------------------------------------
# Section: training smoke run with kill and resume
# ------------------------------------------------------------------------------------------------
def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rate(times: list[float], warmup: int) -> float:
    """Iterations/s from per-iteration completion times, skipping the first ``warmup`` intervals."""
    w = min(warmup, max(0, len(times) - 2))
    if len(times) - w < 2:
        return float("nan")
    return (len(times) - 1 - w) / (times[-1] - times[w])


def _max_change(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> float:
    out = 0.0
    for k, v in model.state_dict().items():
        if v.is_floating_point() and k in state:
            out = max(out, float((v.detach().float().cpu() - state[k].float()).abs().max()))
    return out


def _adam_step(opt_state: dict[str, Any]) -> int:
    steps = [int(s["step"]) for s in opt_state.get("state", {}).values() if "step" in s]
    return max(steps) if steps else 0


def section_train(rep: Report, dev: torch.device, plan: Plan, data_root: Path, budget: Budget,
                  work: Path) -> None:
    data = rep.section_data("train")
    ck = plan.checkpoint_every
    total_main = plan.main_kill + plan.main_extra
    prof = plan.train_profile.with_overrides({
        "pretrain.iterations": plan.pretrain_iters, "pretrain.checkpoint_every": ck,
        "main.iterations": total_main, "main.checkpoint_every": ck})
    data["profile"] = {"name": prof.name, "backbone": prof.model.backbone,
                       "pretrained": prof.model.pretrained, "crop": prof.pretrain.crop_size,
                       "batch": prof.pretrain.batch_size, "amp_on_cuda": prof.amp,
                       "lr": [prof.pretrain.lr, prof.main.lr],
                       "num_workers": prof.pretrain.num_workers,
                       "static_sets": list(prof.static_sets), "video_sets": list(prof.video_sets),
                       "video_resolution": prof.main.video_resolution}
    out = work / "train"
    device = str(dev)
    strict = plan.mode == "cuda"   # a 4-iteration CPU smoke run cannot be expected to fall

    def recorder(losses: list[float], times: list[float], kill_at: int | None = None
                 ) -> Callable[[int, Any, dict[str, float]], None]:
        def cb(done: int, model: Any, l: dict[str, float]) -> None:
            losses.append(float(l["loss"]))
            times.append(time.perf_counter())
            if kill_at is not None and done == kill_at:
                raise Killed(f"killed after iteration {done}")
            if budget.left() < 0:
                raise OutOfTime(f"budget spent after iteration {done}")
        return cb

    def stage_row(stage: str, label: str, losses: list[float], times: list[float], t_start: float,
                  extra: dict[str, Any] | None = None) -> None:
        trend = loss_trend(losses)
        ok = trend["finite"] and (trend["decreasing"] or not strict)
        status = "PASS" if ok else "FAIL"
        if trend["finite"] and not trend["decreasing"] and not strict:
            status = "WARN"
        numbers = {**trend, "it_per_s": _rate(times, warmup=max(1, len(times) // 10)),
                   "s_to_first_it": (times[0] - t_start) if times else float("nan"),
                   **peak_mem(dev), **(extra or {})}
        rep.add("train", label, device, status, numbers,
                "loss finite, last fifth < first fifth" + ("" if strict else " (reported only)"))
        data[stage] = {"losses": losses, **numbers}

    # 1. pre-training (static sets, Hide-and-Seek)
    losses: list[float] = []
    times: list[float] = []
    reset_peak(dev)
    t0 = time.perf_counter()
    try:
        pre = train_stage(prof, "pretrain", out, data_root=data_root, hide=True, device=device,
                          progress=False, force=True, callback=recorder(losses, times))
    except OutOfTime as exc:
        stage_row("pretrain", f"pretrain {len(losses)}/{plan.pretrain_iters} it", losses, times, t0)
        rep.add("train", "pretrain", device, "TIMEOUT", {"iterations": len(losses)}, str(exc))
        return
    stage_row("pretrain", f"pretrain {plan.pretrain_iters} it", losses, times, t0)
    free(dev)

    # 2. main training, killed after main_kill iterations (a checkpoint is due there)
    main_losses: list[float] = []
    main_times: list[float] = []
    reset_peak(dev)
    t0 = time.perf_counter()
    name = "main_from_pretrain"
    try:
        train_stage(prof, "main", out, data_root=data_root, init=pre, device=device,
                    progress=False, force=True, callback=recorder(main_losses, main_times,
                                                                  kill_at=plan.main_kill))
        rep.add("train", f"main kill at {plan.main_kill}", device, "FAIL",
                note="the kill did not happen")
        return
    except Killed:
        pass
    except OutOfTime as exc:
        rep.add("train", "main", device, "TIMEOUT", {"iterations": len(main_losses)}, str(exc))
        return
    stage_row("main", f"main {plan.main_kill} it, then killed", main_losses, main_times, t0)
    last = out / f"{name}.last.pt"
    if not last.exists():
        rep.add("train", f"main resume +{plan.main_extra} it", device, "FAIL",
                note=f"no {last.name} after the kill")
        return
    saved = load_checkpoint(last)
    ck_state = {k: v.clone() for k, v in saved["model"].items()}
    init_state = load_checkpoint(pre)["model"]
    ckpt_vs_init = max(float((ck_state[k].float() - v.float()).abs().max())
                       for k, v in init_state.items() if v.is_floating_point())
    info: dict[str, Any] = {"kill_step": plan.main_kill, "total": total_main,
                            "ckpt_step": int(saved["step"]), "adam_step_ckpt": _adam_step(saved["optimizer"]),
                            "ckpt_vs_init": ckpt_vs_init}
    del saved

    # 3. resume: the same call again picks up <name>.last.pt
    seen: list[int] = []
    res_losses: list[float] = []
    res_times: list[float] = []
    first_change: list[float] = []

    def resumed(done: int, model: Any, l: dict[str, float]) -> None:
        if not seen:
            first_change.append(_max_change(model, ck_state))
        seen.append(done)
        res_losses.append(float(l["loss"]))
        res_times.append(time.perf_counter())
        if budget.left() < 0:
            raise OutOfTime(f"budget spent after iteration {done}")

    reset_peak(dev)
    t0 = time.perf_counter()
    try:
        final = train_stage(prof, "main", out, data_root=data_root, init=pre, device=device,
                            progress=False, callback=resumed, resume=not plan.break_resume)
    except OutOfTime as exc:
        rep.add("train", f"main resume +{plan.main_extra} it", device, "TIMEOUT",
                {"iterations": len(seen)}, str(exc))
        return
    fin = load_checkpoint(final)
    # The first resumed iteration can move a weight by at most one Adam step (adam_step_bound;
    # +1 % and 1e-6 for fp32 rounding of weights up to ~8 in size); weights not restored from the
    # checkpoint would be about ckpt_vs_init away.
    info.update({"resumed_steps": seen, "log_steps": [int(r["step"]) for r in _read_log(out / f"{name}.csv")],
                 "final_step": int(fin["step"]), "final_finished": bool(fin["finished"]),
                 "last_left": last.exists(), "adam_step_final": _adam_step(fin["optimizer"]),
                 "first_step_change": first_change[0] if first_change else float("inf"),
                 "change_bound": 1.01 * adam_step_bound(info["adam_step_ckpt"] + 1, prof.main.lr)
                 + 1e-6})
    del fin
    why = resume_verdict(info)
    trend = loss_trend(res_losses)
    all_losses = main_losses + res_losses
    ok = not why and trend["finite"]
    numbers = {"ckpt_step": info["ckpt_step"],
               "first_resumed": seen[0] if seen else -1, "last": seen[-1] if seen else -1,
               "adam_step_ckpt": info["adam_step_ckpt"], "adam_step_final": info["adam_step_final"],
               "first_step_change": info["first_step_change"], "change_bound": info["change_bound"],
               "ckpt_vs_init": ckpt_vs_init, "losses_finite": trend["finite"],
               "loss_resumed_mean": float(np.mean(res_losses)) if res_losses else float("nan"),
               "it_per_s": _rate(res_times, warmup=1),
               "s_to_first_it": (res_times[0] - t0) if res_times else float("nan"), **peak_mem(dev)}
    rep.add("train", f"main resume +{plan.main_extra} it from step {info['ckpt_step']}", device,
            "PASS" if ok else "FAIL", numbers, "; ".join(why) or "continued from the checkpoint")
    data["resume"] = {**info, "losses": res_losses, "problems": why,
                      "main_losses_all": all_losses}
    free(dev)


# ------------------------------------------------------------------------------------------------
# Section: inference speed
# ------------------------------------------------------------------------------------------------
def section_inference(rep: Report, dev: torch.device, plan: Plan, data_root: Path, budget: Budget,
                      work: Path) -> None:
    data = rep.section_data("inference")
    names = val_sequences(data_root, plan)
    clips = {n: load_sequence(data_root, n, plan.infer_frames, plan.infer_height) for n in names}
    n_frames = sum(len(f) for f, _ in clips.values())
    data.update({"sequences": {n: len(f) for n, (f, _) in clips.items()},
                 "size": list(next(iter(clips.values()))[0].shape[-2:]),
                 "paper_s_per_frame_1080ti": PAPER_RUNTIME_S_PER_FRAME,
                 "fp32_precision": fp32_settings(), "results": {}})
    precisions = [("fp32", None), ("amp", plan.amp_dtype)]
    reads = [("STM", None), ("KM σ=7", 7.0)]
    last_cost = 0.0
    fp32_labels: dict[str, torch.Tensor] = {}   # labels of the fp32 runs, for the AMP agreement
    for backbone, cfg in plan.infer_models.items():
        model = fold_batchnorm(seeded_model(cfg)).to(dev)
        for pname, dtype in precisions:
            amp = (torch.autocast(dev.type, dtype=dtype) if dtype is not None
                   else contextlib.nullcontext())
            warm = False
            stm_s = None
            for rname, sigma in reads:
                label = f"{backbone} {rname} {pname}" + (
                    f" ({str(dtype).replace('torch.', '')})" if dtype is not None else "")
                if budget.left() < 1.3 * last_cost + 2:
                    rep.add("inference", label, str(dev), "SKIP", note="section budget spent")
                    continue
                t_cfg = time.perf_counter()
                with amp:
                    if not warm:   # untimed warm-up: kernels, autotuning, allocator
                        f, m = next(iter(clips.values()))
                        segment_video(model, f[:3], m, sigma=7.0, mem_every=5)
                        warm = True
                    reset_peak(dev)
                    per_seq: dict[str, float] = {}
                    total = 0.0
                    finite = True
                    agree: list[float] = []
                    for n, (f, m) in clips.items():
                        sync(dev)
                        t0 = time.perf_counter()
                        probs, labels = segment_video(model, f, m, sigma=sigma, mem_every=5)
                        sync(dev)
                        dt = time.perf_counter() - t0
                        total += dt
                        per_seq[n] = dt / len(f)
                        finite = finite and bool(torch.isfinite(probs).all())
                        key = f"{backbone}/{rname}/{n}"
                        if dtype is None:
                            fp32_labels[key] = labels
                        elif key in fp32_labels:
                            agree.append(float((labels == fp32_labels[key]).double().mean()))
                        del probs
                mem = peak_mem(dev)
                s_frame = total / n_frames
                numbers: dict[str, Any] = {"s_per_frame": s_frame, "fps": 1 / s_frame}
                if sigma is None:
                    stm_s = s_frame
                elif stm_s is not None:
                    numbers["km_over_stm"] = s_frame / stm_s
                if agree:
                    numbers["label_agreement_vs_fp32"] = min(agree)
                numbers.update(mem)
                numbers["frames"] = n_frames
                rep.add("inference", label, str(dev), "PASS" if finite else "FAIL", numbers,
                        "" if finite else "non-finite probabilities")
                data["results"][label] = {**numbers, "s_per_frame_by_sequence": per_seq}
                last_cost = time.perf_counter() - t_cfg
        del model
        free(dev)


# ------------------------------------------------------------------------------------------------
# Section: torchrun
# ------------------------------------------------------------------------------------------------
DDP_DRIVER = textwrap.dedent('''
    """Temporary torchrun driver written by benchmarks/gpu_check.py."""
    import json, os, sys, time
    import torch
    import torch.distributed as dist
    from kmnlib.config import get_profile
    from kmnlib.training import train_stage

    cfg = json.loads(open(sys.argv[1]).read())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = f"cuda:{local}" if cfg["cuda"] else "cpu"
    info = {"rank": rank, "world": world, "device": device, "probe": None}
    if cfg["cuda"] and world == 1:
        # WORLD_SIZE 1: the trainer makes no process group, so exercise nccl here once.
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        t = torch.full((4,), 2.0, device=device)
        dist.all_reduce(t)
        torch.cuda.synchronize()
        info["probe"] = {"backend": dist.get_backend(), "ok": bool((t == 2.0).all().item())}
        dist.destroy_process_group()
    profile = get_profile(cfg["profile"]).with_overrides(cfg["overrides"])
    losses, times, seen = [], [], {}

    def cb(done, model, l):
        losses.append(float(l["loss"]))
        times.append(time.perf_counter())
        if not seen:
            seen["backend"] = dist.get_backend() if dist.is_initialized() else None
            seen["ddp_world"] = dist.get_world_size() if dist.is_initialized() else 1
        if done == cfg["iterations"]:
            flat = torch.cat([v.detach().double().flatten().cpu()
                              for v in model.state_dict().values() if v.is_floating_point()])
            seen["param_sum"] = float(flat.sum())
            seen["param_abs_sum"] = float(flat.abs().sum())

    t0 = time.perf_counter()
    path = train_stage(profile, "pretrain", cfg["out"], data_root=cfg["data_root"], device=device,
                       progress=False, force=True, callback=cb)
    info.update(seen, losses=losses, wall_s=time.perf_counter() - t0,
                it_per_s=(len(times) - 2) / (times[-1] - times[1]) if len(times) > 2 else None,
                final=str(path))
    if cfg["cuda"]:
        info["peak_gpu_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    with open(os.path.join(cfg["dump"], f"rank{rank}.json"), "w") as fh:
        json.dump(info, fh)
''')

_CHILD: list[subprocess.Popen] = []


def _kill_child() -> None:
    for p in list(_CHILD):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)   # the group of the torchrun we started


def section_ddp(rep: Report, dev: torch.device, plan: Plan, data_root: Path, budget: Budget,
                work: Path) -> None:
    data = rep.section_data("ddp")
    cuda = dev.type == "cuda"
    n = plan.nproc
    base = plan.train_profile
    overrides = {**DATA_OVERRIDES, "pretrain.iterations": plan.ddp_iters}
    if cuda:
        overrides.update({"model.pretrained": False, "pretrain.num_workers":
                          max(0, min(base.pretrain.num_workers, (os.cpu_count() or 2) // n - 1))})
    run_dir = work / "ddp"
    dump = run_dir / "dump"
    dump.mkdir(parents=True, exist_ok=True)
    cfg = {"profile": "paper" if cuda else "test", "overrides": overrides, "out": str(run_dir / "ck"),
           "dump": str(dump), "data_root": str(data_root), "cuda": cuda, "iterations": plan.ddp_iters,
           "threads": plan.threads or (1 if not cuda else None)}
    (run_dir / "cfg.json").write_text(json.dumps(cfg))
    driver = run_dir / "ddp_driver.py"
    driver.write_text(DDP_DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(driver), str(run_dir / "cfg.json")]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not cuda:
        env["OMP_NUM_THREADS"] = "1"
    data["command"] = " ".join(cmd)
    label = f"torchrun nproc={n} {'nccl' if cuda else 'gloo'} {plan.ddp_iters} it"
    timeout = max(10.0, budget.left())
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _CHILD.append(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_child()
            proc.wait()
            rc = None
        finally:
            _CHILD.remove(proc)
    wall = time.perf_counter() - t0
    tail = (run_dir / "log.txt").read_text(errors="replace")[-3000:]
    if rc is None:
        rep.add("ddp", label, f"{n}x {dev.type}", "TIMEOUT", {"wall_s": wall},
                f"killed after {timeout:.0f} s")
        data["log_tail"] = tail
        return
    ranks = {}
    for r in range(n):
        p = dump / f"rank{r}.json"
        if p.exists():
            ranks[r] = json.loads(p.read_text())
    data.update({"returncode": rc, "ranks": ranks, "wall_s": wall})
    problems: list[str] = []
    if rc != 0:
        problems.append(f"torchrun exit {rc}")
        data["log_tail"] = tail
    if len(ranks) != n:
        problems.append(f"{len(ranks)}/{n} ranks reported")
    losses = [x for r in ranks.values() for x in r.get("losses", [])]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    if not finite:
        problems.append("non-finite or missing losses")
    if any(len(r.get("losses", [])) != plan.ddp_iters for r in ranks.values()):
        problems.append("a rank did not do every iteration")
    r0 = ranks.get(0, {})
    expected_backend = ("nccl" if cuda else "gloo") if n > 1 else None
    if r0 and r0.get("backend") != expected_backend:
        problems.append(f"trainer's backend {r0.get('backend')}, expected {expected_backend}")
    identical = None
    if n > 1 and len(ranks) == n:
        identical = len({(r.get("param_sum"), r.get("param_abs_sum")) for r in ranks.values()}) == 1
        if not identical:
            problems.append("replicas differ after training")
    probe_ok = None
    if cuda and n == 1:
        probe_ok = bool((r0.get("probe") or {}).get("ok"))
        if not probe_ok:
            problems.append("nccl all_reduce probe failed")
    final = run_dir / "ck" / "pretrain.pt"
    world_ckpt = int(load_checkpoint(final)["world_size"]) if final.exists() else -1
    if world_ckpt != n:
        problems.append(f"final checkpoint world_size {world_ckpt}")
    numbers: dict[str, Any] = {"wall_s": wall, "losses_finite": finite,
                               "loss_last_r0": r0["losses"][-1] if r0.get("losses") else float("nan"),
                               "it_per_s_r0": r0.get("it_per_s") or float("nan"),
                               "ckpt_world_size": world_ckpt}
    if identical is not None:
        numbers["replicas_identical"] = identical
    if probe_ok is not None:
        numbers["nccl_probe_ok"] = probe_ok
    if r0.get("peak_gpu_MiB") is not None:
        numbers["peak_gpu_MiB_r0"] = r0["peak_gpu_MiB"]
    note = "; ".join(problems)
    if not problems and n == 1:
        note = "WORLD_SIZE 1: trainer runs without DDP; nccl checked by a 1-rank all_reduce"
    rep.add("ddp", label, f"{n}x {dev.type}", "FAIL" if problems else "PASS", numbers, note)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


def environment(dev: torch.device, plan: Plan, data_root: Path) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "device": str(dev),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "data_root": str(data_root),
    }
    if torch.cuda.is_available():
        env.update({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "gpu_count": torch.cuda.device_count(),
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    "gpu_memory_GiB": torch.cuda.get_device_properties(0).total_memory / 2**30,
                    "nccl_available": torch.distributed.is_nccl_available(),
                    "fp32_precision": fp32_settings()})
    return env


RUNNERS = {"device": section_device, "train": section_train, "inference": section_inference,
           "ddp": section_ddp}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="sections: " + ", ".join(SECTIONS))
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny sizes on the CPU even if CUDA is there (what CI runs)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default {DEFAULT_OUT})")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated subset of: " + ", ".join(SECTIONS))
    ap.add_argument("--timeout-s", type=float, default=None,
                    help="global watchdog: write what is done and exit 3 (default 450 on CUDA)")
    ap.add_argument("--budget", action="append", metavar="SECTION=SECONDS",
                    help="time budget of a section (default on CUDA: device 80, train 170, "
                         "inference 110, ddp 80)")
    ap.add_argument("--frames", type=int, default=None,
                    help="inference: first N frames of each sequence (default 50 CUDA / 3 CPU)")
    ap.add_argument("--sequences", default=None,
                    help="inference: DAVIS-2016 val sequences (default: the first 3 of the split)")
    ap.add_argument("--nproc", type=int, default=None,
                    help="torchrun processes (default: number of GPUs; 2 on the CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's on CUDA, 1 for the CPU smoke run)")
    ap.add_argument("--data-root", type=Path, default=None)
    # Test hook (tests/test_gpu_check.py): the "resume" restarts from scratch; the check must fail.
    ap.add_argument("--break-resume", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="checkpoints and logs (default: a temporary folder, removed at the end)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requested = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in requested if s not in SECTIONS]
    sections = [s for s in SECTIONS if s in requested]   # always in the documented order
    if unknown or not sections:
        print(f"error: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    plan = make_plan(cuda, args)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    data_root = resolve_data_root(args.data_root)
    if not cuda:
        why = "--cpu-smoke" if args.cpu_smoke else "CUDA is not available"
        print(f"{why}: running the same checks on the CPU at tiny sizes (test profile); "
              f"this is not a GPU result.", flush=True)
    out = args.out.resolve()
    rep = Report(out, environment(dev, plan, data_root), plan, list(sys.argv if argv is None else argv))
    tmp = None
    if args.work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        work = tmp
    else:
        work = args.work_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    global_deadline = time.perf_counter() + plan.timeout_s

    def on_timeout() -> None:
        with rep.lock:
            rep.aborted = f"global timeout {plan.timeout_s:.0f} s in section {rep.current}"
            if rep.current:
                rep.add(rep.current, "global watchdog", str(dev), "TIMEOUT", note=rep.aborted)
                rep.section_data(rep.current)["status"] = "TIMEOUT"
        _kill_child()
        with contextlib.suppress(Exception):
            rep.write()
        print("\n" + rep.table() + f"\n\n{rep.aborted}; wrote {out}", flush=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        os._exit(3)

    watchdog = threading.Timer(plan.timeout_s, on_timeout)
    watchdog.daemon = True
    watchdog.start()
    print(f"gpu_check: mode {plan.mode}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if cuda else "")
          + f", sections {', '.join(sections)}, timeout {plan.timeout_s:.0f} s", flush=True)
    try:
        for name in sections:
            rep.current = name
            budget = Budget(plan.budgets[name], global_deadline)
            data = rep.section_data(name)
            data.update({"budget_s": plan.budgets[name], "status": "RUNNING"})
            print(f"[{time.perf_counter() - rep.started:6.1f} s] {name} ...", flush=True)
            try:
                RUNNERS[name](rep, dev, plan, data_root, budget, work)
            except Exception as exc:
                rep.add(name, "exception", str(dev), "ERROR", note=_short(exc))
                data["error"] = traceback.format_exc()[-4000:]
            finally:
                free(dev)
            data["wall_s"] = budget.elapsed()
            data["status"] = rep.status_of(name)
            rep.write()
            for r in rep.rows:
                if r["section"] == name:
                    print(f"    {r['status']:<7} {r['check']}", flush=True)
        rep.current = None
    finally:
        watchdog.cancel()
    rep.write()
    counts = ", ".join(f"{v} {k}" for k, v in sorted(rep.counts().items()))
    print("\n" + rep.table())
    print(f"\n{counts}; {time.perf_counter() - rep.started:.0f} s; wrote {out}")
    if not cuda:
        print("(CPU smoke run: no CUDA here; the numbers are not GPU results)")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return rep.exit_code()


if __name__ == "__main__":
    sys.exit(main())
