"""The inference memory of one video: which encoded frames are held, and for how long.

STM's DAVIS schedule (:func:`memory_schedule`) says, for every frame ``t``, which earlier frames are
in memory when ``t`` is segmented. :class:`MemoryBank` holds the keys and values of those frames in
a fixed number of slots (the largest read set), stores each frame once, hands out the read set of a
step in schedule order, and frees a frame's slot after the last step that reads it — the
separation of memory bookkeeping from the propagation loop that STCN's inference memory bank and
XMem's memory manager make.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def memory_schedule(num_frames: int, mem_every: int, keep: Iterable[int] = ()) -> list[list[int]]:
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


class MemoryBank:
    """Keys (N,Ck,S,h,w) and values (N,Cv,S,h,w) of the memorised frames of one video, S slots.

    Use per step ``t``: :meth:`missing` → encode and :meth:`insert` those frames → :meth:`read` →
    segment → :meth:`release`. :meth:`held` says what the slots hold now; :meth:`read` returns
    which frames it gathered, from the slots themselves.
    """

    def __init__(self, schedule: list[list[int]]) -> None:
        self.schedule = schedule
        self.n_slots = max((len(m) for m in schedule), default=0)
        # Last step at which each frame is read; its slot is freed after that step.
        self.last_use: dict[int, int] = {}
        for t, mem in enumerate(schedule):
            for f in mem:
                self.last_use[f] = t
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.slot_of: dict[int, int] = {}   # memorised frame → slot
        self.free: list[int] = list(range(self.n_slots))

    def missing(self, t: int) -> list[int]:
        """Frames read at step ``t`` that are not stored yet (encode them, then :meth:`insert`)."""
        return [f for f in self.schedule[t] if f not in self.slot_of]

    def insert(self, frame: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store the encoded ``frame``: key (N,Ck,h,w), value (N,Cv,h,w), in the lowest free slot."""
        if frame in self.slot_of:
            raise ValueError(f"MemoryBank: frame {frame} is stored already")
        if not self.free:
            raise RuntimeError(f"MemoryBank: no free slot for frame {frame} (schedule overrun)")
        if self.keys is None:  # allocated at first use, when the feature size is known
            self.keys = key.new_empty(key.shape[0], key.shape[1], self.n_slots, *key.shape[2:])
            self.values = value.new_empty(value.shape[0], value.shape[1], self.n_slots,
                                          *value.shape[2:])
        slot = min(self.free)
        self.free.remove(slot)
        self.keys[:, :, slot], self.values[:, :, slot] = key, value
        self.slot_of[frame] = slot

    def read(self, t: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Memory of step ``t``: keys (N,Ck,T,h,w), values (N,Cv,T,h,w) and the frames they hold,
        in schedule order (read back from the slots, so it is what was read, not what was planned).

        A view of the slot buffers when the frames sit in consecutive slots, else a gathered copy.
        """
        if self.keys is None or self.values is None:
            raise RuntimeError("MemoryBank.read before any insert")
        if missing := self.missing(t):
            raise RuntimeError(f"MemoryBank.read: step {t} needs frames {missing}, not stored")
        slots = [self.slot_of[f] for f in self.schedule[t]]
        in_slot = {slot: f for f, slot in self.slot_of.items()}
        frames = [in_slot[s] for s in slots]
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return (self.keys[:, :, slots[0]:slots[0] + len(slots)],
                    self.values[:, :, slots[0]:slots[0] + len(slots)], frames)
        idx = torch.tensor(slots, device=self.keys.device)
        return self.keys.index_select(2, idx), self.values.index_select(2, idx), frames

    def held(self) -> list[int]:
        """The frames stored in the slots now, sorted."""
        return sorted(self.slot_of)

    def release(self, t: int) -> None:
        """Free the slots of the frames that no step after ``t`` reads."""
        for f in self.schedule[t]:
            if self.last_use[f] == t:
                self.free.append(self.slot_of.pop(f))
