"""The ``native`` read backend: KMN's Gaussian kernel on a chunk of read logits in one compiled pass
per memory row (CPU, float32).

The kernel's work on the logits ``c`` (B, Pc, h·w) is ``q̂(p) = argmax_q c(p,q)`` and the addition of
``log g_y(p, y) + log g_x(p, x)``; the read's softmax then needs ``c.amax(dim=1)``. In PyTorch
(:func:`kmnlib.memory.gaussian_kernel`, the reference) that is four passes over the whole chunk
(arg-max, two broadcast additions, amax), each streaming tens of MB at 480p, and at this CPU's
memory bandwidth a pass costs milliseconds (benchmarks/README.md). ``kernel_rows.c`` does all four
on one row while it sits in L1, with the same arithmetic in the same order, so its floats are the
reference's (``tests/test_read_backends.py``); the rows are shared among PyTorch's own OpenMP
threads. Where it does not apply (CUDA, float64, autograd, no C compiler) :func:`gaussian_kernel`
is the reference's.

The C file is compiled once per machine with the system C compiler (``$CC`` or ``cc``) into a cache
directory (``$KMN_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/kmn-study`` or ``~/.cache/kmn-study``), keyed
by the source, the compiler and the CPU; ``make setup`` builds it
(``python -m kmnlib.read_backends.native``). Without a compiler one warning says so and the read
takes the reference's arithmetic: the same results, slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from kmnlib.memory import gaussian_kernel as reference_kernel

SOURCE = Path(__file__).with_name("kernel_rows.c")
# No -ffast-math: it would reassociate (c + gy) + gx and the results would no longer be PyTorch's.
# -fopenmp: the library's libgomp.so.1 resolves to the one PyTorch already loaded (same soname), so
# the rows run on PyTorch's own OpenMP threads (tests/test_read_backends.py checks there is one).
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")

PARALLEL_MIN_ELEMENTS = 1 << 16

_loaded: ctypes.CDLL | None = None
_failed: str | None = None


def _cache_dir() -> Path:
    if os.environ.get("KMN_NATIVE_CACHE"):
        return Path(os.environ["KMN_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kmn-study"


def _cpu_id() -> str:
    # -march=native builds for this CPU; a home directory shared with another CPU gets another file.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL:
    cc = shlex.split(os.environ.get("CC") or "cc")
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(cc), version, " ".join(CFLAGS),
                                    _cpu_id()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernel_rows-{key}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target, rename on success: processes building at once never load half a file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([*cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cc)} failed on {SOURCE}: {done.stderr.strip()[:500]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    fn = lib.kmn_kernel_rows_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int64]
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use), or None where it cannot be built."""
    global _loaded, _failed
    if _loaded is None and _failed is None:
        try:
            _loaded = _build()
        except (OSError, subprocess.SubprocessError, RuntimeError) as err:
            _failed = str(err)
            warnings.warn(f"kmnlib.read_backends.native: the native kernel could not be built "
                          f"({_failed}); the kernel read uses the reference's arithmetic (same "
                          f"results, slower). Install a C compiler (cc), or choose "
                          f"inference.read_backend='torch' to silence this.", RuntimeWarning,
                          stacklevel=3)
    return _loaded


def apply_kernel_(c: torch.Tensor, query_hw: tuple[int, int], sigma: float
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """In place on ``c`` (B, Pc, h·w): add ``log g`` around each row's arg-max.

    Returns ``(q̂ (B, Pc) int64, c.amax(dim=1) (B, h·w))`` — the column maximum of the result, which
    the read's softmax needs next, gathered while each row was in cache. ``None`` (``c`` untouched)
    where the native path does not apply: not a contiguous float32 CPU tensor, autograd recording,
    no compiled kernel, or no memory for a thread's buffer.
    """
    if (c.device.type != "cpu" or c.dtype != torch.float32 or c.dim() != 3 or not c.is_contiguous()
            or c.requires_grad or c.numel() == 0):
        return None
    h, w = query_hw
    if h * w != c.shape[2]:
        raise ValueError(f"query grid {query_hw} does not match the logits' {c.shape[2]} columns")
    lib = library()
    if lib is None:
        return None
    b, rows_per_batch, n = c.shape
    qhat = torch.empty(b, rows_per_batch, dtype=torch.int64)
    col_max = torch.empty(b, n, dtype=torch.float32)
    inv = ctypes.c_float(1.0 / (2.0 * sigma * sigma))   # float32, as PyTorch casts the Python scalar
    # Small chunks in the calling thread: waking the team costs more than their rows.
    parallel = int(c.numel() >= PARALLEL_MIN_ELEMENTS)
    if lib.kmn_kernel_rows_f32(c.data_ptr(), qhat.data_ptr(), col_max.data_ptr(), b, rows_per_batch,
                               h, w, inv, parallel) != 0:
        return None   # a thread could not allocate its buffer; no row was touched
    return qhat, col_max


def gaussian_kernel(c: torch.Tensor, query_hw: tuple[int, int], sigma: float
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`kmnlib.memory.gaussian_kernel` (a :data:`kmnlib.memory.Kernel`) in one native pass
    where it applies, returning the column maximum as well; elsewhere the reference itself."""
    if not (torch.is_grad_enabled() and c.requires_grad):
        native = apply_kernel_(c, query_hw, sigma)
        if native is not None:
            return c, native[1]
    return reference_kernel(c, query_hw, sigma)


if __name__ == "__main__":   # `make setup` builds it once, so a missing compiler shows there
    lib = library()
    print(f"kmnlib.read_backends.native: native kernel {lib._name}" if lib is not None else
          f"kmnlib.read_backends.native: no native kernel ({_failed}); the kernel read takes the "
          f"reference's arithmetic (same results, slower)")
