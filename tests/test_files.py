"""atomic_write: the previous file survives a failed write, and no temp file is left."""
from __future__ import annotations

from pathlib import Path

import pytest

from kmnlib.files import atomic_write


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("user's work")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "user's work"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
