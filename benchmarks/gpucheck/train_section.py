"""Section ``train``: a training smoke run of pre-training, main training killed, and a resume."""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmnlib.checkpoints import load_checkpoint
from kmnlib.training import train_stage

from .device import free, peak_mem, reset_peak
from .plan import Plan
from .report import Budget, Report
from .verdicts import adam_step_bound, loss_trend, resume_verdict


class OutOfTime(Exception):
    """Raised by a training callback when the section's budget is spent."""


class Killed(Exception):
    """The simulated kill of the main stage (raised by its callback after the kill iteration)."""



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
