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
    replaced by the shared ones (:data:`gpucheck.plan.DATA_OVERRIDES`). 50 pre-training iterations,
    50 main iterations then a kill, and a resume of the main stage for 10 more. Checked: losses finite
    and falling (mean of the last fifth below the first fifth), the resume continued from the
    checkpoint (:func:`gpucheck.verdicts.resume_verdict`); reported: iterations/s and peak GPU memory.
``inference``
    s/frame of ``segment_video`` at 480p on 3 DAVIS-2016 val sequences (first ``--frames`` frames
    each), STM read (σ=None) and kernel read (σ=7), fp32 and AMP (fp16 autocast), ResNet-50
    (paper widths) and EfficientNet-Lite0 (mini widths), random weights, BatchNorm folded (as
    :func:`kmnlib.checkpoints.load_model` does by default), plus peak GPU memory — the paper's
    runtime column (Table 1: KMN 0.12 / STM 0.16 s/frame on a GTX 1080Ti) re-measured.
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
table and written atomically to ``--out`` after every section. ``--out`` defaults to
``gpu_check.json`` in the system's temporary folder (``tempfile.gettempdir()``, i.e. ``$TMPDIR`` or
``/tmp``), never to the committed H200 record ``benchmarks/gpu_check.json``: that file is written
only when named, ``--out benchmarks/gpu_check.json``.
Exit status 1 if any row is FAIL or ERROR, 3 if the global ``--timeout-s`` watchdog fired (the JSON
then holds what was done), else 0. Every section has a time budget (``--budget SECTION=SECONDS``);
a section out of budget stops early and marks what it did not do as SKIP.

This file is the command line (arguments, the section loop, the watchdog); the plan, the report,
the verdicts and each section are modules of the package ``benchmarks/gpucheck/``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The repository root (kmnlib) and benchmarks/ (the gpucheck package) on sys.path, also when this file
# is imported from elsewhere (benchmarks/gpu_data_subset.py, tests/test_gpu_check.py).
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

import torch  # noqa: E402

from gpucheck.ddp_section import kill_child, section_ddp  # noqa: E402
from gpucheck.device import free  # noqa: E402
from gpucheck.device_section import section_device  # noqa: E402
from gpucheck.environment import environment  # noqa: E402
from gpucheck.inference_section import section_inference  # noqa: E402
# DATA_OVERRIDES is re-exported: benchmarks/gpu_data_subset.py imports it from here.
from gpucheck.plan import DATA_OVERRIDES, SECTIONS, make_plan  # noqa: E402,F401
from gpucheck.report import Budget, Report, short_error  # noqa: E402
from gpucheck.train_section import section_train  # noqa: E402
from kmnlib.config import resolve_data_root  # noqa: E402
from kmnlib.denormals import flush_denormals  # noqa: E402

#: The committed H200 record: written only when ``--out`` names it.
RECORD = HERE / "gpu_check.json"


def default_out() -> Path:
    """Where ``--out`` points when not given: the system's temporary folder, never :data:`RECORD`."""
    return Path(tempfile.gettempdir()) / "gpu_check.json"


OUT_HELP = f"JSON file (default {default_out()}; the record {RECORD} is written only when named here)"


RUNNERS = {"device": section_device, "train": section_train, "inference": section_inference,
           "ddp": section_ddp}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="sections: " + ", ".join(SECTIONS))
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny sizes on the CPU even if CUDA is there (what CI runs)")
    ap.add_argument("--out", type=Path, default=default_out(), help=OUT_HELP)
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
    flush_denormals()   # the entry point's job; the train section runs train_stage in-process
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
        kill_child()
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
                rep.add(name, "exception", str(dev), "ERROR", note=short_error(exc))
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
