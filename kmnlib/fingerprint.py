"""Content fingerprints for the caches: a file's sha256, a set of files, kmnlib's inference code.

A cached result (an evaluation's ``run.json``, a finished checkpoint's spec, a derived data set)
is reused only when what produced it is unchanged; these say what "unchanged" means: the bytes.

Hashes are cached in-process per file identity — device, inode, size, mtime_ns and ctime_ns (of
the file a path leads to, symlinks followed) — so each file is read once per process. ctime is in the identity because a writer can
set mtime back (``os.utime``, ``cp -p``, ``touch -r``) but not ctime: rewriting a file with the same
size and mtime still changes its identity, and its hash is computed again.

Measured (2-core AMD EPYC, page cache warm / cold): sha256 runs at ~1.7 GB/s in memory and
0.4-0.9 GB/s reading files; DAVIS-2016 val 480p is 1376 frames, 100 MB of JPEGs (0.11 s warm,
0.27 s cold) and 3.8 MB of ground-truth PNGs (0.02-0.03 s); listing and stat-ing those 2752 files
takes ~0.01 s. Hashing every frame's content is cheap next to a single evaluation (minutes), so
the data fingerprint holds frame content, not only names and sizes.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_HASHES: dict[tuple[Any, ...], str] = {}
_LOCK = threading.Lock()


def _identity(path: str | os.PathLike) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (cached per file identity, see the module doc)."""
    return _sized_sha256(path)[1]


def _sized_sha256(path: str | os.PathLike) -> tuple[int, str]:
    """(size, hex sha256) of a file."""
    key = _identity(path)
    with _LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return key[2], known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    # A file changed while it was read gets no cached hash (its identity moved on).
    if _identity(path) == key:
        with _LOCK:
            _HASHES[key] = digest
    return key[2], digest


def files_digest(root: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """``{"files", "bytes", "sha256"}`` of ``paths`` (files under ``root``): the sha256 covers each
    file's path relative to ``root`` (POSIX), size and content sha256, in sorted order — so a
    renamed, added, removed or changed file changes it, and the same files under another root
    (a moved or copied data folder) do not."""
    root = Path(root)
    rows = []
    for p in paths:
        p = Path(p)
        rows.append((p.relative_to(root).as_posix(), *_sized_sha256(p)))
    rows.sort()
    h = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode())
    return {"files": len(rows), "bytes": sum(r[1] for r in rows), "sha256": h.hexdigest()}


def folder_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` (symlinks followed), sorted; [] when it is not there."""
    if not folder.is_dir():
        return []
    out, todo, seen = [], [folder], set()
    while todo:
        here = todo.pop()
        st = here.stat()
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder linked twice
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(here) as entries:
            for e in entries:
                if e.is_dir():  # symlinks followed
                    if e.name != "__pycache__":
                        todo.append(Path(e.path))
                elif e.is_file():
                    out.append(Path(e.path))
    return sorted(out)


PACKAGE = Path(__file__).resolve().parent

#: kmnlib sources that decide what an evaluation computes: the read and the memory, propagation,
#: the model and its loading, mask reading/writing and resizing, the J/F evaluation, the oracle hook.
#: Training code is not here (a checkpoint's content hash covers what training made), nor config
#: (the settings themselves are in the run key), nor the study layer (tables are read back from the
#: run's CSVs).
INFERENCE_SOURCES = ("memory.py", "memory_bank.py", "propagation.py", "inference.py", "predict.py",
                     "evaluate.py", "metrics.py", "checkpoints.py", "read_backends", "model",
                     "data/davis.py", "data/masks.py", "data/video.py", "data/youtube_vos.py",
                     "analysis/oracle.py")


@lru_cache(maxsize=None)
def inference_code_sha256() -> str:
    """sha256 over :data:`INFERENCE_SOURCES` (``.py`` and ``.c`` files, relative name + content).

    Computed once per process, when first asked: the code a process runs is the code it imported
    (a source edited mid-run is not what ran). ~50 files, a few ms."""
    files = []
    for name in INFERENCE_SOURCES:
        p = PACKAGE / name
        files += ([f for f in folder_files(p) if f.suffix in (".py", ".c")] if p.is_dir()
                  else [p] if p.is_file() else [])
    return files_digest(PACKAGE, files)["sha256"]
