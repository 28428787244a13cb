"""Training-step speed of a profile's stages: the layout before the speed work (contiguous weights)
against channels-last, interleaved, with their loss curves side by side.

    python benchmarks/bench_train.py --profile mini [--steps 50] [--threads 1]

For each stage, two models start from the same weights (``memory_format`` "contiguous" and
"channels_last") and train on the same real batches (:class:`kmnlib.training.batches.StepBatches`
of the stage's clip dataset, data synthesis included), one step of each in turn, so both see the
same machine load. Printed per stage: median s/iteration of each, the speed-up, and the largest
difference between their per-iteration losses over the ``--steps`` iterations (the curves stay
the same: channels-last changes float rounding only, which training then amplifies slowly).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmnlib.config import STAGES, get_profile, resolve_data_root  # noqa: E402
from kmnlib.model import build_model  # noqa: E402
from kmnlib.training.batches import StepBatches, build_clip_dataset  # noqa: E402
from kmnlib.training.step import StepModule, train_step  # noqa: E402

LAYOUTS = ("contiguous", "channels_last")


def bench_stage(profile, stage: str, *, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    cfg = profile.stage(stage)
    clips = build_clip_dataset(profile, stage, resolve_data_root(), hide=True)
    batches = StepBatches(clips, cfg.batch_size, start=0, total=cfg.iterations)
    torch.manual_seed(profile.seed)
    reference = build_model(replace(profile.model, memory_format="contiguous"))
    runs = {}
    for layout in LAYOUTS:
        model = build_model(replace(profile.model, memory_format=layout))
        model.load_state_dict(reference.state_dict())
        model.train()
        model.freeze_bn()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        runs[layout] = (StepModule(model), opt, torch.amp.GradScaler("cuda", enabled=False))
    times = {k: [] for k in LAYOUTS}
    losses = {k: [] for k in LAYOUTS}
    for s in range(warmup + steps):
        batch = batches.batch(s)
        order = LAYOUTS if s % 2 == 0 else LAYOUTS[::-1]
        for layout in order:
            module, opt, scaler = runs[layout]
            t0 = time.perf_counter()
            out = train_step(module, opt, scaler, batch, step=s, device=torch.device("cpu"))
            if s >= warmup:
                times[layout].append(time.perf_counter() - t0)
                losses[layout].append(out["loss"])
    diff = max(abs(a - b) for a, b in zip(losses["contiguous"], losses["channels_last"]))
    return {k: {"s_per_iter": statistics.median(times[k]), "final_loss": losses[k][-1],
                "max_loss_diff": diff} for k in LAYOUTS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    profile = get_profile(a.profile)
    print(f"profile={profile.name} backbone={profile.model.backbone} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load_avg_before={os.getloadavg()[0]:.2f} steps={a.steps}")
    for stage in a.stages:
        r = bench_stage(profile, stage, steps=a.steps, warmup=a.warmup)
        c, cl = r["contiguous"], r["channels_last"]
        print(f"{stage:8s} contiguous {c['s_per_iter']:.3f} s/it   channels_last "
              f"{cl['s_per_iter']:.3f} s/it   speed-up {c['s_per_iter'] / cl['s_per_iter']:.2f}x   "
              f"max |Δloss| over {a.steps} it {c['max_loss_diff']:.2e} (final loss "
              f"{c['final_loss']:.4f} vs {cl['final_loss']:.4f})", flush=True)
    print(f"load_avg_after={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
