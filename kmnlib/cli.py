"""What every command line shares: one-line errors instead of tracebacks, and output folders that
never land in the command's own inputs.

Each ``python -m kmnlib.<command>`` runs its work through :func:`run_command`: a bad argument or
input file ends the command with ``error: <what and where, and the fix>`` on stderr and a non-zero
exit status; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

#: Errors a user can cause with arguments or files; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, KeyError)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")


def run_command(work: Callable[[], int], *, debug: bool, status: int = 2,
                extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``work()``'s exit status; a user error prints one line and returns ``status``."""
    try:
        return work()
    except USER_ERRORS + extra_errors as exc:
        if debug:
            traceback.print_exc()
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return status


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 or negative counts are refused, never defaulted)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_output_dir(path: str | os.PathLike, *, argument: str,
                     inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The resolved output folder ``path`` of ``argument``, created; refused (``ValueError`` naming
    it and the fix) when it is an existing file, lies inside (or is) one of the command's
    ``inputs``, or cannot be created / written."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{argument} {out}: is a file, not a folder; name a folder to write into")
    for src in inputs:
        src = Path(src).expanduser().resolve()
        if _inside(out, src):  # also out == src
            raise ValueError(f"{argument} {out}: lies inside the input {src}; writing there would "
                             f"change the command's own inputs — choose a folder outside it")
    try:  # the real test of writability (os.access says yes to root even on read-only mounts)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"{argument} {out}: cannot write there ({exc.strerror or exc}); choose "
                         f"another folder") from None
    return out
