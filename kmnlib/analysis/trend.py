"""A straight-line trend of a quantity against model quality, and what it predicts elsewhere.

The scale axis (notebook 08) asks how the kernel's effect, the read's sharpness and the twin leak
move as the model gets better, and what that suggests at the paper's 81–88 J&F. A least-squares
line with t-based intervals is the simplest honest answer; its limits are part of the answer:

* the points are checkpoints of a few training runs, not independent draws, so the intervals are
  too narrow by an unknown amount (they treat every checkpoint as an observation);
* a prediction far outside the measured range of ``x`` is an extrapolation of a line, not a
  measurement — :attr:`TrendFit.extrapolation` says how far outside it lies.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Prediction:
    """The line at ``x``: its value, the 95 % interval of the line there (``ci``) and of a new
    point there (``pi``)."""

    x: float
    value: float
    ci: tuple[float, float]
    pi: tuple[float, float]


@dataclass(frozen=True)
class TrendFit:
    """``y = intercept + slope·x`` fitted to ``n`` points with ``x`` in ``x_range``."""

    slope: float
    slope_ci: tuple[float, float]
    intercept: float
    r2: float
    n: int
    x_range: tuple[float, float]
    predictions: tuple[Prediction, ...]

    @property
    def extrapolation(self) -> float:
        """How far the farthest prediction lies outside the measured ``x`` range (0: inside)."""
        lo, hi = self.x_range
        return max((max(lo - p.x, p.x - hi, 0.0) for p in self.predictions), default=0.0)

    @property
    def slope_sign_known(self) -> bool:
        """Whether the slope's 95 % interval excludes 0."""
        return self.slope_ci[0] > 0 or self.slope_ci[1] < 0


def fit_trend(x: Sequence[float], y: Sequence[float], at: Sequence[float] = ()) -> TrendFit:
    """Least-squares line of ``y`` on ``x`` (NaN pairs dropped) with 95 % t intervals for the
    slope and, at each ``at``, for the line and for a new observation. Needs 3 points with two
    distinct ``x`` (``ValueError`` otherwise: a line through 2 points has no interval)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"fit_trend: x and y differ in length ({xs.size} vs {ys.size})")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    n = xs.size
    if n < 3 or np.ptp(xs) == 0:
        raise ValueError(f"fit_trend: needs >= 3 points with distinct x, got {n}")
    sxx = float(((xs - xs.mean()) ** 2).sum())
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / sxx)
    intercept = float(ys.mean() - slope * xs.mean())
    resid = ys - (intercept + slope * xs)
    s = float(np.sqrt((resid ** 2).sum() / (n - 2)))
    t = float(stats.t.ppf(0.975, n - 2))
    total = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / total if total > 0 else 1.0
    half = t * s / np.sqrt(sxx)

    def predict(x0: float) -> Prediction:
        value = intercept + slope * x0
        se_line = s * np.sqrt(1.0 / n + (x0 - xs.mean()) ** 2 / sxx)
        se_new = s * np.sqrt(1.0 + 1.0 / n + (x0 - xs.mean()) ** 2 / sxx)
        return Prediction(float(x0), float(value), (float(value - t * se_line),
                                                    float(value + t * se_line)),
                          (float(value - t * se_new), float(value + t * se_new)))

    return TrendFit(slope, (slope - half, slope + half), intercept, r2, n,
                    (float(xs.min()), float(xs.max())), tuple(predict(float(a)) for a in at))
