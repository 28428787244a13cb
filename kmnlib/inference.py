"""Video inference: segment one video from its given masks with STM's or KMN's memory read.

The procedure follows the official STM evaluation (``Run_video`` of github.com/seoungwugoh/STM
``eval_DAVIS.py``): frame 0 is memorised with its given mask; before segmenting frame ``t`` the
previous frame ``t-1`` is memorised with its own soft prediction; frames 0, ``mem_every``,
``2·mem_every``, … stay in memory for good, other previous frames only for the next step
(:func:`kmnlib.memory_bank.memory_schedule`, held by a :class:`kmnlib.memory_bank.MemoryBank`).
Each memorised frame is encoded once. Objects are a batch; their foreground probabilities are
merged by STM's soft aggregation. Dataset-level prediction (files, resizing) is
:mod:`kmnlib.predict`.

Objects that first appear mid-video (YouTube-VOS) are given as ``later_masks``: an object takes no
part before its first frame (foreground 0), its given mask replaces the prediction there, and that
frame stays in memory for good — the practice of STM-family YouTube-VOS evaluations (STM did not
publish theirs).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from kmnlib.data.masks import VOID
from kmnlib.memory_bank import MemoryBank, memory_schedule
from kmnlib.model.ops import cell_coverage, pad_divide_by, soft_aggregate, unpad


@runtime_checkable
class FrameSource(Protocol):
    """Frames produced when asked (e.g. read from disk), so a long video is never all in memory:
    ``shape`` is (T,3,H,W) and ``source[t]`` frame ``t`` as a uint8 (3,H,W) tensor. Each frame is
    asked for at most twice (segmented, then perhaps memorised at the next step)."""

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


def _memory_masks(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N+1,H,W) probabilities → per-object mask (N,H,W) and union of the other objects (N,H,W)."""
    fg = probs[1:]
    # Σ_{o'≠o, o'≥1} p_o' = (Σ_all objects) − p_o, clamped as the official memorize does.
    other = (fg.sum(dim=0, keepdim=True) - fg).clamp_(0.0, 1.0)
    return fg, other


def segment_video(model: torch.nn.Module, frames: torch.Tensor | FrameSource, first_mask: Any, *,
                  sigma: float | None, mem_every: int,
                  trace: list[tuple[int, list[int]]] | None = None,
                  later_masks: Mapping[int, Any] | None = None,
                  oracle: Callable[[int], torch.Tensor] | None = None,
                  keep_probs: bool = True
                  ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Segment a video from its first-frame mask (semi-supervised VOS).

    ``frames``: float (T,3,H,W) in [0,1], or uint8 (converted frame by frame), or a
    :class:`FrameSource` giving uint8 frames when asked (any H, W: padded to multiples of 16
    inside, centred, and cropped back). ``first_mask``: integer label map (H,W) (torch or numpy), ids 0..N with objects
    1..N contiguous. ``sigma=None`` is STM's memory read, a float KMN's kernel width (feature cells);
    ``mem_every`` the period of permanent memory frames (a profile's ``inference`` gives both).
    Returns ``(probs, labels)`` on the CPU: float32 (T,N+1,H,W) soft probabilities (frame 0 = the
    given mask one-hot) and uint8 label maps (T,H,W). ``keep_probs=False`` returns ``(None, labels)``
    and holds probabilities only of the frames the memory has yet to encode, so memory no longer
    grows with T·(N+1)·H·W floats (the labels are the same). If ``trace`` is a list, ``(t, frames in
    memory)`` is appended for every segmented frame — what was actually read, for inspection.
    ``later_masks`` ``{t: label map}`` gives objects that first appear at frame ``t`` (ids continue
    the first mask's, 1..N over all masks); only the objects new at ``t`` are taken from it, the
    others keep their prediction.

    ``oracle`` (an analysis intervention, not the method): ``oracle(t)`` gives a bool (H,W) map of
    frame ``t``; query cells mostly inside it read nothing from memory cells that hold the object
    (memorised mask > 0.5 over the cell) — e.g. a distractor's pixels, to tell a leak caused by
    the read from one the decoder makes on its own.
    """
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
    labels0, later, appear = _check_masks(first_mask, later_masks, num_frames, (height, width))
    n_obj = len(appear)
    device = next(model.parameters()).device
    # First frame of each object (row o-1): an object takes part from the frame after it.
    first_seen = torch.tensor([appear[o] for o in range(1, n_obj + 1)], device=device)
    bank = MemoryBank(memory_schedule(num_frames, mem_every, keep=later))
    object_cells: dict[int, torch.Tensor] = {}  # oracle only: memorised frame → object cells
    was_training = model.training
    model.eval()

    probs = _ProbStore(num_frames, (n_obj + 1, height, width), keep_probs,
                       will_encode={f for frames_read in bank.schedule for f in frames_read})
    probs[0] = F.one_hot(labels0, n_obj + 1).permute(2, 0, 1).float()
    try:
        with torch.inference_mode():
            for t in range(1, num_frames):
                for f in bank.missing(t):
                    # Encoded once, with the frame's own soft prediction (the given mask for frame 0).
                    frame_p, _ = pad_divide_by(_frame(frames, f, device))
                    mask, other = _memory_masks(probs[f].to(device))
                    mask_p, _ = pad_divide_by(mask)
                    other_p, _ = pad_divide_by(other)
                    bank.insert(f, *model.encode_memory(frame_p.expand(n_obj, -1, -1, -1), mask_p,
                                                        other_p))
                    if oracle is not None:
                        object_cells[f] = cell_coverage(mask_p) > 0.5
                    probs.encoded(f)
                mem_k, mem_v = bank.read(t)
                if trace is not None:
                    trace.append((t, bank.frames(t)))
                frame_p, pad = pad_divide_by(_frame(frames, t, device))
                qk, qv, f8, f4 = model.encode_query(frame_p[None])
                blocked = None
                if oracle is not None:
                    query_cells = cell_coverage(oracle(t).to(device)[None]) > 0.5
                    blocked = (torch.stack([object_cells[f] for f in bank.schedule[t]], dim=1),
                               query_cells.expand(n_obj, -1, -1))
                fg = model.segment(qk, qv, f8, f4, mem_k, mem_v, sigma=sigma,
                                   blocked=blocked)   # N,Hp,Wp
                absent = first_seen >= t    # objects not given yet (or given at t itself)
                if bool(absent.any()):
                    fg = fg.masked_fill(absent[:, None, None], 0.0)
                    merged = torch.softmax(soft_aggregate(fg), dim=0)
                    merged[1:][absent] = 0.0  # exactly 0, not soft aggregation's clamped 1e-7 share
                    merged = merged / merged.sum(dim=0, keepdim=True)
                else:
                    merged = torch.softmax(soft_aggregate(fg), dim=0)
                p_t = unpad(merged, pad).float().cpu()
                if t in later:  # objects given at t replace the prediction on their pixels
                    for obj in (o for o, f in appear.items() if f == t):
                        pix = later[t] == obj
                        p_t[:, pix] = 0.0
                        p_t[obj, pix] = 1.0
                probs[t] = p_t
                bank.release(t)
    finally:
        model.train(was_training)
    return probs.result()


class _ProbStore:
    """Per-frame probabilities of :func:`segment_video`: all of them (``keep=True``), or only those
    of frames the memory has yet to encode, with each frame's labels taken as it is stored."""

    def __init__(self, num_frames: int, shape: tuple[int, int, int], keep: bool,
                 will_encode: set[int]) -> None:
        self.keep, self.will_encode = keep, set(will_encode)
        if keep:
            self.all = torch.zeros(num_frames, *shape, dtype=torch.float32)
        else:
            self.held: dict[int, torch.Tensor] = {}
            self.labels = torch.zeros(num_frames, *shape[1:], dtype=torch.uint8)

    def __setitem__(self, t: int, p: torch.Tensor) -> None:
        if self.keep:
            self.all[t] = p
            return
        self.labels[t] = labels_from_probs(p)
        if t in self.will_encode:
            self.held[t] = p

    def __getitem__(self, t: int) -> torch.Tensor:
        return self.all[t] if self.keep else self.held[t]

    def encoded(self, t: int) -> None:
        """Frame ``t`` is in the memory now; the memory never encodes it again."""
        if not self.keep:
            self.held.pop(t, None)

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
    return frame.float().div_(255.0) if frame.dtype == torch.uint8 else frame


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
