"""Atomic file writing: the one way kmnlib writes a file that a user may already have.

Every writer puts a temp file beside the target and renames it over the target only once it is
complete, so a crash leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
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


class DiskFullError(OSError):
    """The disk (or the quota) filled up while writing into a folder; ``str()`` is one line naming
    the folder (no ``[Errno 28]`` prefix). Commands report it like a bad argument."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def disk_full_is_one_line(folder: str | os.PathLike) -> Iterator[None]:
    """Inside: an ``OSError`` ENOSPC / EDQUOT becomes :class:`DiskFullError` naming ``folder``
    (the atomic writers have left no partial file behind); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(exc, DiskFullError):
            raise
        what = "disk is full" if exc.errno == errno.ENOSPC else "disk quota is exhausted"
        raise DiskFullError(exc.errno, f"{folder}: cannot finish writing there, the {what}; "
                                       f"free space or choose another output folder, then run "
                                       f"again") from exc


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
