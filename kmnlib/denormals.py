"""Flush subnormal floats to zero in every CPU thread of this process, and check that it took.

Trained weights, Adam's moments and small activations hold subnormal floats (|x| < 1.2e-38 in
float32), on which the CPU's vector units fall back to slow microcode: a batched matrix product
with 5 % subnormal operands ran 105–141× slower here (benchmarks/README.md, "The read: exp
underflow and subnormals"). Values that small are below float32's normal range, so flushing changes
results only there.

Why this is more than ``torch.set_flush_denormal(True)``: that sets the mode of the *calling*
thread only. Threads that torch's OpenMP pool creates later inherit it, but threads that already
exist keep theirs — so in a process that had run any multi-threaded op first, the pool's workers
went on computing subnormals (measured: with 2 threads, half of a tensor stayed unflushed).
:func:`flush_denormals` therefore also sets the mode inside each thread of the OpenMP team, through
the runtime's own ``GOMP_parallel`` entry point (Linux builds of PyTorch link libgomp), and then
checks every thread with a tensor of subnormals.
"""
from __future__ import annotations

import ctypes
import warnings

import numpy as np
import torch

# torch's parallel_for splits element-wise work into chunks of at least this many elements.
_GRAIN = 32768
_warned = False


def _flushed_fraction() -> float:
    """Fraction of an element-wise op over subnormals, spread over all of torch's CPU threads, that
    came out 0 (1.0: every thread flushes; 0.0: none does)."""
    n = max(1, torch.get_num_threads()) * 2 * _GRAIN
    # The smallest positive subnormal by bit pattern: no arithmetic, so no flush on the way in.
    tiny = torch.from_numpy(np.ones(n, dtype=np.uint32).view(np.float32))
    return float(((tiny * 1.0) == 0).float().mean())


def every_thread_flushes() -> bool:
    """True if every one of torch's CPU threads flushes subnormals to zero."""
    return _flushed_fraction() == 1.0


def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime this process has loaded (torch's libgomp), or None where there is none."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "GOMP_parallel"):
            return lib
    return None


def _set_in_every_pool_thread(enabled: bool) -> None:
    lib = _openmp_runtime()
    if lib is None:
        return
    body_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    body = body_type(lambda _: torch.set_flush_denormal(enabled))   # runs once in each team thread
    lib.GOMP_parallel.argtypes = [body_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    lib.GOMP_parallel(body, None, max(1, torch.get_num_threads()), 0)


def flush_denormals(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero in this process's CPU arithmetic, in every thread
    (``enabled=False``: compute them as IEEE says, in every thread — the benchmarks' "before").

    Returns whether the check passed (every thread in the asked mode); if it did not (a runtime
    other than libgomp, or a platform without one), warns once. The mode is process state, so
    entry points call it, not library functions: ``python -m kmnlib.train`` (each torchrun rank),
    ``kmnlib.study.session.open_study`` (each notebook kernel), ``kmnlib.parallel``'s spawned
    workers and the benchmark scripts. A script that calls ``run_dataset`` or ``train_stage``
    itself calls this first.
    """
    global _warned
    want = 1.0 if enabled else 0.0
    torch.set_flush_denormal(enabled)
    if _flushed_fraction() == want:
        return True
    _set_in_every_pool_thread(enabled)
    if _flushed_fraction() == want:
        return True
    if not _warned:
        warnings.warn("subnormal floats are flushed in the main thread only (this OpenMP runtime "
                      "could not be reached); CPU arithmetic on them stays slow", stacklevel=2)
        _warned = True
    return False
