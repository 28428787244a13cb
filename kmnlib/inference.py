"""Video inference: STM's DAVIS memory schedule with STM's or KMN's memory read.

The procedure follows the official STM evaluation (``Run_video`` of github.com/seoungwugoh/STM
``eval_DAVIS.py``): frame 0 is memorised with its given mask; before segmenting frame ``t`` the
previous frame ``t-1`` is memorised with its own soft prediction; frames 0, ``mem_every``,
``2·mem_every``, … stay in memory for good, other previous frames only for the next step. Each
memorised frame is encoded once. Objects are a batch; their foreground probabilities are merged by
STM's soft aggregation.

Objects that first appear mid-video (YouTube-VOS) are given as ``later_masks``: an object takes no
part before its first frame (foreground 0), its given mask replaces the prediction there, and that
frame stays in memory for good — the practice of STM-family YouTube-VOS evaluations (STM did not
publish theirs).
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kmnlib.data.masks import VOID, write_label_map
from kmnlib.data.video import frames_to_tensor
from kmnlib.model.ops import pad_divide_by, soft_aggregate, unpad


def memory_schedule(num_frames: int, mem_every: int = 5, keep: Iterable[int] = ()) -> list[list[int]]:
    """For each frame ``t``, the frame indices in memory when ``t`` is segmented (``[]`` for t=0).

    ``schedule[t] = [k for k in 0, mem_every, 2·mem_every, … if k < t-1] + [t-1]`` — the permanent
    frames memorised so far plus the previous frame, exactly as official STM's ``Run_video``.
    ``keep``: further permanent frames (where objects were given mid-video), merged in time order.
    """
    if num_frames < 1:
        raise ValueError(f"memory_schedule: need at least one frame, got {num_frames}")
    if mem_every < 1:
        raise ValueError(f"memory_schedule: mem_every must be >= 1, got {mem_every}")
    permanent = set(range(0, num_frames, mem_every)) | {int(k) for k in keep}
    if bad := sorted(k for k in permanent if not 0 <= k < num_frames):
        raise ValueError(f"memory_schedule: keep frames {bad} outside 0..{num_frames - 1}")
    out: list[list[int]] = [[]]
    for t in range(1, num_frames):
        out.append(sorted(k for k in permanent if k < t - 1) + [t - 1])
    return out


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


def segment_video(model: torch.nn.Module, frames: torch.Tensor, first_mask: Any, *,
                  sigma: float | None = 7.0, mem_every: int = 5,
                  trace: list[tuple[int, list[int]]] | None = None,
                  later_masks: Mapping[int, Any] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment a video from its first-frame mask (semi-supervised VOS).

    ``frames``: float (T,3,H,W) in [0,1] (any H, W: padded to multiples of 16 inside, centred, and
    cropped back). ``first_mask``: integer label map (H,W) (torch or numpy), ids 0..N with objects
    1..N contiguous. ``sigma=None`` is STM's memory read, a float KMN's kernel width (feature cells).
    Returns ``(probs, labels)`` on the CPU: float32 (T,N+1,H,W) soft probabilities (frame 0 = the
    given mask one-hot) and uint8 label maps (T,H,W). If ``trace`` is a list, ``(t, frames in
    memory)`` is appended for every segmented frame — what was actually read, for inspection.
    ``later_masks`` ``{t: label map}`` gives objects that first appear at frame ``t`` (ids continue
    the first mask's, 1..N over all masks); only the objects new at ``t`` are taken from it, the
    others keep their prediction.
    """
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point() or frames.dim() != 4 \
            or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError("segment_video: frames must be a float tensor (T,3,H,W) with T >= 1, got "
                         + (f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, torch.Tensor)
                            else type(frames).__name__))
    if frames.numel() and (frames.min() < 0 or frames.max() > 1):
        raise ValueError("segment_video: frames must lie in [0,1] (normalisation happens inside the model)")
    num_frames, _, height, width = frames.shape
    labels0, later, appear = _check_masks(first_mask, later_masks, num_frames, (height, width))
    n_obj = len(appear)
    device = next(model.parameters()).device
    # First frame of each object (row o-1): an object takes part from the frame after it.
    first_seen = torch.tensor([appear[o] for o in range(1, n_obj + 1)], device=device)
    schedule = memory_schedule(num_frames, mem_every, keep=later)
    # Last step at which each frame is read; a memorised frame is dropped after it.
    last_use: dict[int, int] = {}
    for t, mem in enumerate(schedule):
        for f in mem:
            last_use[f] = t
    was_training = model.training
    model.eval()

    probs = torch.zeros(num_frames, n_obj + 1, height, width, dtype=torch.float32)
    probs[0] = F.one_hot(labels0, n_obj + 1).permute(2, 0, 1).float()
    try:
        with torch.inference_mode():
            keys = values = None            # (N,Ck,S,h,w) slot buffers, allocated at first use
            slot_of: dict[int, int] = {}    # memorised frame → slot in the buffers
            frame_in_slot: dict[int, int] = {}  # slot → frame whose key/value it holds
            free: list[int] = []
            n_slots = max(len(m) for m in schedule)
            for t in range(1, num_frames):
                for f in schedule[t]:
                    if f in slot_of:
                        continue
                    # Encoded once, with the frame's own soft prediction (the given mask for frame 0).
                    frame_p, pad = pad_divide_by(frames[f].to(device))
                    mask, other = _memory_masks(probs[f].to(device))
                    mask_p, _ = pad_divide_by(mask)
                    other_p, _ = pad_divide_by(other)
                    k, v = model.encode_memory(frame_p.expand(n_obj, -1, -1, -1), mask_p, other_p)
                    if keys is None:
                        keys = k.new_empty(n_obj, k.shape[1], n_slots, *k.shape[2:])
                        values = v.new_empty(n_obj, v.shape[1], n_slots, *v.shape[2:])
                        free = list(range(n_slots))
                    slot = min(free)
                    free.remove(slot)
                    keys[:, :, slot], values[:, :, slot] = k, v
                    slot_of[f] = slot
                    frame_in_slot[slot] = f
                slots = [slot_of[f] for f in schedule[t]]
                if slots == list(range(slots[0], slots[0] + len(slots))):
                    mem_k = keys[:, :, slots[0]:slots[0] + len(slots)]   # a view, no copy
                    mem_v = values[:, :, slots[0]:slots[0] + len(slots)]
                else:
                    idx = torch.tensor(slots, device=keys.device)
                    mem_k, mem_v = keys.index_select(2, idx), values.index_select(2, idx)
                if trace is not None:
                    trace.append((t, sorted(frame_in_slot[s] for s in slots)))
                frame_p, pad = pad_divide_by(frames[t].to(device))
                qk, qv, f8, f4 = model.encode_query(frame_p[None])
                fg = model.segment(qk, qv, f8, f4, mem_k, mem_v, sigma=sigma)   # N,Hp,Wp
                absent = first_seen >= t    # objects not given yet (or given at t itself)
                if bool(absent.any()):
                    fg = fg.masked_fill(absent[:, None, None], 0.0)
                    merged = torch.softmax(soft_aggregate(fg), dim=0)
                    merged[1:][absent] = 0.0  # exactly 0, not soft aggregation's clamped 1e-7 share
                    merged = merged / merged.sum(dim=0, keepdim=True)
                else:
                    merged = torch.softmax(soft_aggregate(fg), dim=0)
                probs[t] = unpad(merged, pad).float().cpu()
                if t in later:  # objects given at t replace the prediction on their pixels
                    for obj in (o for o, f in appear.items() if f == t):
                        pix = later[t] == obj
                        probs[t][:, pix] = 0.0
                        probs[t][obj, pix] = 1.0
                for f in schedule[t]:
                    if last_use[f] == t:
                        free.append(slot_of.pop(f))
    finally:
        model.train(was_training)
    return probs, labels_from_probs(probs)


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


def _resized_labels(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps (T,H',W') of (T,C,H,W) probabilities resized bilinearly to ``size`` = (H',W').

    Frame by frame, so memory stays that of one upsampled frame.
    """
    out = torch.empty(probs.shape[0], *size, dtype=torch.uint8)
    for t in range(probs.shape[0]):
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


def run_dataset(model: torch.nn.Module, dataset: Iterable[Any], out_dir: str | os.PathLike, *,
                sigma: float | None = 7.0, mem_every: int = 5,
                resolution_out: tuple[int, int] | str | None = None,
                infer_height: int | None = None, sequences: Sequence[str] | None = None,
                device: str | torch.device = "cpu") -> dict[str, float]:
    """Segment every sequence of ``dataset`` and write ``out_dir/<seq>/<frame>.png`` label maps.

    ``dataset`` is an iterable of :class:`~kmnlib.data.video.VideoSequence` (DAVIS or YouTube-VOS
    readers); ``sequences`` restricts it to those names. The first annotation gives the objects
    (void 255 counts as background); objects whose first annotation comes later (YouTube-VOS,
    ``seq.first_frame``) join there (:func:`segment_video`'s ``later_masks``). Frames before the
    first annotation are written as background. Ids are mapped to 1..N for the model and back to
    the dataset's ids in the PNGs. ``infer_height`` downsizes frames (bilinear, antialiased; given
    masks nearest) to that height, keeping the aspect ratio. ``resolution_out``: None writes at
    the inference size, ``"gt"`` at the sequence's stored size, ``(H, W)`` at that size; resizing is
    bilinear on the probabilities followed by argmax (never nearest on labels). The model is moved
    to ``device``. Returns seconds per frame of ``segment_video`` (reading/writing excluded), by name.
    """
    out_dir = Path(out_dir)
    model.to(device)
    wanted = set(sequences) if sequences is not None else None
    timings: dict[str, float] = {}
    for seq in dataset:
        if wanted is not None and seq.name not in wanted:
            continue
        first_frame, given, ids = _given_masks(seq)
        frames = frames_to_tensor(seq.load_frames(range(first_frame, len(seq))))
        if infer_height is not None and infer_height != frames.shape[-2]:
            h = int(infer_height)
            w = max(1, round(frames.shape[-1] * h / frames.shape[-2]))
            frames = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False,
                                   antialias=True).clamp_(0.0, 1.0)
            for f, m in given.items():
                small = F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
                if set(torch.unique(small).tolist()) != set(torch.unique(m).tolist()):
                    raise ValueError(f"{seq.mask_paths[f]}: an object vanishes when the mask is "
                                     f"resized to {h}x{w}; use a larger infer_height")
                given[f] = small
        later = {f - first_frame: m for f, m in given.items() if f != first_frame}
        start = time.perf_counter()
        probs, labels = segment_video(model, frames, given[first_frame], sigma=sigma,
                                      mem_every=mem_every, later_masks=later)
        timings[seq.name] = (time.perf_counter() - start) / len(frames)
        size = tuple(labels.shape[-2:])
        if resolution_out is not None:
            size = tuple(seq.size) if resolution_out == "gt" else tuple(int(s) for s in resolution_out)
            if len(size) != 2:
                raise ValueError(f"run_dataset: resolution_out must be None, 'gt' or (H, W), got {resolution_out!r}")
            if size != tuple(labels.shape[-2:]):
                labels = _resized_labels(probs, size)
        if first_frame:
            labels = torch.cat([labels.new_zeros(first_frame, *size), labels])
        back = torch.tensor([0] + ids, dtype=torch.uint8)   # 1..N → the dataset's object ids
        out_labels = back[labels.long()].numpy()
        for i, path in enumerate(seq.frame_paths):
            write_label_map(out_dir / seq.name / f"{Path(path).stem}.png", out_labels[i])
    if wanted is not None and (missing := wanted - set(timings)):
        raise KeyError(f"run_dataset: sequences not in the dataset: {sorted(missing)}")
    return timings
