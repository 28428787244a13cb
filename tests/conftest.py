"""Shared fixtures: where the real data lives (skip with a reason when it is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmnlib.config import REPO_ROOT


def _candidates(name: str) -> list[Path]:
    """``$KMN_DATA/<name>``, ``<repo>/data/<name>``, ``<repo>/../shared/data/<name>``, in order."""
    out = []
    if os.environ.get("KMN_DATA"):
        out.append(Path(os.environ["KMN_DATA"]).expanduser() / name)
    out += [REPO_ROOT / "data" / name, REPO_ROOT.parent / "shared" / "data" / name]
    return out


def _find(name: str, marker: str) -> Path:
    tried = _candidates(name)
    for path in tried:
        if (path / marker).exists():
            return path.resolve()
    pytest.skip(f"{name} not found (looked for {marker} under: {', '.join(map(str, tried))}); "
                f"run `make data` or set KMN_DATA, see data/README.md")


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """Root of the real DAVIS-2016 copy (ImageSets/2016 inside)."""
    return _find("DAVIS-2016", "ImageSets/2016")


@pytest.fixture(scope="session")
def static_root() -> Path:
    """Folder holding the shared static sets (coco-panoptic-200, weizmann-horse)."""
    return _find("static", "weizmann-horse")
