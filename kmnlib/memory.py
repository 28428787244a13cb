"""The memory read: STM's (softmax over memory) and KMN's kernelized read (paper Eq. 3-5).

Placeholder reference version; the chunked, numerically hardened version replaces it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def memory_read(mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, *,
                sigma: float | None = None) -> torch.Tensor:
    """Read memory values for every query position.

    mem_key (B,Ck,T,h,w), mem_value (B,Cv,T,h,w), query_key (B,Ck,h,w) → (B,Cv,h,w).
    ``sigma=None`` is STM's read; a float applies KMN's query-to-memory Gaussian kernel.
    """
    b, ck, t, h, w = mem_key.shape
    mk = mem_key.flatten(2).float()                      # B,Ck,THW
    qk = query_key.flatten(2).float()                    # B,Ck,HW
    c = torch.einsum("bcp,bcq->bpq", mk, qk)             # B,THW,HW
    logits = c / math.sqrt(ck)
    if sigma is not None:
        qhat = c.argmax(dim=2)                           # B,THW: best query position per memory p
        ys = torch.arange(h, device=c.device).repeat_interleave(w).float()
        xs = torch.arange(w, device=c.device).repeat(h).float()
        dy = ys[None, None, :] - ys[qhat][..., None]
        dx = xs[None, None, :] - xs[qhat][..., None]
        logits = logits - (dy * dy + dx * dx) / (2.0 * sigma * sigma)
    weights = F.softmax(logits, dim=1)                   # normalised over memory positions p
    read = torch.einsum("bvp,bpq->bvq", mem_value.flatten(2).float(), weights)
    return read.view(b, -1, h, w).to(mem_value.dtype)
