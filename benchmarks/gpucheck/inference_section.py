"""Section ``inference``: s/frame of ``segment_video`` and peak memory, the paper's runtime column."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from kmnlib.inference import segment_video
from kmnlib.model.fold import fold_batchnorm

from .device import fp32_settings, free, peak_mem, reset_peak, sync
from .inputs import load_sequence, seeded_model, val_sequences
from .plan import Plan
from .report import Budget, Report

#: Paper Table 1, s/frame on one GTX 1080Ti (kmnlib.study.paper.RUNTIME_S_PER_FRAME).
PAPER_RUNTIME_S_PER_FRAME = {"KMN": 0.12, "STM": 0.16}


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
