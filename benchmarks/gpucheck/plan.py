"""Sizes of one run: the CUDA check at the paper's sizes, or the CPU smoke run at tiny ones."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from kmnlib.config import MINI, PAPER, TEST, Profile

SECTIONS = ("device", "train", "inference", "ddp")

#: The paper profile's training sets are not on this machine: the shared ones replace them.
DATA_OVERRIDES: dict[str, Any] = {
    "static_sets": ["coco-panoptic-200", "weizmann-horse"],
    "video_sets": ["DAVIS-2016:train"],
    "main.video_resolution": "240p",   # the shared DAVIS-2016 train exists only at 240p
}


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
