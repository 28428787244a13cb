"""Section ``ddp``: ``torch.distributed.run`` on a temporary driver that trains for a few iterations."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from kmnlib.checkpoints import load_checkpoint
from kmnlib.config import REPO_ROOT

from .plan import DATA_OVERRIDES, Plan
from .report import Budget, Report

DDP_DRIVER = textwrap.dedent('''
    """Temporary torchrun driver written by benchmarks/gpu_check.py."""
    import json, os, sys, time
    import torch
    import torch.distributed as dist
    from kmnlib.config import get_profile
    from kmnlib.denormals import flush_denormals
    from kmnlib.training import train_stage

    cfg = json.loads(open(sys.argv[1]).read())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    flush_denormals()   # each rank is an entry point, as python -m kmnlib.train is
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


def kill_child() -> None:
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
            kill_child()
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
