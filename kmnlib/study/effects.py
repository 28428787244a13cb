"""Paired effects with bootstrap intervals: is arm A better than arm B, and by how much?

An effect is the mean over (seed, sequence) of the per-sequence difference ``A − B`` (same seed, same
sequence, so everything the two runs share cancels). Its 95 % interval comes from a crossed bootstrap:
resample sequences with replacement and, when several seeds are pooled, seeds with replacement too,
and take the 2.5 / 97.5 percentiles of the resampled means. Sequences and seeds are the two sources
of variation a reader would generalise over (other videos, other training runs).

The smallest effect the data could have detected (``mde80``) is ``(z_.975 + z_.80) · se``: a true
difference that large would exclude 0 from the interval about 80 % of the time.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

Z_975, Z_80 = 1.959964, 0.841621
EFFECT_COLUMNS = ["comparison", "stage", "read", "seeds", "n_sequences", "mean_diff", "ci_low",
                  "ci_high", "se", "mde80"]


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


def paired_effect(a: pd.DataFrame, b: pd.DataFrame, *, comparison: str, stage: str, read: str,
                  metric: str = "J&F", n_boot: int = 10_000, seed: int = 0) -> dict[str, object]:
    """One row of an effects table: ``a − b`` pooled over the seeds both tables hold."""
    diff = paired_differences(a, b, metric=metric)
    mean, low, high, se = bootstrap_mean(diff, n_boot=n_boot, seed=seed)
    return {"comparison": comparison, "stage": stage, "read": read,
            "seeds": " ".join(str(s) for s in diff.index), "n_sequences": diff.shape[1],
            "mean_diff": mean, "ci_low": low, "ci_high": high, "se": se,
            "mde80": (Z_975 + Z_80) * se}


def effects_table(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """Rows of :func:`paired_effect` as a table with :data:`EFFECT_COLUMNS` first."""
    df = pd.DataFrame(list(rows))
    return df.reindex(columns=EFFECT_COLUMNS + [c for c in df.columns if c not in EFFECT_COLUMNS])
