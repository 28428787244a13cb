"""The environment record of a run: Python, PyTorch, CUDA, the GPUs, the data root."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from .device import fp32_settings
from .plan import Plan


def environment(dev: torch.device, plan: Plan, data_root: Path) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "device": str(dev),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "data_root": str(data_root),
    }
    if torch.cuda.is_available():
        env.update({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "gpu_count": torch.cuda.device_count(),
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    "gpu_memory_GiB": torch.cuda.get_device_properties(0).total_memory / 2**30,
                    "nccl_available": torch.distributed.is_nccl_available(),
                    "fp32_precision": fp32_settings()})
    return env
