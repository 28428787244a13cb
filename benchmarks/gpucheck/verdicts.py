"""Verdicts: pure functions of recorded numbers (unit-tested in tests/test_gpu_check.py)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


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
