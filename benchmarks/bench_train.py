"""Training-step speed of a profile's stages: the step before the speed work against the study's,
interleaved, with their loss curves side by side.

    python benchmarks/bench_train.py --profile mini [--steps 50] [--threads 1] \
        [--init results/mini/checkpoints/pretrain.pt]

For each stage, three models start from the same weights and train on the same real batches
(:class:`kmnlib.training.batches.StepBatches` of the stage's clip dataset, data synthesis
included), one step of each in turn (order alternating), so all see the same machine load:

* ``before``  — contiguous weights, subnormal floats computed as such (the step before the work);
* ``flush``   — contiguous, subnormals flushed to zero (``kmnlib.denormals.flush_denormals``, every thread);
* ``after``   — channels-last weights and the flush: what the study's ``Trainer`` runs.

Printed per stage: median s/iteration of each, the speed-up over ``before``, and the largest
difference between each one's per-iteration losses and ``before``'s over the ``--steps``
iterations (channels-last changes float rounding, the flush values below 1.2e-38; training then
amplifies such differences slowly).
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

from kmnlib.checkpoints import load_checkpoint  # noqa: E402
from kmnlib.config import STAGES, get_profile, resolve_data_root  # noqa: E402
from kmnlib.denormals import flush_denormals  # noqa: E402
from kmnlib.model import build_model  # noqa: E402
from kmnlib.training.batches import StepBatches, build_clip_dataset  # noqa: E402
from kmnlib.training.step import StepModule, train_step  # noqa: E402

VARIANTS = {"before": ("contiguous", False), "flush": ("contiguous", True),
            "after": ("channels_last", True)}  # name: (memory format, flush subnormals)


def bench_stage(profile, stage: str, *, steps: int, warmup: int, init: Path | None = None
                ) -> dict[str, dict[str, float]]:
    cfg = profile.stage(stage)
    clips = build_clip_dataset(profile, stage, resolve_data_root(), hide=True)
    batches = StepBatches(clips, cfg.batch_size, start=0, total=cfg.iterations)
    torch.manual_seed(profile.seed)
    reference = build_model(replace(profile.model, memory_format="contiguous"))
    if init is not None:  # as the study's main stage starts: from the pre-trained checkpoint
        reference.load_state_dict(load_checkpoint(init)["model"])
    runs = {}
    for name, (layout, _) in VARIANTS.items():
        model = build_model(replace(profile.model, memory_format=layout))
        model.load_state_dict(reference.state_dict())
        model.train()
        model.freeze_bn()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        runs[name] = (StepModule(model), opt, torch.amp.GradScaler("cuda", enabled=False))
    times = {k: [] for k in VARIANTS}
    losses = {k: [] for k in VARIANTS}
    names = list(VARIANTS)
    for s in range(warmup + steps):
        batch = batches.batch(s)
        for name in (names if s % 2 == 0 else names[::-1]):
            module, opt, scaler = runs[name]
            flush_denormals(VARIANTS[name][1])  # every thread (kmnlib.denormals); before every step
            t0 = time.perf_counter()
            out = train_step(module, opt, scaler, batch, step=s, device=torch.device("cpu"))
            if s >= warmup:
                times[name].append(time.perf_counter() - t0)
                losses[name].append(out["loss"])
    return {k: {"s_per_iter": statistics.median(times[k]), "final_loss": losses[k][-1],
                "max_loss_diff": max(abs(a - b) for a, b in zip(losses["before"], losses[k]))}
            for k in VARIANTS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--init", type=Path, default=None,
                    help="checkpoint the main stage starts from (the study: checkpoints/pretrain.pt); "
                         "default: ImageNet weights, as pre-training starts")
    a = ap.parse_args(argv)
    if a.init is not None and not a.init.is_file():
        ap.error(f"--init {a.init}: no such file (a mini run writes results/mini/checkpoints/pretrain.pt)")
    if a.threads:
        torch.set_num_threads(a.threads)
    profile = get_profile(a.profile)
    print(f"profile={profile.name} backbone={profile.model.backbone} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load_avg_before={os.getloadavg()[0]:.2f} steps={a.steps}")
    for stage in a.stages:
        r = bench_stage(profile, stage, steps=a.steps, warmup=a.warmup,
                        init=a.init if stage == "main" else None)
        base = r["before"]["s_per_iter"]
        for name, v in r.items():
            print(f"{stage:8s} {name:<6} {v['s_per_iter']:.3f} s/it   speed-up "
                  f"{base / v['s_per_iter']:.2f}x   max |Δloss| vs before over {a.steps} it "
                  f"{v['max_loss_diff']:.2e}   final loss {v['final_loss']:.4f}", flush=True)
    print(f"load_avg_after={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
