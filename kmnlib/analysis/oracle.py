"""The distractor study's oracle read: an intervention, not the method.

Query cells of a marked region (the twin set's mirrored copy of the object) read nothing from
memory cells that hold the object — their logits are pushed down by 1e9 after the kernel (``q̂`` is
unaffected). It tells a leak the read makes from one the decoder makes on its own. It plugs into
video inference as :class:`kmnlib.propagation.Hooks`; the read itself is untouched.

Cells: a query cell is marked when the region covers more than half of it; a memory cell holds
the object when the memorised soft mask averages more than 0.5 over it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kmnlib.data.derived import twin_masks
from kmnlib.memory import LogitEdit
from kmnlib.model.ops import cell_coverage, resize_labels
from kmnlib.propagation import Hooks, Step


class OracleBlock(Hooks):
    """``region(t)``: the bool (H,W) map of frame ``t`` (inference size) whose query cells are cut
    off from the object's memory."""

    def __init__(self, region: Callable[[int], torch.Tensor]) -> None:
        self.region = region
        self.object_cells: dict[int, torch.Tensor] = {}   # memorised frame → (N,h,w) bool

    def memorised(self, frame: int, mask: torch.Tensor) -> None:
        self.object_cells[frame] = cell_coverage(mask) > 0.5

    def edit_logits(self, step: Step) -> LogitEdit:
        n_obj = step.query_key.shape[0]
        query = cell_coverage(self.region(step.t).to(step.frame.device)[None]) > 0.5
        memory = torch.stack([self.object_cells[f] for f in step.memory_frames], dim=1)
        mem_blocked = memory.reshape(n_obj, -1)                               # N, T·h·w
        query_blocked = query.expand(n_obj, -1, -1).reshape(n_obj, -1)        # N, hq·wq

        def cut(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            return logits.masked_fill(mem_blocked[:, rows, None] & query_blocked[:, None, :], -1e9)
        return cut


def twin_oracle(twin_root: str, seq_name: str, start: int, size: tuple[int, int]) -> OracleBlock:
    """The oracle of one twin-set video: its twin maps (stored size, from frame ``start`` on)
    resized to the inference ``size`` — what :func:`kmnlib.predict.run_dataset` passes as
    ``hooks``."""
    maps = torch.from_numpy(np.asarray(twin_masks(twin_root, seq_name), dtype=np.uint8)[start:])
    maps = resize_labels(maps, size).bool()
    return OracleBlock(maps.__getitem__)
