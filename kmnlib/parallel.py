"""Run independent jobs side by side in spawned processes, one torch thread each.

On the 2-core CPU two single-threaded processes finish two jobs sooner than one process with two
threads runs them one after the other (benchmarks/README.md); the study trains its two arms and
runs its evaluations this way.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from kmnlib.denormals import flush_denormals


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a worker process with one torch thread (workers share the CPU)."""
    torch.set_num_threads(1)
    # A spawned process is an entry point of its own (it inherits no CPU float mode): flush here,
    # as the CLIs and open_study do, since library functions no longer flush for their callers.
    flush_denormals()
    return fn(*args)


def spawn_map(fn: Callable[..., Any], arg_tuples: Sequence[tuple[Any, ...]], workers: int) -> list[Any]:
    """``[fn(*a) for a in arg_tuples]``, in ``workers`` spawned processes when ``workers > 1``.

    ``fn`` must be importable by name (a module-level function) and its arguments picklable. With
    ``workers > 1`` even a single job runs in a one-thread worker, so a job's numbers never depend
    on how many others ran beside it (thread count can change float reduction order).
    """
    if workers <= 1:
        return [fn(*a) for a in arg_tuples]
    # spawn: a forked Jupyter kernel with torch threads running is not safe to continue in.
    with ProcessPoolExecutor(max_workers=min(workers, len(arg_tuples)),
                             mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_in_worker, fn, *a) for a in arg_tuples]
        return [f.result() for f in futures]
