"""kmnlib — the thin library behind the kmn-study notebooks (KMN, Seong et al., ECCV 2020)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy so that `import kmnlib.metrics` does not pull in torch.
    if name == "load_stm_checkpoint":
        from kmnlib.model.stm_checkpoint import load_stm_checkpoint
        return load_stm_checkpoint
    raise AttributeError(f"module 'kmnlib' has no attribute {name!r}")
