"""What every command line shares: one-line errors instead of tracebacks, and output folders that
never land in the command's own inputs.

Each ``python -m kmnlib.<command>`` runs its work through :func:`run_command`: a bad argument or
input file ends the command with ``error: <what and where, and the fix>`` on stderr and a non-zero
exit status; ``--debug`` shows the traceback instead. Ctrl-C (SIGINT) ends it with the one line
:data:`INTERRUPTED` and exit status 130 (:func:`interruptible`); whatever it finished is kept, and
the next run resumes (training from ``<name>.last.pt``, evaluations and notebooks from what exists).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

#: Errors a user can cause with arguments or files; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, KeyError)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")


#: What a command prints when Ctrl-C (SIGINT) ends it, and its exit status then (128 + SIGINT).
INTERRUPTED = "interrupted; finished results are kept, re-run to resume"
INTERRUPTED_STATUS = 130


def _on_sigint(main_pid: int, first: Callable[[], None] | None) -> Callable[[int, Any], None]:
    """The SIGINT handler of :func:`interruptible`."""
    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked worker (it shares the terminal's Ctrl-C): carry
            return                   # on quietly; the main process stops handing out work,
                                     # waits for the jobs under way and reports the interrupt
        # A second Ctrl-C while the first one's clean-up runs ends the command at once.
        signal.signal(signal.SIGINT, lambda *_: _exit_interrupted())
        if first is not None:
            first()
        raise KeyboardInterrupt
    return handler


def _exit_interrupted() -> None:
    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_STATUS)


@contextlib.contextmanager
def interruptible(first: Callable[[], None] | None = None) -> Iterator[None]:
    """While inside: SIGINT raises KeyboardInterrupt in this process only (forked workers ignore
    it instead of printing tracebacks of their own), after calling ``first()`` if given; a second
    SIGINT ends the process at once. The previous handler is restored after (a command run
    in-process, e.g. by a test). Only the main thread can install handlers; elsewhere this does
    nothing."""
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint(os.getpid(), first))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_command(work: Callable[[], int], *, debug: bool, status: int = 2,
                extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``work()``'s exit status; a user error prints one line and returns ``status``; Ctrl-C prints
    :data:`INTERRUPTED` and returns :data:`INTERRUPTED_STATUS` (130)."""
    try:
        with interruptible():
            return work()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
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


def check_device(device: str | None, *, setting: str) -> None:
    """A ``ValueError`` naming ``setting`` unless ``device`` is a torch device this machine has
    (``None``: the caller picks one)."""
    if device is None:
        return
    import torch  # only the commands that compute import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{setting} {device!r}: not a torch device; use 'cpu' or 'cuda[:N]'"
                         ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} {device!r}: CUDA is not available on this machine; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{setting} {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s); use 'cuda:0' … or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{setting} {device!r}: only 'cpu' and 'cuda[:N]' are supported")
