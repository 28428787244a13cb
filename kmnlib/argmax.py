"""The index of the first maximum along the last dimension, exact, faster than PyTorch's on CPU.

The kernelized read needs ``q̂(p) = argmax_q c(p,q)`` over every row of its logits. Its fast path
is native (:mod:`kmnlib.kernel_rows`); this is its PyTorch path's arg-max (float64 reads, no C
compiler). PyTorch's CPU ``max(dim).indices`` / ``argmax`` walk the rows element by element (index
bookkeeping is not vectorised): on a trained 480p read 4× the value-only ``amax`` over the same
logits (``benchmarks/bench_memory_read.py --before-after``, "kernel part" rows). NumPy's ``argmax``
over a contiguous row is SIMD-vectorised (NumPy ≥ 1.22) and gives the same index — the first
maximum, or the first NaN, as PyTorch does. CUDA, gradients wanted and other dtypes go to PyTorch.
"""
from __future__ import annotations

import numpy as np
import torch


def argmax_last(x: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the first maximum of ``x`` along its last dimension: ``x.argmax(-1)``.

    Equal to ``x.max(dim=-1).indices`` element for element (ties: the first; NaN: the first NaN).
    """
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.requires_grad
            or x.dim() == 0 or x.shape[-1] == 0 or x.numel() == 0):
        return x.max(dim=-1).indices
    rows = x.detach().reshape(-1, x.shape[-1]).numpy()   # a copy only if x's rows are strided
    return torch.from_numpy(rows.argmax(axis=1).astype(np.int64, copy=False)).reshape(x.shape[:-1])
