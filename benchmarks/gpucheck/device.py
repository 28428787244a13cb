"""The device under test: strict fp32, synchronisation, peak memory, freeing cached memory."""
from __future__ import annotations

import contextlib
import gc
import resource
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """IEEE fp32 convolutions and matmuls on CUDA (TF32 off), restored afterwards. PyTorch's default
    runs cuDNN convolutions in TF32 on Ampere and later (about 1e-3 relative), which would swamp a
    1e-3 comparison with the CPU. Only the new ``fp32_precision`` API is used (mixing it with the
    legacy ``allow_tf32`` flags is an error in recent PyTorch)."""
    if device.type != "cuda":
        yield
        return
    if not hasattr(torch.backends.cudnn, "conv"):   # PyTorch < 2.9: the legacy flags only
        saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy
        return
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    saved = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "ieee"
        yield
    finally:
        for k, v in zip(knobs, saved):
            k.fp32_precision = v


def fp32_settings() -> dict[str, str]:
    try:
        return {"cuda.matmul": torch.backends.cuda.matmul.fp32_precision,
                "cudnn.conv": torch.backends.cudnn.conv.fp32_precision}
    except AttributeError:  # older PyTorch
        return {"cuda.matmul.allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
                "cudnn.allow_tf32": str(torch.backends.cudnn.allow_tf32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem(device: torch.device) -> dict[str, float]:
    """Peak GPU memory since :func:`reset_peak` (MiB), or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return {"peak_gpu_MiB": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_reserved_MiB": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
