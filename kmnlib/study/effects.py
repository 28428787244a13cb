"""Paired effects with bootstrap intervals: is arm A better than arm B, and by how much?

An effect is the mean over (seed, sequence) of the per-sequence difference ``A − B`` (same seed, same
sequence, so everything the two runs share cancels). Its 95 % interval comes from a crossed bootstrap:
resample sequences with replacement and, when several seeds are pooled, seeds with replacement too,
and take the 2.5 / 97.5 percentiles of the resampled means. Sequences and seeds are the two sources
of variation a reader would generalise over (other videos, other training runs).

The smallest effect the data could have detected (``mde80``) is ``(z_.975 + z_.80) · se``: a true
difference that large would exclude 0 from the interval about 80 % of the time.

With few seeds the crossed bootstrap understates the seed-to-seed variation (it resamples 3 seeds
as if they were many). Beside it, every effect carries a **seed-level** interval that treats seeds
as the unit (:func:`seed_level`): a t interval over the per-seed mean differences (each the mean
over the same sequences), ``mean ± t_{.975, n−1} · sd/√n`` with ``n`` seeds, and its smallest
detectable effect ``(t_{.975, n−1} + t_{.80, n−1}) · sd/√n``. With one seed there is none (NaN).
The study's claims are read off the seed-level interval.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

Z_975, Z_80 = 1.959964, 0.841621
EFFECT_COLUMNS = ["comparison", "stage", "read", "seeds", "n_sequences", "mean_diff", "ci_low",
                  "ci_high", "se", "mde80", "seed_ci_low", "seed_ci_high", "seed_mde80"]


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, *, metric: str = "J&F") -> pd.DataFrame:
    """Per (seed, sequence) ``a − b`` of ``metric``: a table indexed by seed (rows) and sequence
    (columns). ``a`` and ``b`` have columns ``seed``, ``sequence`` and ``metric``; both must hold
    the same (seed, sequence) pairs (``ValueError`` naming what is missing otherwise)."""
    need = {"seed", "sequence", metric}
    for name, df in (("a", a), ("b", b)):
        if missing := need - set(df.columns):
            raise ValueError(f"paired_differences: table {name} lacks columns {sorted(missing)}")
        if df.duplicated(["seed", "sequence"]).any():
            raise ValueError(f"paired_differences: table {name} repeats a (seed, sequence) pair")
    ka = set(zip(a["seed"], a["sequence"]))
    kb = set(zip(b["seed"], b["sequence"]))
    if ka != kb:
        raise ValueError(f"paired_differences: unpaired (seed, sequence) rows: "
                         f"only in a {sorted(ka - kb)[:5]}, only in b {sorted(kb - ka)[:5]}")
    va = a.set_index(["seed", "sequence"])[metric].astype(float)
    vb = b.set_index(["seed", "sequence"])[metric].astype(float)
    return (va - vb.reindex(va.index)).unstack("sequence")


def bootstrap_mean(diff: pd.DataFrame, *, n_boot: int = 10_000, seed: int = 0
                   ) -> tuple[float, float, float, float]:
    """(mean, 2.5 %, 97.5 %, se) of the mean of a seeds × sequences table of differences, resampling
    sequences and (if more than one) seeds with replacement."""
    d = diff.to_numpy(dtype=float)
    if np.isnan(d).any():
        raise ValueError("bootstrap_mean: the difference table has gaps (NaN)")
    n_seeds, n_seq = d.shape
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n_seq, size=(n_boot, n_seq))
    rows = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else \
        np.zeros((n_boot, 1), dtype=np.int64)
    # mean over the resampled rows × resampled columns of d, vectorised over replicates:
    # first average each chosen row over the chosen columns, then average the rows.
    col_means = np.stack([d[:, c].mean(axis=1) for c in cols])          # (n_boot, n_seeds)
    means = np.take_along_axis(col_means, rows, axis=1).mean(axis=1)     # (n_boot,)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(low), float(high), float(means.std(ddof=1))


def seed_level(diff: pd.DataFrame) -> tuple[float, float, float]:
    """(2.5 %, 97.5 %, mde80) of the mean difference with seeds as the unit: a t interval over the
    per-seed means of a seeds × sequences table of differences (NaN with fewer than two seeds)."""
    per_seed = diff.to_numpy(dtype=float).mean(axis=1)
    n = per_seed.size
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    se = float(per_seed.std(ddof=1)) / np.sqrt(n)
    t975, t80 = stats.t.ppf(0.975, n - 1), stats.t.ppf(0.80, n - 1)
    mean = float(per_seed.mean())
    return mean - t975 * se, mean + t975 * se, float((t975 + t80) * se)


def paired_effect(a: pd.DataFrame, b: pd.DataFrame, *, comparison: str, stage: str, read: str,
                  metric: str = "J&F", n_boot: int = 10_000, seed: int = 0) -> dict[str, object]:
    """One row of an effects table: ``a − b`` pooled over the seeds both tables hold."""
    diff = paired_differences(a, b, metric=metric)
    mean, low, high, se = bootstrap_mean(diff, n_boot=n_boot, seed=seed)
    seed_low, seed_high, seed_mde = seed_level(diff)
    return {"comparison": comparison, "stage": stage, "read": read,
            "seeds": " ".join(str(s) for s in diff.index), "n_sequences": diff.shape[1],
            "mean_diff": mean, "ci_low": low, "ci_high": high, "se": se,
            "mde80": (Z_975 + Z_80) * se, "seed_ci_low": seed_low, "seed_ci_high": seed_high,
            "seed_mde80": seed_mde}


def effects_table(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """Rows of :func:`paired_effect` as a table with :data:`EFFECT_COLUMNS` first."""
    df = pd.DataFrame(list(rows))
    return df.reindex(columns=EFFECT_COLUMNS + [c for c in df.columns if c not in EFFECT_COLUMNS])
