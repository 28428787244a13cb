"""kmnlib.study.effects: paired per-sequence differences and their bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kmnlib.study.effects import EFFECT_COLUMNS, effects_table, paired_differences, paired_effect


def _table(values: np.ndarray) -> pd.DataFrame:
    """A per-sequence table (seed, sequence, J&F) from a seeds × sequences array."""
    seeds, seqs = values.shape
    return pd.DataFrame([{"seed": s, "sequence": f"seq{q:02d}", "J&F": values[s, q]}
                         for s in range(seeds) for q in range(seqs)])


def test_a_known_difference_is_inside_the_interval_and_zero_is_not() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(60, 15, size=(3, 20))                      # sequences differ a lot
    noise = rng.normal(0, 1.0, size=(3, 20))
    row = paired_effect(_table(base + 2.0 + noise), _table(base), comparison="A - B",
                        stage="main", read="STM")
    assert row["ci_low"] < 2.0 < row["ci_high"]
    assert row["ci_low"] > 0                                    # the pairing removes the 15-pt spread
    assert row["mean_diff"] == pytest.approx(2.0 + noise.mean())
    assert row["seeds"] == "0 1 2" and row["n_sequences"] == 20
    assert row["mde80"] == pytest.approx(2.8016 * row["se"], rel=1e-3)


def test_no_difference_covers_zero() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(55, 10, size=(2, 20))
    row = paired_effect(_table(base + rng.normal(0, 1, size=base.shape)), _table(base),
                        comparison="A - B", stage="static", read="KM")
    assert row["ci_low"] < 0 < row["ci_high"]


def test_one_seed_resamples_sequences_only() -> None:
    d = np.arange(20, dtype=float)[None]                         # one seed, differences 0..19
    row = paired_effect(_table(d), _table(np.zeros_like(d)), comparison="c", stage="s", read="r")
    assert row["mean_diff"] == pytest.approx(9.5)
    # The bootstrap se of a mean of 20 values ≈ sd / sqrt(20).
    assert row["se"] == pytest.approx(np.std(d, ddof=0) / np.sqrt(20), rel=0.1)


def test_unpaired_rows_are_refused() -> None:
    a = _table(np.zeros((1, 3)))
    b = a[a["sequence"] != "seq02"]
    with pytest.raises(ValueError, match="unpaired.*seq02"):
        paired_differences(a, b)
    with pytest.raises(ValueError, match="lacks columns"):
        paired_differences(a.drop(columns="J&F"), a)


def test_effects_table_columns() -> None:
    d = np.ones((2, 5))
    rows = [paired_effect(_table(d), _table(0 * d), comparison="x", stage="s", read="r")]
    assert list(effects_table(rows).columns[:len(EFFECT_COLUMNS)]) == EFFECT_COLUMNS


def test_seed_level_interval_is_a_t_interval_over_seed_means() -> None:
    """Per-seed mean differences 3, 1, 2 (every sequence of a seed shifted alike): mean 2, sd 1,
    t_.975 with 2 degrees of freedom 4.302653 (tables), t_.80 1.060660."""
    d = np.array([3.0, 1.0, 2.0])[:, None] + np.zeros((3, 20))
    row = paired_effect(_table(d), _table(np.zeros_like(d)), comparison="c", stage="s", read="r")
    half = 4.302653 / np.sqrt(3)
    assert row["seed_ci_low"] == pytest.approx(2 - half, rel=1e-5)
    assert row["seed_ci_high"] == pytest.approx(2 + half, rel=1e-5)
    assert row["seed_mde80"] == pytest.approx((4.302653 + 1.060660) / np.sqrt(3), rel=1e-5)


def test_a_seed_effect_widens_the_seed_level_interval_only() -> None:
    """Seeds that disagree (one training run helps, another hurts) and tight sequences: the crossed
    bootstrap over three seeds can call the effect certain; the seed-level interval must not."""
    rng = np.random.default_rng(3)
    base = rng.normal(60, 10, size=(3, 20))
    shift = np.array([2.5, 0.2, 1.3])[:, None]                      # seed-level disagreement
    row = paired_effect(_table(base + shift + rng.normal(0, 0.1, size=base.shape)), _table(base),
                        comparison="c", stage="s", read="r")
    assert row["seed_ci_high"] - row["seed_ci_low"] > 2 * (row["ci_high"] - row["ci_low"])
    assert row["seed_ci_low"] < row["mean_diff"] < row["seed_ci_high"]


def test_seed_level_finds_a_consistent_effect_and_none_where_there_is_none() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(60, 10, size=(5, 20))
    real = paired_effect(_table(base + 2.0 + rng.normal(0, 1, size=base.shape)), _table(base),
                         comparison="c", stage="s", read="r")
    assert 0 < real["seed_ci_low"] < 2.0 < real["seed_ci_high"]
    null = paired_effect(_table(base + rng.normal(0, 1, size=base.shape)), _table(base),
                         comparison="c", stage="s", read="r")
    assert null["seed_ci_low"] < 0 < null["seed_ci_high"]


def test_one_seed_has_no_seed_level_interval() -> None:
    d = np.arange(20, dtype=float)[None]
    row = paired_effect(_table(d), _table(np.zeros_like(d)), comparison="c", stage="s", read="r")
    assert np.isnan(row["seed_ci_low"]) and np.isnan(row["seed_ci_high"]) and np.isnan(row["seed_mde80"])
