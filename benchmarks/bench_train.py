"""Training throughput of a profile on this machine, and the wall time of each training stage it implies.

    python benchmarks/bench_train.py --profile mini [--steps 6] [--warmup 2] [--threads N]

For each stage it builds the real clip dataset (static sets / DAVIS-2016 train) and the profile's
model, runs ``--warmup`` untimed and ``--steps`` timed iterations of :func:`kmnlib.train.train_step`
(data loading included, as in ``train_stage`` with num_workers=0), and prints s/iteration, clips/s and
the estimated stage time = iterations × median s/iteration. The ratio printed last is estimated stage
time / the per-stage budget (``--budget-min``, 7.5 min for the mini study). Timings on a CPU shared with
other jobs vary run to run; the load average is printed with them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmnlib.config import STAGES, get_profile, resolve_data_root  # noqa: E402
from kmnlib.model import build_model  # noqa: E402
from kmnlib.training.batches import StepBatches, build_clip_dataset  # noqa: E402
from kmnlib.training.step import StepModule, train_step  # noqa: E402


def bench_stage(profile, stage: str, *, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Time ``steps`` training iterations of ``stage`` after ``warmup`` ones; returns the figures."""
    cfg = profile.stage(stage)
    clips = build_clip_dataset(profile, stage, resolve_data_root(), hide=True)
    batches = StepBatches(clips, cfg.batch_size, start=0, total=cfg.iterations)
    torch.manual_seed(profile.seed)
    model = build_model(profile.model).to(device)
    model.train()
    model.freeze_bn()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    step_module = StepModule(model)
    # Spread the timed steps over the stage so the ramps (HaS p, frame gap) are sampled too.
    idx = [round(i * (cfg.iterations - 1) / max(warmup + steps - 1, 1)) for i in range(warmup + steps)]
    times, data_times, objects = [], [], []
    for n, s in enumerate(idx):
        t0 = time.perf_counter()
        batch = batches.batch(s)
        t1 = time.perf_counter()
        train_step(step_module, opt, scaler, batch, step=s, device=device)
        t2 = time.perf_counter()
        if n >= warmup:
            times.append(t2 - t0)
            data_times.append(t1 - t0)
            objects.append(float(batch["num_objects"].float().mean()))
    med = statistics.median(times)
    return {"s_per_iter": med, "s_per_iter_min": min(times), "s_per_iter_max": max(times),
            "data_s_per_iter": statistics.median(data_times), "clips_per_s": cfg.batch_size / med,
            "objects_per_clip": statistics.mean(objects), "iterations": cfg.iterations,
            "est_stage_min": cfg.iterations * med / 60}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--budget-min", type=float, default=7.5, help="per-stage time budget in minutes")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    profile = get_profile(a.profile)
    device = torch.device("cpu")
    print(f"profile={profile.name} backbone={profile.model.backbone} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load_avg_before={os.getloadavg()[0]:.2f}")
    for stage in a.stages:
        cfg = profile.stage(stage)
        r = bench_stage(profile, stage, steps=a.steps, warmup=a.warmup, device=device)
        print(f"{stage:8s} batch={cfg.batch_size} crop={cfg.crop_size} objects/clip={r['objects_per_clip']:.2f} "
              f"s/iter median={r['s_per_iter']:.3f} (min {r['s_per_iter_min']:.3f}, max {r['s_per_iter_max']:.3f}; "
              f"data {r['data_s_per_iter']:.3f}) clips/s={r['clips_per_s']:.2f} "
              f"iterations={r['iterations']} est_stage={r['est_stage_min']:.1f} min "
              f"ratio_to_budget={r['est_stage_min'] / a.budget_min:.2f}")
    print(f"load_avg_after={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
