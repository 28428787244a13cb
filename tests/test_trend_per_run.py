"""tools/trend_per_run.py: each run's own slope, with runs (not checkpoints) as the unit, on
constructed scale tables whose per-run slopes are known."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TOOL = Path(__file__).resolve().parents[1] / "tools" / "trend_per_run.py"
spec = importlib.util.spec_from_file_location("trend_per_run", TOOL)
trend_per_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trend_per_run)


def _scale(slopes: dict[int, float]) -> pd.DataFrame:
    """Six checkpoints per run (one arm, one seed each), quantity = slope·J&F + an offset per run,
    so every run's least-squares slope is exactly its own."""
    rows = []
    for seed, slope in slopes.items():
        for jf in np.linspace(20.0 + seed, 60.0 - seed, 6):
            row = {"arm": "HaS", "run": "study", "seed": seed, "J&F": jf}
            row.update({q: slope * jf + 3.0 * seed for q in trend_per_run.QUANTITIES})
            rows.append(row)
    return pd.DataFrame(rows)


def test_per_run_slopes_are_each_runs_own() -> None:
    slopes = {0: 0.1, 1: 0.3, 2: -0.2, 3: 0.0}
    got = trend_per_run.per_run_slopes(_scale(slopes), "leakage")
    assert got.size == 4
    for (arm, run, seed), value in got.items():
        assert abs(value - slopes[seed]) < 1e-9


def test_runs_are_the_unit_of_the_interval(tmp_path: Path) -> None:
    # The printed interval must be the t interval of the four slopes themselves, not that of one
    # line through all 24 checkpoints (whose slope and interval differ here: offsets differ per run).
    slopes = {0: 0.1, 1: 0.3, 2: -0.2, 3: 0.0}
    (tmp_path / "tables").mkdir()
    _scale(slopes).to_csv(tmp_path / "tables" / "08_scale.csv", index=False)
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    values = np.array(list(slopes.values()))
    half = 3.182446305284263 * values.std(ddof=1) / 2.0       # t(0.975, df=3) · s / √4
    line = next(l for l in out.splitlines() if l.startswith("| leakage |"))
    assert f"| 4 | {values.mean():+.4f} | [{values.mean() - half:+.4f}, {values.mean() + half:+.4f}] |" in line


def test_missing_table_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "08_scale.csv" in proc.stderr
