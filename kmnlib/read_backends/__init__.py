"""Ways of computing the memory read, behind one setting (``InferenceConfig.read_backend``).

``"torch"`` is the reference, :func:`kmnlib.memory.gaussian_kernel` (plain PyTorch, readable as the
paper's Eq. 3-5). ``"native"`` (:mod:`kmnlib.read_backends.native`) computes the same kernel in
one compiled pass per memory row on CPU float32 reads and is the reference elsewhere. Every
backend is checked against the reference on real trained features (tests/test_read_backends.py),
so a change to the reference that a backend does not follow fails there.
"""
from __future__ import annotations

from kmnlib.config import READ_BACKENDS
from kmnlib.memory import Kernel, gaussian_kernel


def kernel_for(backend: str) -> Kernel:
    """The :data:`kmnlib.memory.Kernel` of a backend name (one of ``READ_BACKENDS``)."""
    if backend == "torch":
        return gaussian_kernel
    if backend == "native":
        from kmnlib.read_backends import native   # compiles on first use, only when asked for
        return native.gaussian_kernel
    raise ValueError(f"read backend {backend!r}: expected one of {READ_BACKENDS} "
                     f"(inference.read_backend)")
