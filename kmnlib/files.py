"""Atomic file writing: the one way kmnlib writes a file that a user may already have.

Every writer puts a temp file beside the target and renames it over the target only once it is
complete, so a crash leaves the previous file intact.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: writing text or a checkpoint must not import these
    import matplotlib.figure
    import pandas


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``.

    A crash or exception mid-write leaves the previous file intact and no temp file behind.
    ``mode`` is applied before the rename (``mkstemp`` creates 0600 files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (UTF-8); returns the path."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_csv(df: "pandas.DataFrame", path: str | os.PathLike, *, index: bool = False) -> Path:
    """Write a table as CSV atomically (floats to 6 significant digits); returns the path."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=index, float_format="%.6g"))


def save_figure(fig: "matplotlib.figure.Figure", path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it; returns the path."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi,
                                                          bbox_inches="tight"))
    finally:
        # pyplot keeps every figure it made alive until closed. Imported here: whoever holds a
        # figure has matplotlib loaded already, and the text/CSV writers must not pull it in.
        import matplotlib.pyplot as plt

        plt.close(fig)
