"""Dataset-level prediction: segment every video of a reader and write DAVIS-style result PNGs.

Frames are read as stored, resized to the inference height, segmented by
:func:`kmnlib.inference.segment_video`, and the probabilities resized back (bilinear, then argmax)
to the size the results are evaluated at.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kmnlib.data.masks import VOID, write_label_map
from kmnlib.data.video import VideoDataset, VideoSequence, select_sequences
from kmnlib.config import InferenceConfig
from kmnlib.inference import labels_from_probs, segment_video
from kmnlib.model.ops import resize_frames, resize_labels
from kmnlib.propagation import Hooks


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _DiskFrames:
    """Frames ``start…`` of ``seq`` as a :class:`~kmnlib.inference.FrameSource`: each read from disk
    (and resized to ``height`` rows, as :func:`~kmnlib.model.ops.resize_frames` does) when
    segment_video asks (once per frame, in order), the last one kept. ``read_seconds`` sums the time spent reading, which run_dataset's
    timings exclude. Holding all of a 180-frame 480p video was 0.21 GiB
    (benchmarks/bench_memory_ceiling.py)."""

    def __init__(self, seq: VideoSequence, start: int, height: int | None) -> None:
        self.seq, self.start, self.height = seq, start, height
        self._recent: dict[int, torch.Tensor] = {}
        self.read_seconds = 0.0
        self.shape = (len(seq) - start, 3, *self[0].shape[-2:])
        self.read_seconds = 0.0   # frame 0 was read before run_dataset's clock starts

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> torch.Tensor:
        if t not in self._recent:
            began = time.perf_counter()
            frame = torch.from_numpy(self.seq.load_frames([self.start + t])).permute(0, 3, 1, 2)
            if self.height is not None:
                frame = resize_frames(frame, self.height)
            self._recent = {t: frame[0]}
            self.read_seconds += time.perf_counter() - began
        return self._recent[t]


def _resized_labels(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps (T,H',W') of (T,C,H,W) probabilities resized bilinearly to ``size`` = (H',W').

    Frame by frame, so memory stays that of one upsampled frame. With one object (C = 2) the
    label is ``p₁ > p₀``, i.e. the sign of the resized difference (interpolation is linear), so one
    channel is resized instead of two.
    """
    out = torch.empty(probs.shape[0], *size, dtype=torch.uint8)
    for t in range(probs.shape[0]):
        if probs.shape[1] == 2:
            diff = (probs[t:t + 1, 1:] - probs[t:t + 1, :1])
            up = F.interpolate(diff, size=size, mode="bilinear", align_corners=False)[0, 0]
            out[t] = (up > 0).to(torch.uint8)
        else:
            up = F.interpolate(probs[t:t + 1], size=size, mode="bilinear", align_corners=False)[0]
            out[t] = labels_from_probs(up)
    return out


def _given_masks(seq: Any) -> tuple[int, dict[int, torch.Tensor], list[int]]:
    """The annotations inference starts from: (first frame, {frame: label map 1..N}, dataset ids).

    The first annotated frame gives every object in it (void 255 counts as background); a later
    first annotation (YouTube-VOS) gives only the objects that first appear there. Object ``k`` of
    the maps is ``ids[k-1]`` of the dataset.
    """
    appear = dict(seq.first_frame)
    start = min(appear.values(), default=0)
    masks: dict[int, np.ndarray] = {}
    ids: list[int] = []
    for f in sorted(set(appear.values()) | {start}):
        m = seq.load_mask(f).astype(np.int64)
        m[m == VOID] = 0
        if f != start:
            new = [o for o, g in appear.items() if g == f]
            m[~np.isin(m, new)] = 0
        present = sorted(int(i) for i in np.unique(m) if i != 0)
        if not present:
            raise ValueError(f"{seq.mask_paths[f]}: "
                             + ("first-frame annotation holds no object" if f == start else
                                f"none of the objects {new} said to appear here"))
        masks[f], ids = m, ids + [i for i in present if i not in ids]
    lut = np.zeros(max(ids) + 1, dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return start, {f: torch.from_numpy(lut[m]) for f, m in masks.items()}, ids


def run_dataset(model: torch.nn.Module, dataset: VideoDataset, out_dir: str | os.PathLike, *,
                sigma: float | None, mem_every: int, infer_height: int | None,
                resolution_out: tuple[int, int] | str | None, sequences: Sequence[str] | None = None,
                device: str | torch.device = "cpu", precision: str = "fp32",
                read_backend: str = InferenceConfig.read_backend,
                read_budget_bytes: int = InferenceConfig.read_budget_bytes,
                hooks: Callable[[VideoSequence, int, tuple[int, int]], Sequence[Hooks]] | None = None,
                report: Callable[[str], None] | None = None) -> dict[str, float]:
    """Segment every sequence of ``dataset`` and write ``out_dir/<seq>/<frame>.png`` label maps.

    ``dataset`` is a video reader (:class:`~kmnlib.data.video.VideoDataset`: DAVIS or YouTube-VOS);
    ``sequences`` restricts it to those names (each must be in it). The first annotation gives the
    objects (void 255 counts as background); objects whose first annotation comes later
    (YouTube-VOS, ``seq.first_frame``) join there (:func:`segment_video`'s ``later_masks``). Frames
    before the first annotation are written as background. Ids are mapped to 1..N for the model
    and back to the dataset's ids in the PNGs. ``infer_height`` downsizes frames
    (:func:`~kmnlib.model.ops.resize_frames`; given masks nearest) to that height, keeping the
    aspect ratio; None keeps the stored size. ``resolution_out``: None writes at the inference size,
    ``"gt"`` at the sequence's stored size, ``(H, W)`` at that size; resizing is bilinear on the
    probabilities followed by argmax (never nearest on labels). ``sigma``, ``mem_every``,
    ``read_*`` as in :func:`segment_video`. ``precision`` "bf16" runs the model on ``device``
    under bfloat16 autocast (the read stays float32). ``report`` gets a progress line per video.
    ``hooks(seq, start, size)`` (analyses) gives the :class:`~kmnlib.propagation.Hooks` of a video
    segmented from frame ``start`` at inference ``size`` (H, W). Returns s/frame of
    ``segment_video`` (reading/writing excluded), by name.
    """
    _check_run_args(resolution_out, precision)
    out_dir = Path(out_dir)
    names = select_sequences(dataset.names, sequences, repr(dataset))
    model.to(device)
    timings: dict[str, float] = {}
    for name in names:
        seq = dataset[name]
        first_frame, given, ids = _given_masks(seq)
        # Read from disk as segment_video asks, uint8: a long video is never all in memory.
        frames = _DiskFrames(seq, first_frame, infer_height)
        if infer_height is not None:
            given = _resized_given(seq, given, tuple(frames.shape[-2:]))
        later = {f - first_frame: m for f, m in given.items() if f != first_frame}
        seq_hooks = () if hooks is None else hooks(seq, first_frame, tuple(frames.shape[-2:]))
        size = tuple(frames.shape[-2:])
        if resolution_out is not None:
            size = tuple(seq.size) if resolution_out == "gt" else tuple(int(s) for s in resolution_out)
        # Probabilities of every frame are needed only to resize the labels; otherwise segment_video
        # keeps just the frames its memory will encode (benchmarks/bench_memory_ceiling.py).
        resize = size != tuple(frames.shape[-2:])
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                            enabled=PRECISIONS[precision] is torch.bfloat16):
            probs, labels = segment_video(model, frames, given[first_frame], sigma=sigma,
                                          mem_every=mem_every, later_masks=later, keep_probs=resize,
                                          read_backend=read_backend,
                                          read_budget_bytes=read_budget_bytes, hooks=seq_hooks)
        timings[seq.name] = (time.perf_counter() - start - frames.read_seconds) / len(frames)
        if report is not None:
            report(f"{len(timings)}/{len(names)} {seq.name}: {len(frames)} frames, "
                   f"{timings[seq.name]:.3f} s/frame")
        _write_video(out_dir, seq, _resized_labels(probs, size) if resize else labels, first_frame,
                     ids)
    return timings


def _check_run_args(resolution_out: Any, precision: str) -> None:
    if not (resolution_out is None or resolution_out == "gt"
            or (isinstance(resolution_out, (tuple, list)) and len(resolution_out) == 2)):
        raise ValueError(f"run_dataset: resolution_out must be None, 'gt' or (H, W), "
                         f"got {resolution_out!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"run_dataset: precision must be one of {list(PRECISIONS)}, got {precision!r}")


def _resized_given(seq: VideoSequence, given: dict[int, torch.Tensor], size: tuple[int, int]
                   ) -> dict[int, torch.Tensor]:
    """The given label maps at the inference ``size`` (nearest); an object may not vanish."""
    out = {}
    for f, m in given.items():
        small = resize_labels(m, size)
        if set(torch.unique(small).tolist()) != set(torch.unique(m).tolist()):
            raise ValueError(f"{seq.mask_paths[f]}: an object vanishes when the mask is "
                             f"resized to {small.shape[0]}x{small.shape[1]}; use a larger "
                             f"infer_height")
        out[f] = small
    return out


def _write_video(out_dir: Path, seq: VideoSequence, labels: torch.Tensor, first_frame: int,
                 ids: list[int]) -> None:
    """Label maps (T,H,W) of the frames from ``first_frame`` on (background before it) as PNGs,
    objects 1..N mapped back to the dataset's ``ids``."""
    if first_frame:
        labels = torch.cat([labels.new_zeros(first_frame, *labels.shape[1:]), labels])
    # 1..N → the dataset's object ids, one frame at a time: the whole video as int64 indices
    # was 8× the labels (0.55 GiB at 180 frames of 480p) and the run's peak memory
    # (benchmarks/bench_memory_ceiling.py).
    back = np.array([0] + ids, dtype=np.uint8)
    for i, path in enumerate(seq.frame_paths):
        write_label_map(out_dir / seq.name / f"{Path(path).stem}.png", back[labels[i].numpy()])
