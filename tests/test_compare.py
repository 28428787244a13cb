"""kmnlib.study.compare: a fresh study against the committed one, within stated tolerances."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from kmnlib.config import REPO_ROOT
from kmnlib.study import compare

COMMITTED = REPO_ROOT / "results" / "archive-2026-11-26" / "mini"


def _copy(tmp: Path, name: str) -> Path:
    out = tmp / name / "tables"
    out.mkdir(parents=True)
    for t in ("03_davis16_val.csv", "effects.csv"):
        shutil.copyfile(COMMITTED / "tables" / t, out / t)
    return out.parent


def test_same_tables_are_within_any_tolerance(tmp_path, capsys) -> None:
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    assert compare.main([str(a), str(b), "--jf-tol", "0", "--effect-tol", "0"]) == 0
    assert "within tolerance: largest |ΔJ&F| 0.00" in capsys.readouterr().out


def test_a_moved_arm_is_caught_and_named(tmp_path, capsys) -> None:
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    arms = pd.read_csv(b / "tables" / "03_davis16_val.csv")
    arms.loc[0, "J&F"] += 0.3
    arms.to_csv(b / "tables" / "03_davis16_val.csv", index=False)
    assert compare.main([str(a), str(b), "--jf-tol", "0.2", "--effect-tol", "1"]) == 1
    out = capsys.readouterr().out
    assert "NOT within tolerance: largest |ΔJ&F| 0.30" in out and "| 0.30 |" in out
    assert compare.main([str(a), str(b), "--jf-tol", "0.35", "--effect-tol", "1"]) == 0


def test_different_rows_or_a_missing_table_are_one_line(tmp_path, capsys) -> None:
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    effects = pd.read_csv(b / "tables" / "effects.csv")
    effects.iloc[1:].to_csv(b / "tables" / "effects.csv", index=False)
    assert compare.main([str(a), str(b), "--jf-tol", "1", "--effect-tol", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different rows" in err
    assert compare.main([str(a), str(tmp_path / "none"), "--jf-tol", "1", "--effect-tol", "1"]) == 2
    assert "table missing" in capsys.readouterr().err


def test_recomputed_effects_reproduce_the_committed_ones_and_add_seed_level_columns() -> None:
    from kmnlib.study.summary import recomputed_effects

    for name, fresh in recomputed_effects(COMMITTED).items():
        committed = pd.read_csv(COMMITTED / "tables" / name)
        keys = ["comparison", "stage", "read", "metric"]
        both = committed.merge(fresh, on=keys, suffixes=("", " new"))
        assert len(both) == len(committed) == len(fresh)
        for col in ("mean_diff", "ci_low", "ci_high", "mde80"):
            assert (both[col] - both[f"{col} new"]).abs().max() < 1e-4, (name, col)
        assert (fresh["seed_ci_low"] <= fresh["mean_diff"]).all()
        assert (fresh["seed_ci_high"] >= fresh["mean_diff"]).all()
