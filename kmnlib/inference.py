"""Video inference: segment one video from its given masks with STM's or KMN's memory read.

The procedure follows the official STM evaluation (``Run_video`` of github.com/seoungwugoh/STM
``eval_DAVIS.py``): frame 0 is memorised with its given mask; before segmenting frame ``t`` the
previous frame ``t-1`` is memorised with its own soft prediction; frames 0, ``mem_every``,
``2·mem_every``, … stay in memory for good, other previous frames only for the next step
(:func:`kmnlib.memory_bank.memory_schedule`, held by a :class:`kmnlib.memory_bank.MemoryBank`).
Each memorised frame is encoded once. Objects are a batch; their foreground probabilities are
merged by STM's soft aggregation. One step of this is :class:`kmnlib.propagation.Propagator`;
:func:`segment_video` drives it over a video. Dataset-level prediction (files, resizing) is
:mod:`kmnlib.predict`.

Objects that first appear mid-video (YouTube-VOS) are given as ``later_masks``: an object takes no
part before its first frame (foreground 0), its given mask replaces the prediction there, and that
frame stays in memory for good — the practice of STM-family YouTube-VOS evaluations (STM did not
publish theirs).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from kmnlib.config import InferenceConfig
from kmnlib.data.masks import VOID
from kmnlib.memory_bank import memory_schedule
from kmnlib.propagation import Hooks, Propagator
from kmnlib.read_backends import kernel_for


@runtime_checkable
class FrameSource(Protocol):
    """Frames produced when asked (e.g. read from disk), so a long video is never all in memory:
    ``shape`` is (T,3,H,W) and ``source[t]`` frame ``t`` as a uint8 (3,H,W) tensor. Each frame is
    asked for once, in order."""

    shape: tuple[int, int, int, int]

    def __getitem__(self, t: int) -> torch.Tensor: ...


def _label_tensor(mask: Any, size: tuple[int, int], what: str) -> torch.Tensor:
    """A label map (torch or numpy, integer ids) of the frame size as a long CPU tensor."""
    if isinstance(mask, np.ndarray):
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"segment_video: {what} must hold integer ids, got dtype {mask.dtype}")
        mask = torch.from_numpy(mask.astype(np.int64))
    elif isinstance(mask, torch.Tensor):
        if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
            raise ValueError(f"segment_video: {what} must hold integer ids, got dtype {mask.dtype}")
        mask = mask.to(torch.long)
    else:
        raise TypeError(f"segment_video: {what} must be a torch tensor or numpy array, "
                        f"got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(size):
        raise ValueError(f"segment_video: {what} shape {tuple(mask.shape)} differs from "
                         f"the frame size {tuple(size)}")
    return mask.cpu()


def _check_masks(first_mask: Any, later_masks: Mapping[int, Any] | None, num_frames: int,
                 size: tuple[int, int]) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, int]]:
    """Validate the given label maps; return (first (H,W), {t: later (H,W)}, {object: first frame}).

    Object ids over all given masks must be 1..N without gaps; an object's first frame is the
    first given mask holding it.
    """
    first = _label_tensor(first_mask, size, "first_mask")
    later: dict[int, torch.Tensor] = {}
    for t, m in sorted((later_masks or {}).items()):
        if not 1 <= int(t) < num_frames:
            raise ValueError(f"segment_video: later_masks frame {t} outside 1..{num_frames - 1}")
        later[int(t)] = _label_tensor(m, size, f"later_masks[{t}]")
    appear: dict[int, int] = {}
    for t, m in [(0, first), *later.items()]:
        for i in torch.unique(m).tolist():
            if i != 0:
                appear.setdefault(int(i), t)
    objects = sorted(appear)
    if not any(t == 0 for t in appear.values()):
        raise ValueError("segment_video: first_mask holds no object (only id 0)")
    if objects != list(range(1, len(objects) + 1)):
        raise ValueError(f"segment_video: object ids must be 1..N without gaps, got {objects}"
                         + (" (255 = void: map it to 0 first)" if VOID in objects else ""))
    return first, later, appear


def check_inputs(frames: Any, first_mask: Any, later_masks: Mapping[int, Any] | None,
                 sigma: float | None, mem_every: int
                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, int]]:
    """:func:`segment_video`'s inputs checked, with one-line errors: (first label map (H,W),
    {t: later label map}, {object: first frame}).

    Floating frames of any precision are accepted: float64, float16 or bfloat16 frames are
    converted to float32 (the model's precision) one frame at a time by :func:`_frame` — exact for
    float16/bfloat16, and within float32 rounding (~6e-8) for float64 images in [0,1]."""
    if isinstance(frames, torch.Tensor):
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] < 1 \
                or not (frames.is_floating_point() or frames.dtype == torch.uint8):
            raise ValueError("segment_video: frames must be a float tensor in [0,1] or a uint8 "
                             f"tensor, (T,3,H,W) with T >= 1, got {frames.dtype} {tuple(frames.shape)}")
    elif isinstance(frames, FrameSource) and not isinstance(frames, np.ndarray):
        if len(frames.shape) != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"segment_video: a frame source's shape must be (T,3,H,W) with T >= 1, "
                             f"got {tuple(frames.shape)}")
    else:
        raise ValueError("segment_video: frames must be a torch tensor (T,3,H,W), float in [0,1] "
                         f"or uint8, or a FrameSource, got {type(frames).__name__} (a NumPy array: "
                         "torch.from_numpy(...).permute(0, 3, 1, 2) for (T,H,W,3))")
    if isinstance(frames, torch.Tensor) and frames.is_floating_point():
        finite = torch.isfinite(frames).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"segment_video: frame(s) {bad[:5]} hold NaN or inf values; every "
                             f"frame must be finite in [0,1]")
        if frames.numel() and (frames.min() < 0 or frames.max() > 1):
            raise ValueError("segment_video: frames must lie in [0,1] (normalisation happens "
                             "inside the model)")
    if sigma is not None and not (isinstance(sigma, (int, float)) and math.isfinite(sigma)
                                  and sigma > 0):
        raise ValueError(f"segment_video: sigma must be a positive number or None (STM's read), "
                         f"got {sigma!r}")
    if not isinstance(mem_every, int) or isinstance(mem_every, bool) or mem_every < 1:
        raise ValueError(f"segment_video: mem_every must be an integer >= 1, got {mem_every!r}")
    num_frames, _, height, width = frames.shape
    return _check_masks(first_mask, later_masks, num_frames, (height, width))


def segment_video(model: torch.nn.Module, frames: torch.Tensor | FrameSource, first_mask: Any, *,
                  sigma: float | None, mem_every: int,
                  later_masks: Mapping[int, Any] | None = None, keep_probs: bool = True,
                  read_backend: str = InferenceConfig.read_backend,
                  read_budget_bytes: int = InferenceConfig.read_budget_bytes,
                  hooks: Sequence[Hooks] = ()) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Segment a video from its first-frame mask (semi-supervised VOS).

    ``frames``: float (T,3,H,W) in [0,1], or uint8 (converted frame by frame), or a
    :class:`FrameSource` giving uint8 frames when asked (any H, W: padded to multiples of 16
    inside, centred, and cropped back). ``first_mask``: integer label map (H,W) (torch or numpy),
    ids 0..N with objects 1..N contiguous. ``sigma=None`` is STM's memory read, a float KMN's
    kernel width (feature cells); ``mem_every`` the period of permanent memory frames;
    ``read_backend``/``read_budget_bytes`` how the read is computed (a profile's ``inference``
    gives all four). ``later_masks`` ``{t: label map}`` gives objects that first appear at frame
    ``t`` (ids continue the first mask's, 1..N over all masks); only the objects new at ``t`` are
    taken from it. ``hooks``: analyses (:class:`kmnlib.propagation.Hooks`).

    Returns ``(probs, labels)`` on the CPU: float32 (T,N+1,H,W) soft probabilities (frame 0 = the
    given mask one-hot) and uint8 label maps (T,H,W); ``keep_probs=False`` returns
    ``(None, labels)`` and never holds more than the last frame's probabilities.
    """
    first, later, appear = check_inputs(frames, first_mask, later_masks, sigma, mem_every)
    num_frames = frames.shape[0]
    prop = Propagator(model, memory_schedule(num_frames, mem_every, keep=later),
                      [appear[o] for o in range(1, len(appear) + 1)], sigma=sigma,
                      kernel=kernel_for(read_backend), budget_bytes=read_budget_bytes, hooks=hooks)
    store = _ProbStore(num_frames, (len(appear) + 1, *frames.shape[-2:]), keep_probs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for t in range(num_frames):
                given = first if t == 0 else _new_objects(later.get(t), appear, t)
                store[t] = prop.step(t, _frame(frames, t, prop.device), given)
    finally:
        model.train(was_training)
    return store.result()


def _new_objects(mask: torch.Tensor | None, appear: dict[int, int], t: int) -> torch.Tensor | None:
    """The objects of a later given mask that first appear at ``t`` (others set to 0)."""
    if mask is None:
        return None
    new = [o for o, f in appear.items() if f == t]
    return torch.where(torch.isin(mask, torch.tensor(new, dtype=mask.dtype)), mask, 0)


class _ProbStore:
    """Per-frame results of :func:`segment_video`: every frame's probabilities (``keep=True``),
    or only each frame's labels, taken as it is stored."""

    def __init__(self, num_frames: int, shape: tuple[int, int, int], keep: bool) -> None:
        self.keep = keep
        if keep:
            self.all = torch.zeros(num_frames, *shape, dtype=torch.float32)
        else:
            self.labels = torch.zeros(num_frames, *shape[1:], dtype=torch.uint8)

    def __setitem__(self, t: int, p: torch.Tensor) -> None:
        if self.keep:
            self.all[t] = p
        else:
            self.labels[t] = labels_from_probs(p)

    def result(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return (self.all, labels_from_probs(self.all)) if self.keep else (None, self.labels)


def _frame(frames: torch.Tensor | FrameSource, t: int, device: torch.device) -> torch.Tensor:
    """Frame ``t`` as float in [0,1] on ``device`` (uint8 videos are converted one frame at a time,
    so a long video costs a quarter of the memory of a float one)."""
    frame = frames[t]
    if not isinstance(frames, torch.Tensor):
        expect = (3, *frames.shape[2:])
        if not (isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8
                and tuple(frame.shape) == expect):
            got = (f"{frame.dtype} {tuple(frame.shape)}" if isinstance(frame, torch.Tensor)
                   else type(frame).__name__)
            raise ValueError(f"segment_video: frame {t} of the frame source must be a uint8 "
                             f"tensor {expect}, got {got}")
    frame = frame.to(device)
    # float64/float16/bfloat16 frames become float32, the model's precision (see check_inputs).
    return frame.float().div_(255.0) if frame.dtype == torch.uint8 else frame.float()


def labels_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(dim=-3)`` as uint8 label maps: (…,C,H,W) → (…,H,W), ties to the lower id.

    A running strict ``>`` over the few channels gives argmax's first-maximum rule; torch's argmax
    along a short, strided channel axis is many times slower on CPU
    (``benchmarks/bench_labels.py``), and was a large share of a DAVIS evaluation's time.
    """
    if probs.dim() < 3 or probs.shape[-3] > 256:
        raise ValueError(f"labels_from_probs: expected (...,C,H,W) with C <= 256, got {tuple(probs.shape)}")
    n = probs.shape[-3]
    best = probs.select(-3, 0)
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for c in range(1, n):
        channel = probs.select(-3, c)
        labels.masked_fill_(channel > best, c)
        if c < n - 1:
            best = torch.maximum(best, channel)
    return labels
