"""Results: rows, the table, the JSON (written atomically), and the time budget of a section."""
from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmnlib.files import save_text

from .plan import DATA_OVERRIDES, Plan


def to_jsonable(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become the strings "nan"/"inf"/"-inf" (strict JSON has no
    NaN), tuples lists, numpy/torch scalars Python numbers, paths and dtypes strings."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return to_jsonable(x.item())
    if x is None or isinstance(x, str):
        return x
    return str(x)


def nonfinite_paths(obj: Any, path: str = "") -> list[str]:
    """Paths of every non-finite number (or its "nan"/"inf" stand-in) in a JSON-like object."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{path}[{i}]")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    if obj in ("nan", "inf", "-inf"):
        return [path]
    return []


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.2e}" if a < 1e-2 or a >= 1e5 else f"{v:.4g}"
    return str(v)


class Report:
    """Rows of checks, section summaries, the table and the JSON file (written atomically)."""

    def __init__(self, out: Path, env: dict[str, Any], plan: Plan, argv: list[str]) -> None:
        self.out, self.env, self.plan, self.argv = out, env, plan, argv
        self.rows: list[dict[str, Any]] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.started = time.perf_counter()
        self.current: str | None = None
        self.aborted: str | None = None

    def add(self, section: str, name: str, device: str, status: str,
            numbers: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
        row = {"section": section, "check": name, "device": device, "status": status,
               "numbers": dict(numbers or {}), "note": note}
        with self.lock:
            self.rows.append(row)
        return row

    def section_data(self, section: str) -> dict[str, Any]:
        return self.sections.setdefault(section, {"status": "NOT RUN", "wall_s": 0.0})

    def status_of(self, section: str) -> str:
        rows = [r["status"] for r in self.rows if r["section"] == section]
        for s in ("ERROR", "FAIL", "TIMEOUT"):
            if s in rows:
                return s
        if not rows:
            return "NOT RUN"
        return "PASS" if any(r in ("PASS", "WARN") for r in rows) else rows[-1]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def exit_code(self) -> int:
        if self.aborted:
            return 3
        return 1 if any(r["status"] in ("FAIL", "ERROR", "TIMEOUT") for r in self.rows) else 0

    def document(self) -> dict[str, Any]:
        with self.lock:
            return {
                "schema": 1, "tool": "benchmarks/gpu_check.py", "argv": self.argv,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "mode": self.plan.mode, "environment": self.env,
                "plan": {"sections": list(self.sections), "budgets_s": self.plan.budgets,
                         "timeout_s": self.plan.timeout_s,
                         "train_profile": self.plan.train_profile.name,
                         "data_overrides": DATA_OVERRIDES, "infer_frames": self.plan.infer_frames,
                         "infer_height": self.plan.infer_height, "nproc": self.plan.nproc,
                         "amp_dtype": str(self.plan.amp_dtype).replace("torch.", "")},
                "wall_s": time.perf_counter() - self.started,
                "aborted": self.aborted, "counts": self.counts(), "exit_code": self.exit_code(),
                "sections": copy.deepcopy(self.sections), "rows": copy.deepcopy(self.rows),
            }

    def write(self) -> None:
        with self.lock:
            doc = to_jsonable(self.document())
            save_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", self.out)

    def table(self) -> str:
        with self.lock:
            head = ("check", "device", "result", "key numbers")
            lines = [(f"{r['section']}: {r['check']}", r["device"], r["status"],
                      "  ".join(f"{k}={_fmt(v)}" for k, v in r["numbers"].items())
                      + (f"  [{r['note']}]" if r["note"] else "")) for r in self.rows]
            w0 = max([len(head[0])] + [len(x[0]) for x in lines])
            w1 = max([len(head[1])] + [len(x[1]) for x in lines])
            w2 = max([len(head[2])] + [len(x[2]) for x in lines])
            fmt = f"{{:<{w0}}}  {{:<{w1}}}  {{:<{w2}}}  {{}}"
            out = [fmt.format(*head), fmt.format("-" * w0, "-" * w1, "-" * w2, "-" * 11)]
            out += [fmt.format(*x) for x in lines]
            return "\n".join(out)


class Budget:
    """Time left to a section: its own budget, capped by the global deadline."""

    def __init__(self, seconds: float, global_deadline: float) -> None:
        self.start = time.perf_counter()
        self.deadline = min(self.start + seconds, global_deadline - 5.0)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]
