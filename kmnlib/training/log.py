"""The per-iteration training log: one CSV row per iteration, flushed as it is written, so it
survives a kill; a resumed run first drops the rows after the checkpoint it resumes from."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from kmnlib.files import atomic_write

CSV_FIELDS = ("step", "loss", "loss_f1", "loss_f2", "lr", "hide_p", "max_gap", "logit_std",
              "logit_gap", "clips_per_s", "wall_s")


def truncate_log(path: Path, keep_until: int) -> None:
    """Atomically rewrite the log keeping the header and rows with step <= keep_until."""
    rows: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit()
                    and int(r["step"]) <= keep_until]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r.get(k, "") for k in CSV_FIELDS} for r in rows)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()))


def log_row(step: int, losses: dict[str, float], lr: float, batch: dict[str, Any], clips_per_s: float,
            wall_s: float, logit_std: float, logit_gap: float) -> dict[str, Any]:
    """One CSV row; ``hide_p`` is empty for video stages and ``max_gap`` for static ones.
    ``logit_std`` / ``logit_gap``: the scale of this step's memory-read logits c/√d (their standard
    deviation, and the median best − second-best gap per query; :class:`kmnlib.memory.LogitStats`)."""
    return {"step": step, "loss": f"{losses['loss']:.6g}", "loss_f1": f"{losses['loss_f1']:.6g}",
            "loss_f2": f"{losses['loss_f2']:.6g}", "lr": lr,
            "hide_p": "" if batch["hide_p"] is None else f"{batch['hide_p']:.4g}",
            "max_gap": "" if batch["max_gap"] is None else batch["max_gap"],
            "logit_std": f"{logit_std:.4g}", "logit_gap": f"{logit_gap:.4g}",
            "clips_per_s": f"{clips_per_s:.3f}", "wall_s": f"{wall_s:.2f}"}


class TrainingLog:
    """The CSV log of one run, appended row by row and flushed after each (written by rank 0)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: Any = None
        self._writer: csv.DictWriter | None = None

    def open(self, resume_step: int) -> "TrainingLog":
        """Keep the rows up to ``resume_step`` (0: header only) and open the log for appending."""
        truncate_log(self.path, keep_until=resume_step)
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=CSV_FIELDS, lineterminator="\n")
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            raise RuntimeError(f"{self.path}: log written before open()")
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh, self._writer = None, None


def read_log(path: str | os.PathLike, *, columns: tuple[str, ...] = ("step", "loss")) -> pd.DataFrame:
    """A training log as a table, checked to hold ``columns`` and at least one row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training log not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot parse training log as CSV ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: training log lacks column(s) {missing} (has {list(df.columns)})")
    if df.empty:
        raise ValueError(f"{path}: training log has no rows")
    return df
