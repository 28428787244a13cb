"""One propagation step of video inference (as XMem's ``InferenceCore.step``), and its hooks.

A :class:`Propagator` segments a video one frame at a time: ``step(t, frame)`` memorises what the
schedule needs (the previous frame with its own soft prediction, held from the last step), encodes
the query frame, reads the memory, decodes every object and merges them by STM's soft
aggregation. :func:`kmnlib.inference.segment_video` drives it over a whole video.

Analyses plug in through :class:`Hooks` — observers and interventions at fixed points of the step
(what was memorised, the read's logits, the readout, the decoder's inputs, the result), so the
step itself stays the paper's method. Examples: :mod:`kmnlib.analysis.oracle` (the distractor
study's oracle read), :class:`ReadTrace` (which frames each read used).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kmnlib.config import READ_BUDGET_BYTES
from kmnlib.memory import Kernel, LogitEdit, gaussian_kernel, memory_read
from kmnlib.memory_bank import MemoryBank
from kmnlib.model.ops import pad_divide_by, soft_aggregate, unpad


class DecoderInputs(NamedTuple):
    """What the decoder takes per object (batch N): the memory readout and the query frame's
    value, 1/8 and 1/4 skip features (the last three shared by all objects)."""

    readout: torch.Tensor
    query_value: torch.Tensor
    f8: torch.Tensor
    f4: torch.Tensor


@dataclass
class Step:
    """One step as hooks see it: frame ``t``, the frames its read used (in the memory's order),
    the padded query frame (1,3,Hp,Wp), its key (N,Ck,h,w) and the memory read (keys (N,Ck,T,h,w),
    values). ``read(query_key)`` reads another query from this memory as this step reads (same
    σ, backend, budget; no edits), ``decode(inputs)`` gives the merged probabilities (N+1,Hp,Wp)
    of other decoder inputs as this step decodes — so an analysis can ask "what if" without a
    copy of the method."""

    t: int
    memory_frames: list[int]
    frame: torch.Tensor
    query_key: torch.Tensor
    mem_key: torch.Tensor
    mem_value: torch.Tensor
    read: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[["DecoderInputs"], torch.Tensor]


class Hooks:
    """Observers and interventions at the points of a step; every method does nothing by default.
    Subclass and override what an analysis needs."""

    def memorised(self, frame: int, mask: torch.Tensor) -> None:
        """``frame`` entered the memory with this padded soft mask (N,Hp,Wp)."""

    def edit_logits(self, step: Step) -> LogitEdit | None:
        """Before the read: an intervention on its logits (:func:`kmnlib.memory.memory_read`'s
        ``edit_logits``), or None."""
        return None

    def after_read(self, step: Step, readout: torch.Tensor) -> torch.Tensor:
        """The readout (N,Cv,h,w) the decoder will see (return it, or a replacement)."""
        return readout

    def before_decode(self, step: Step, inputs: DecoderInputs) -> DecoderInputs:
        """The decoder's inputs (return them, or replacements)."""
        return inputs

    def segmented(self, step: Step, probs: torch.Tensor) -> None:
        """The step's merged probabilities (N+1,H,W) on the CPU."""


class ReadTrace(Hooks):
    """``frames``: ``(t, frames the read of t used)`` for every step — what was read, not planned."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, list[int]]] = []

    def segmented(self, step: Step, probs: torch.Tensor) -> None:
        self.frames.append((step.t, list(step.memory_frames)))


def _memory_masks(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N+1,H,W) probabilities → per-object mask (N,H,W) and union of the other objects (N,H,W)."""
    fg = probs[1:]
    # Σ_{o'≠o, o'≥1} p_o' = (Σ_all objects) − p_o, clamped as the official memorize does.
    other = (fg.sum(dim=0, keepdim=True) - fg).clamp_(0.0, 1.0)
    return fg, other


def _compose(edits: list[LogitEdit]) -> LogitEdit | None:
    if len(edits) < 2:
        return edits[0] if edits else None

    def edit(logits: torch.Tensor, rows: slice) -> torch.Tensor:
        for e in edits:
            logits = e(logits, rows)
        return logits
    return edit


class Propagator:
    """Segments one video step by step with STM's or KMN's read.

    ``schedule[t]``: the frames in memory when ``t`` is segmented
    (:func:`kmnlib.memory_bank.memory_schedule`). ``first_seen[o-1]``: the frame where object ``o``
    is given (it takes part from the next frame on). ``sigma=None`` is STM's read, a float KMN's
    kernel width; ``kernel`` and ``budget_bytes`` how the read is computed
    (:mod:`kmnlib.read_backends`). Call :meth:`step` for t = 0, 1, 2, … in order; inference mode,
    eval mode and autocast are the caller's.
    """

    def __init__(self, model: torch.nn.Module, schedule: list[list[int]], first_seen: Sequence[int],
                 *, sigma: float | None, kernel: Kernel = gaussian_kernel,
                 budget_bytes: int = READ_BUDGET_BYTES, hooks: Sequence[Hooks] = ()) -> None:
        self.model, self.sigma, self.kernel, self.budget_bytes = model, sigma, kernel, budget_bytes
        self.hooks = list(hooks)
        self.bank = MemoryBank(schedule)
        self.device = next(model.parameters()).device
        self.first_seen = torch.tensor(list(first_seen), device=self.device)
        self._last: tuple[int, torch.Tensor, torch.Tensor] | None = None  # t, padded frame, probs

    def step(self, t: int, frame: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities (N+1,H,W) on the CPU of frame ``t`` (float (3,H,W) in [0,1] on the
        model's device).

        ``given``: a label map (H,W) of the objects given at ``t`` — at ``t = 0`` every object of
        frame 0 (the result is its one-hot); later, the given objects replace the prediction on
        their pixels.
        """
        frame_p, pad = pad_divide_by(frame)
        if t == 0:
            if given is None:
                raise ValueError("Propagator.step: frame 0 needs its given mask")
            probs = F.one_hot(given, len(self.first_seen) + 1).permute(2, 0, 1).float()
        else:
            self._memorise_missing(t)
            merged, step = self._segment(t, frame_p)
            probs = unpad(merged, pad).float().cpu()
            for obj in ([] if given is None else [int(i) for i in torch.unique(given) if i != 0]):
                pixels = given == obj
                probs[:, pixels] = 0.0
                probs[obj, pixels] = 1.0
            for h in self.hooks:
                h.segmented(step, probs)
            self.bank.release(t)
        self._last = (t, frame_p, probs)
        return probs

    def _memorise_missing(self, t: int) -> None:
        for f in self.bank.missing(t):
            if self._last is None or self._last[0] != f:
                raise RuntimeError(f"Propagator: step {t} needs frame {f} in memory, but the last "
                                   f"step was {None if self._last is None else self._last[0]}")
            _, frame_p, probs = self._last
            n_obj = len(self.first_seen)
            mask, other = (pad_divide_by(m)[0] for m in _memory_masks(probs.to(self.device)))
            self.bank.insert(f, *self.model.encode_memory(frame_p.expand(n_obj, -1, -1, -1), mask,
                                                          other))
            for h in self.hooks:
                h.memorised(f, mask)

    def _segment(self, t: int, frame_p: torch.Tensor) -> tuple[torch.Tensor, Step]:
        """Merged probabilities (N+1,Hp,Wp) of the padded frame ``t``, and the step's record."""
        mem_k, mem_v, frames_read = self.bank.read(t)
        n = mem_k.shape[0]
        qk, qv, f8, f4 = (x.expand(n, -1, -1, -1) for x in self.model.encode_query(frame_p[None]))
        step = Step(t, frames_read, frame_p, qk, mem_k, mem_v, read=partial(self._read, mem_k, mem_v),
                    decode=partial(self._decode, t))
        edit = _compose([e for h in self.hooks if (e := h.edit_logits(step)) is not None])
        readout = self._read(mem_k, mem_v, qk, edit)
        for h in self.hooks:
            readout = h.after_read(step, readout)
        inputs = DecoderInputs(readout, qv, f8, f4)
        for h in self.hooks:
            inputs = h.before_decode(step, inputs)
        return self._decode(t, inputs), step

    def _read(self, mem_k: torch.Tensor, mem_v: torch.Tensor, qk: torch.Tensor,
              edit: LogitEdit | None = None) -> torch.Tensor:
        return memory_read(mem_k, mem_v, qk, sigma=self.sigma, budget_bytes=self.budget_bytes,
                           kernel=self.kernel, edit_logits=edit)

    def _decode(self, t: int, inputs: DecoderInputs) -> torch.Tensor:
        """Merged probabilities (N+1,Hp,Wp) of step ``t`` from the decoder's inputs."""
        fg = F.softmax(self.model.decode(*inputs), dim=1)[:, 1]                 # N,Hp,Wp
        absent = self.first_seen >= t    # objects not given yet (or given at t itself)
        if not bool(absent.any()):
            merged = torch.softmax(soft_aggregate(fg), dim=0)
        else:
            merged = torch.softmax(soft_aggregate(fg.masked_fill(absent[:, None, None], 0.0)), dim=0)
            merged[1:][absent] = 0.0  # exactly 0, not soft aggregation's clamped 1e-7 share
            merged = merged / merged.sum(dim=0, keepdim=True)
        return merged
