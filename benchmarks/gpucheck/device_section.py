"""Section ``device``: the memory read under autocast, forward/backward and AMP steps, and
``segment_video``, each on the device against the CPU."""
from __future__ import annotations

import contextlib
import copy
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from kmnlib.inference import segment_video
from kmnlib.memory import memory_read
from kmnlib.synthesis import collate_clips
from kmnlib.training.batches import build_clip_dataset
from kmnlib.training.step import StepModule, clip_losses, train_step

from .device import fp32_settings, free, peak_mem, reset_peak, strict_fp32, sync
from .inputs import load_sequence, seeded_model, val_sequences
from .plan import Plan
from .report import Budget, Report, short_error

# Tolerances.
SEG_PROB_TOL = 1e-3        # segment_video probabilities, device vs CPU, strict fp32
TF32_PROB_WARN = 1e-2      # the same with PyTorch's default TF32 convolutions (reported only)
LOSS_REL_TOL = 1e-3        # fp32 loss, device vs CPU
GRAD_REL_TOL = 1e-2        # fp32 gradient vector, relative L2 distance, device vs CPU
READ_ATOL = 1e-4           # memory read: float32 arithmetic on top of the output dtype's rounding


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
                              **({"budget_bytes": chunk_budget} if chunk_budget else {}))
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
                                 "pretrain.hide_grid": max(1, plan.fwd_crop // 16),
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
            rep.add("device", "exception", str(dev), "ERROR", note=short_error(exc))
            data.setdefault("errors", []).append(traceback.format_exc()[-4000:])
            free(dev)
