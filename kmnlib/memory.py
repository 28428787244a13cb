"""The memory read: STM's (softmax over memory) and KMN's kernelized read (paper Eq. 3-5).

For memory position ``p`` (over T·h·w) and query position ``q`` (over h·w), with
``c(p,q) = k_M(p)·k_Q(q)`` and ``d`` key channels:

* STM read (``sigma=None``): ``w(p,q) = softmax_p(c(p,q)/√d)``.
* KMN read (``sigma=σ``): ``q̂(p) = argmax_q c(p,q)`` (memory-to-query matching),
  ``g(p,q) = exp(-|q - q̂(p)|² / 2σ²)`` in feature-grid cells, and
  ``w(p,q) ∝ exp(c(p,q)/√d)·g(p,q)`` normalised over ``p`` (query-to-memory matching).

Both return ``Σ_p w(p,q)·v_M(p)``. This module is the reference: plain PyTorch, used by training,
by analyses and by inference with ``read_backend="torch"``. The kernel is applied in log space
(added to the logits, :func:`gaussian_kernel`), and the softmax over ``p`` is an *online* softmax
over chunks of memory positions: each chunk holds every query position (so ``q̂`` of its memory
positions is exact) and the running max / sum / weighted value sum are rescaled as chunks arrive.
Peak memory is therefore ``O(B·Pc·HW + B·Cv·HW)`` for a chunk of ``Pc`` memory positions chosen
from a byte budget, not ``O(B·T·HW·HW)``; with everything inside the budget it is a single pass.
All affinity/softmax arithmetic runs in float32 (float64 if the inputs are float64), also under
autocast, so extreme keys cannot overflow to inf/NaN.

Faster ways to compute the same kernel plug in through ``memory_read``'s ``kernel`` argument
(:mod:`kmnlib.read_backends`, chosen by ``InferenceConfig.read_backend``); analyses plug in
through ``stats`` (the logits' scale) and ``edit_logits`` (an intervention on the logits, e.g. the
distractor study's oracle) — explicit arguments, no module state.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kmnlib.config import READ_BUDGET_BYTES

# Bytes of working memory per (batch, memory position, query position) element of a chunk: the
# float32 logits plus headroom for the bmm's transient copies.
_BYTES_PER_ELEMENT = 8

#: ``kernel(c, query_hw, sigma) -> (logits, column max or None)``: adds ``log g`` to the logits
#: ``c`` (B,Pc,h·w) of one memory chunk (in place when autograd is off) and, where it came for
#: free, returns their maximum over the chunk's memory positions (B,h·w).
Kernel = Callable[[torch.Tensor, tuple[int, int], float], tuple[torch.Tensor, torch.Tensor | None]]
#: ``edit_logits(logits, rows) -> logits``: an analysis intervention on the logits (B,Pc,Q) of the
#: memory positions ``rows`` (a slice over T·h·w), after the kernel, before the softmax.
LogitEdit = Callable[[torch.Tensor, slice], torch.Tensor]


def exp_floor(dtype: torch.dtype) -> float:
    """Lower clamp for the max-subtracted logits before ``exp``: one above log of the smallest normal.

    Why: PyTorch's CPU ``exp`` is 18–26× slower on inputs whose result underflows (below ≈ −87.3 in
    float32) than on the rest (``benchmarks/bench_memory_read.py --before-after``), and trained
    reads hold many such logits (11 % with the STM read at 480p, more with the kernel's
    log-penalty). Clamping makes those weights exp(floor) ≈ 1e-38 instead of 0 (or a subnormal):
    against a softmax sum ≥ 1 the change is below float32 rounding for any memory that fits in
    RAM, and the clamp's zero gradient there replaces one of at most ~1e-38.
    """
    return math.log(torch.finfo(dtype).tiny) + 1.0


def chunk_size(batch: int, n_query: int, n_memory: int, budget_bytes: int) -> int:
    """Memory positions per chunk so that one chunk's logits stay within ``budget_bytes``.

    At least 1, at most ``n_memory``.
    """
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    per_position = max(1, batch * n_query * _BYTES_PER_ELEMENT)
    return max(1, min(n_memory, budget_bytes // per_position))


def _check_sigma(sigma: float | None) -> None:
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number or None, got {sigma!r}")


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # float32 unless the caller explicitly works in float64 (reference tests).
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class LogitStats:
    """The scale of the read's logits ``c/√d`` (before any kernel) over the reads it is passed to
    (``memory_read(..., stats=...)``): their standard deviation over all (p, q), and per query
    the gap between its best and second-best memory position. The kernel adds at most
    ``-d²/2σ²``; whether that can change a read depends on these numbers."""

    def __init__(self) -> None:
        self._sum = self._sumsq = 0.0
        self._count = 0
        self._gaps: list[torch.Tensor] = []
        self._top2: torch.Tensor | None = None

    def start_read(self) -> None:
        self._top2 = None

    def add(self, c: torch.Tensor) -> None:
        """Logits (B,Pc,Q) of one chunk of the current read."""
        c = c.detach().double()
        self._sum += float(c.sum())
        self._sumsq += float(c.square().sum())
        self._count += c.numel()
        k = min(2, c.shape[1])
        top = c.topk(k, dim=1).values                                   # B,k,Q
        if self._top2 is not None:
            top = torch.cat([self._top2, top], dim=1).topk(min(2, self._top2.shape[1] + k),
                                                           dim=1).values
        self._top2 = top

    def finish_read(self) -> None:
        if self._top2 is not None and self._top2.shape[1] == 2:
            self._gaps.append((self._top2[:, 0] - self._top2[:, 1]).flatten().float())
        self._top2 = None

    @property
    def std(self) -> float:
        """Standard deviation of all recorded logits (NaN before any read)."""
        if not self._count:
            return float("nan")
        mean = self._sum / self._count
        return math.sqrt(max(0.0, self._sumsq / self._count - mean * mean))

    @property
    def gaps(self) -> torch.Tensor:
        """Best − second-best logit of every recorded query position."""
        return torch.cat(self._gaps) if self._gaps else torch.zeros(0)

    @property
    def median_gap(self) -> float:
        g = self.gaps
        return float(g.median()) if g.numel() else float("nan")


def gaussian_kernel(c: torch.Tensor, query_hw: tuple[int, int], sigma: float
                    ) -> tuple[torch.Tensor, None]:
    """KMN's kernel on the logits ``c`` (B,Pc,h·w) of one memory chunk (a :data:`Kernel`):
    ``c + log g(p,q)`` with ``g`` the Gaussian of width ``sigma`` around ``q̂(p) = argmax_q c(p,q)``
    (exact: the chunk holds every query position). In place unless autograd records ``c``."""
    hq, wq = query_hw
    qhat = c.argmax(dim=-1)                                      # B,Pc: the first maximum
    qhat_y = torch.div(qhat, wq, rounding_mode="floor").to(c.dtype)
    qhat_x = (qhat % wq).to(c.dtype)
    inv = 1.0 / (2.0 * sigma * sigma)
    # The 2-D squared distance separates into a y term and an x term, so log g(p, (y, x)) =
    # log g_y(p, y) + log g_x(p, x): two broadcast additions over the (Pc, hq, wq) view of the logits,
    # without a (Pc, Q) distance tensor (benchmarks/bench_memory_read.py, "kernel part" rows).
    ys = torch.arange(hq, device=c.device, dtype=c.dtype)
    xs = torch.arange(wq, device=c.device, dtype=c.dtype)
    log_gy = -(ys - qhat_y[..., None]).square_() * inv                 # B,Pc,hq
    log_gx = -(xs - qhat_x[..., None]).square_() * inv                 # B,Pc,wq
    grid = c.view(c.shape[0], c.shape[1], hq, wq)
    if torch.is_grad_enabled() and c.requires_grad:
        return (grid + log_gy[..., :, None] + log_gx[..., None, :]).view(c.shape), None
    grid.add_(log_gy[..., :, None]).add_(log_gx[..., None, :])
    return c, None


def _chunk_logits(mk: torch.Tensor, qk: torch.Tensor, sigma: float | None,
                  query_hw: tuple[int, int], kernel: Kernel, stats: LogitStats | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B,Pc,Q) = c/√d (+ the kernel's log g) of one memory chunk, and their maximum over
    the chunk's memory positions where the kernel gave it (else None). mk (B,Ck,Pc) and qk (B,Ck,Q)
    in the working dtype, qk already scaled by 1/√d (saves a pass over the logits; the positive
    scale does not move the arg-max)."""
    c = torch.bmm(mk.transpose(1, 2), qk)                        # B,Pc,Q
    if stats is not None:
        stats.add(c)
    if sigma is None:
        return c, None
    return kernel(c, query_hw, sigma)


def _check_read_shapes(mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor
                       ) -> None:
    if mem_key.dim() != 5 or mem_value.dim() != 5 or query_key.dim() != 4:
        raise ValueError("memory_read expects mem_key (B,Ck,T,h,w), mem_value (B,Cv,T,h,w), "
                         f"query_key (B,Ck,h,w); got {tuple(mem_key.shape)}, "
                         f"{tuple(mem_value.shape)}, {tuple(query_key.shape)}")
    if mem_value.shape[0] != mem_key.shape[0] or mem_value.shape[2:] != mem_key.shape[2:]:
        raise ValueError(f"mem_value {tuple(mem_value.shape)} does not match mem_key {tuple(mem_key.shape)}")
    if query_key.shape[:2] != mem_key.shape[:2]:
        raise ValueError(f"query_key {tuple(query_key.shape)} does not match mem_key {tuple(mem_key.shape)}")


def memory_read(mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, *,
                sigma: float | None = None, budget_bytes: int = READ_BUDGET_BYTES,
                kernel: Kernel = gaussian_kernel, stats: LogitStats | None = None,
                edit_logits: LogitEdit | None = None) -> torch.Tensor:
    """Read memory values for every query position (STM read or KMN kernelized read).

    mem_key (B,Ck,T,h,w), mem_value (B,Cv,T,h,w), query_key (B,Ck,hq,wq) → readout (B,Cv,hq,wq) in
    ``mem_value``'s dtype. ``sigma=None`` is STM's read; a float σ (feature cells) applies KMN's
    Gaussian kernel (paper Eq. 3-5). ``budget_bytes`` bounds one chunk's logits; results do not
    depend on it beyond float rounding. ``kernel`` computes the kernel (:func:`gaussian_kernel`, or
    an acceleration from :mod:`kmnlib.read_backends` that gives the same floats). ``stats``
    accumulates the logits' scale (:class:`LogitStats`). ``edit_logits`` is an analysis
    intervention (not the method), applied to every chunk's logits after the kernel (``q̂`` is
    unaffected) — e.g. :mod:`kmnlib.analysis.oracle`.
    """
    _check_sigma(sigma)
    _check_read_shapes(mem_key, mem_value, query_key)
    b, ck, t, h, w = mem_key.shape
    hq, wq = query_key.shape[2:]
    cv = mem_value.shape[1]
    n_mem, n_q = t * h * w, hq * wq
    dtype = _work_dtype(mem_key, mem_value, query_key)
    if stats is not None:
        stats.start_read()
    with torch.autocast(mem_key.device.type, enabled=False):
        mk = mem_key.reshape(b, ck, n_mem).to(dtype)
        mv = mem_value.reshape(b, cv, n_mem).to(dtype)
        qk = query_key.reshape(b, ck, n_q).to(dtype) * (1.0 / math.sqrt(ck))
        step = chunk_size(b, n_q, n_mem, budget_bytes)
        run_max = run_sum = acc = None
        for start in range(0, n_mem, step):
            rows = slice(start, min(n_mem, start + step))
            logits, chunk_max = _chunk_logits(mk[:, :, rows], qk, sigma, (hq, wq), kernel, stats)
            if edit_logits is not None:
                logits, chunk_max = edit_logits(logits, rows), None          # the edit moved it
            if chunk_max is None:
                chunk_max = logits.amax(dim=1)                                # B,Q
            new_max = chunk_max if run_max is None else torch.maximum(run_max, chunk_max)
            floor = exp_floor(logits.dtype)
            if torch.is_grad_enabled() and logits.requires_grad:
                e = torch.exp((logits - new_max[:, None, :]).clamp(min=floor))
            else:
                e = logits.sub_(new_max[:, None, :]).clamp_(min=floor).exp_()
            part_sum = e.sum(dim=1)                                           # B,Q
            part_acc = torch.bmm(mv[:, :, rows], e)                           # B,Cv,Q
            if run_max is None:
                run_sum, acc = part_sum, part_acc
            else:
                # Rescale what was accumulated under the old max; exp(≤0) never overflows.
                decay = torch.exp((run_max - new_max).clamp(min=floor))
                run_sum = run_sum * decay + part_sum
                acc = acc * decay[:, None, :] + part_acc
            run_max = new_max
        # run_sum ≥ 1: the arg-max position contributes exp(0) in its chunk.
        read = acc / run_sum[:, None, :]
    if stats is not None:
        stats.finish_read()
    return read.reshape(b, cv, hq, wq).to(mem_value.dtype)


def _one_read_inputs(mem_key: torch.Tensor, query_key: torch.Tensor, what: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """mem_key (Ck,T,h,w) and query_key (Ck,hq,wq) (a leading batch of 1 is dropped) as
    (1,Ck,P) and (1,Ck,Q) in the working dtype, the query scaled by 1/√d."""
    if mem_key.dim() == 5 and mem_key.shape[0] == 1:
        mem_key = mem_key[0]
    if query_key.dim() == 4 and query_key.shape[0] == 1:
        query_key = query_key[0]
    if mem_key.dim() != 4 or query_key.dim() != 3 or mem_key.shape[0] != query_key.shape[0]:
        raise ValueError(f"{what} expects one memory and one query, mem_key (Ck,T,h,w), "
                         f"query_key (Ck,h,w); got {tuple(mem_key.shape)}, {tuple(query_key.shape)}")
    ck = mem_key.shape[0]
    dtype = _work_dtype(mem_key, query_key)
    return (mem_key.reshape(1, ck, -1).to(dtype),
            query_key.reshape(1, ck, -1).to(dtype) * (1.0 / math.sqrt(ck)))


def read_logits(mem_key: torch.Tensor, query_key: torch.Tensor, sigma: float | None = None
                ) -> torch.Tensor:
    """All logits (P, Q) of one read: ``c(p,q)/√d`` plus, with ``sigma``, the kernel's
    ``log g(p,q)`` — what :func:`memory_read` normalises over ``p`` (softmax over dim 0 gives the
    read weights). mem_key (Ck,T,h,w), query_key (Ck,hq,wq); for analyses of small reads (the
    whole (P,Q) matrix is materialised)."""
    _check_sigma(sigma)
    with torch.autocast(mem_key.device.type, enabled=False), torch.no_grad():
        mk, qk = _one_read_inputs(mem_key, query_key, "read_logits")
        hw = tuple(query_key.shape[-2:])
        return _chunk_logits(mk, qk, sigma, hw, gaussian_kernel, None)[0][0]


def read_weights(mem_key: torch.Tensor, query_key: torch.Tensor, query_yx: tuple[int, int],
                 sigma: float | None = None) -> torch.Tensor:
    """Weights over memory (T,h,w) that the read gives one query position ``query_yx = (y, x)``.

    mem_key (Ck,T,h,w) or (1,Ck,T,h,w); query_key (Ck,hq,wq) or (1,Ck,hq,wq); ``sigma`` as in
    :func:`memory_read`. The map sums to 1 — the paper's Fig. 1-style picture of where a query looks.
    """
    hq, wq = query_key.shape[-2:]
    y, x = query_yx
    if not (0 <= y < hq and 0 <= x < wq):
        raise ValueError(f"query position {(y, x)} outside the query grid {(hq, wq)}")
    logit = read_logits(mem_key, query_key, sigma)[:, y * wq + x]
    return torch.softmax(logit, dim=0).view(mem_key.shape[-3:])


def sigma_label(sigma: float | None) -> str:
    """Human label of a read: ``σ=7`` for the kernel, ``STM read (σ=∞)`` for ``None``."""
    if sigma is None or (isinstance(sigma, float) and math.isinf(sigma)):
        return "STM read (σ=∞)"
    return f"σ={sigma:g}"
