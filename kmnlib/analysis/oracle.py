"""The distractor study's oracle read: an intervention, not the method.

Query cells of a marked region (the twin set's mirrored copy of the object) read nothing from
memory cells that hold the object — their logits are pushed down by 1e9 after the kernel (``q̂`` is
unaffected). It tells a leak the read makes from one the decoder makes on its own. It plugs into
video inference as :class:`kmnlib.propagation.Hooks`; the read itself is untouched.

Cells (the study's oracle, the defaults): a query cell is marked when the region covers more
than half of it; a memory cell holds the object when the memorised soft mask averages more than 0.5
over it. Stronger oracles (:data:`ORACLE_STRENGTHS`) mark any covered cell (``> 0``) on either
side and/or dilate the marked query cells.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kmnlib.data.derived import twin_masks
from kmnlib.memory import LogitEdit
from kmnlib.model.ops import cell_coverage, resize_labels
from kmnlib.propagation import Hooks, Step


@dataclass(frozen=True)
class OracleStrength:
    """Which cells an oracle cuts: query cells covered by the region more than ``query_above``
    (then dilated by ``dilate`` cells), from memory cells whose memorised mask averages more than
    ``memory_above``."""

    query_above: float = 0.5
    memory_above: float = 0.5
    dilate: int = 0


#: The oracles of the leak-mechanism study, weakest first ("half" is the study's oracle).
ORACLE_STRENGTHS = {"half": OracleStrength(),
                    "any": OracleStrength(query_above=0.0, memory_above=0.0),
                    "half, dilated 1": OracleStrength(dilate=1)}


class OracleBlock(Hooks):
    """``region(t)``: the bool (H,W) map of frame ``t`` (inference size) whose query cells are cut
    off from the object's memory, as ``strength`` says."""

    def __init__(self, region: Callable[[int], torch.Tensor],
                 strength: OracleStrength = OracleStrength()) -> None:
        self.region, self.strength = region, strength
        self.object_cells: dict[int, torch.Tensor] = {}   # memorised frame → (N,h,w) bool

    def memorised(self, frame: int, mask: torch.Tensor) -> None:
        self.object_cells[frame] = cell_coverage(mask) > self.strength.memory_above

    def query_cells(self, t: int, device: torch.device) -> torch.Tensor:
        """(1,h,w) bool: the query cells of frame ``t`` the oracle cuts off."""
        cells = cell_coverage(self.region(t).to(device)[None]) > self.strength.query_above
        if self.strength.dilate:
            k = 2 * self.strength.dilate + 1
            cells = F.max_pool2d(cells[:, None].float(), k, stride=1,
                                 padding=self.strength.dilate)[:, 0] > 0
        return cells

    def edit_logits(self, step: Step) -> LogitEdit:
        n_obj = step.query_key.shape[0]
        query = self.query_cells(step.t, step.frame.device)
        memory = torch.stack([self.object_cells[f] for f in step.memory_frames], dim=1)
        mem_blocked = memory.reshape(n_obj, -1)                               # N, T·h·w
        query_blocked = query.expand(n_obj, -1, -1).reshape(n_obj, -1)        # N, hq·wq

        def cut(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            return logits.masked_fill(mem_blocked[:, rows, None] & query_blocked[:, None, :], -1e9)
        return cut


def twin_oracle(twin_root: str, seq_name: str, start: int, size: tuple[int, int],
                strength: OracleStrength = OracleStrength()) -> OracleBlock:
    """The oracle of one twin-set video: its twin maps (stored size, from frame ``start`` on)
    resized to the inference ``size`` — what :func:`kmnlib.predict.run_dataset` passes as
    ``hooks``."""
    maps = torch.from_numpy(np.asarray(twin_masks(twin_root, seq_name), dtype=np.uint8)[start:])
    maps = resize_labels(maps, size).bool()
    return OracleBlock(maps.__getitem__, strength)
