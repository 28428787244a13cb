"""The scale axis (notebook 08): how the kernel's effect, the read's sharpness and the twin leak
move as the model gets better — measured at checkpoints along training and along the long run.

A *point* is one checkpoint: the end of static pre-training, each main-training snapshot
(``main.snapshots``) and the end of main training, for both arms of this study, and the same for
the committed long run (``results/mini-long``, profile ``mini-long``, HaS arm). Every point is
measured the same way, on a fixed subset of DAVIS-2016 val (:func:`scale_sequences`: every
:data:`SUBSET_EVERY`-th video of the sorted split, so that the whole axis fits in the study's time;
the full-val numbers of the final models are in notebooks 03/04):

* J&F with STM's read and with the kernel (σ = the profile's), and their paired difference
  (per sequence, with a bootstrap interval over the subset's sequences);
* on the same videos with a mirrored twin (the distractor study's twin set), in the run the model
  really does (its precision, memory bank, frame t−1): the twin leakage with each read, and the
  read's scale — logit std and best − second-best gap (STM read) and the median margin of the
  object memory over the kernel's penalty at twin cells (kernel read) —
  :class:`kmnlib.analysis.leak.ReadAtTwin`.

Evaluations are cached like the study's others (run folders under ``<out_dir>/scale/``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kmnlib.analysis.trend import fit_trend
from kmnlib.config import PAPER_SIGMA, REPO_ROOT
from kmnlib.data.davis import read_split
from kmnlib.memory import sigma_label
from kmnlib.parallel import spawn_map
from kmnlib.study import leak
from kmnlib.study.effects import bootstrap_mean
from kmnlib.study.runs import EvalJob, evaluate_all
from kmnlib.study.session import Study, resolve_study
from kmnlib.study.tables import jf_from_global, per_sequence_table
from kmnlib.study.training import ARMS, trained_models
from kmnlib.training.trainer import checkpoint_name

SUBSET_EVERY = 4                     # every 4th video of sorted DAVIS-2016 val: 5 of 20
LONG_RUN = REPO_ROOT / "results" / "mini-long"
LONG_PROFILE = "mini-long"
PAPER_JF = (81.0, 88.0)              # the paper's DAVIS-2016 val J&F range (Table 1/3)
QUANTITIES = ("km_minus_stm", "logit_std", "top_gap", "margin_over_penalty", "leakage")
#: What each quantity can be at all: a line extrapolated outside it cannot hold there.
POSSIBLE = {"km_minus_stm": (-100.0, 100.0), "logit_std": (0.0, np.inf), "top_gap": (0.0, np.inf),
            "margin_over_penalty": (0.0, np.inf), "leakage": (0.0, 100.0)}
SCALE_COLUMNS = ["arm", "seed", "run", "stage", "iterations", "J&F", "km_minus_stm", "ci_low",
                 "ci_high", "logit_std", "top_gap", "margin_over_penalty", "leakage",
                 "leakage_km", "J&F_km", "sigma", "sequences"]


@dataclass(frozen=True)
class ScalePoint:
    """One checkpoint on the axis. ``tag`` names its evaluation folders; ``label``/``arm`` are
    what :mod:`kmnlib.study.leak` puts in its rows."""

    arm: str
    run: str              # "study" (this study's seed) or "long run"
    stage: str            # "pretrain" or "main"
    iterations: int       # training iterations in all (static + video) when saved
    checkpoint: Path

    @property
    def tag(self) -> str:
        base = "has" if ARMS[self.arm] else "nohas"
        return f"{'long_' if self.run == 'long run' else ''}{base}_it{self.iterations}"

    @property
    def label(self) -> str:
        return f"{self.arm}, {self.run}, {self.iterations} it"


def scale_sequences(study: Study) -> tuple[str, ...]:
    """The fixed val subset of the axis; a study restricted to some sequences (smoke runs) keeps
    its own."""
    if study.sequences:
        return tuple(study.sequences)
    names = sorted(read_split(study.data_root / "DAVIS-2016", "2016", "val"))
    return tuple(names[::SUBSET_EVERY])


def subset_study(study: Study) -> Study:
    """``study`` on the axis's subset, its run folders under ``<out_dir>/scale/``."""
    settings = replace(study.settings, out_dir=study.out_dir / "scale",
                       sequences=scale_sequences(study))
    return Study(study.profile, settings)


def snapshot_path(final: Path, iterations: int) -> Path:
    """The trainer's snapshot of a run after ``iterations`` (``<run>.it<N>.pt``)."""
    return final.with_name(f"{final.stem}.it{iterations}.pt")


def study_points(study: Study) -> list[ScalePoint]:
    """This study's points, both arms (trained if missing). A missing snapshot — a checkpoint
    trained before snapshots were kept, or with other ``main.snapshots`` — is refused before any
    evaluation, naming the file and the fix."""
    p = study.profile
    out = []
    for m in trained_models(study):
        if m.stage == "pretrain":
            out.append(ScalePoint(m.arm, "study", "pretrain", p.pretrain.iterations, m.checkpoint))
            continue
        for n in p.main.snapshots:
            path = snapshot_path(m.checkpoint, n)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: snapshot after {n} main iterations missing (the checkpoint was "
                    f"trained before snapshots were kept, or with other main.snapshots); retrain "
                    f"with `python -m kmnlib.study --force --only 02_train_video`")
            out.append(ScalePoint(m.arm, "study", "main", p.pretrain.iterations + n, path))
        out.append(ScalePoint(m.arm, "study", "main", p.pretrain.iterations + p.main.iterations,
                              m.checkpoint))
    return out


def long_run_study(study: Study, folder: Path = LONG_RUN) -> Study:
    """The committed long run as a study (its profile, ``folder`` as out_dir), with this study's
    data and execution settings."""
    s = study.settings
    return resolve_study(LONG_PROFILE, {"out_dir": str(folder), "data_root": str(study.data_root),
                                        "derived_dir": str(study.derived_dir),
                                        "eval_workers": s.eval_workers, "threads": s.threads,
                                        "progress": s.progress})


def _long_run_checkpoints(long: Study) -> tuple[Path, Path]:
    """The long run's (HaS arm) pre-training and final main-training checkpoint paths."""
    pre = long.checkpoints / f"{checkpoint_name('pretrain', hide=True, init=None)}.pt"
    return pre, long.checkpoints / f"{checkpoint_name('main', hide=True, init=pre)}.pt"


def long_run_points(long: Study) -> list[ScalePoint]:
    """The long run's points that exist (HaS arm): pre-training, main snapshots, the final model
    ([] when the folder holds no checkpoints, e.g. a run not yet made)."""
    p = long.profile
    pre, final = _long_run_checkpoints(long)
    out = [ScalePoint("HaS", "long run", "pretrain", p.pretrain.iterations, pre)]
    out += [ScalePoint("HaS", "long run", "main", p.pretrain.iterations + n, snapshot_path(final, n))
            for n in p.main.snapshots]
    out.append(ScalePoint("HaS", "long run", "main", p.pretrain.iterations + p.main.iterations,
                          final))
    return [pt for pt in out if pt.checkpoint.is_file()]


def measure(study: Study, points: Sequence[ScalePoint]) -> pd.DataFrame:
    """One row per point (:data:`SCALE_COLUMNS`), computing what is not cached: the subset's
    evaluations with both reads, then the twin-set runs (``eval_workers`` at a time)."""
    sub = subset_study(study)
    sigma = study.profile.inference.sigma
    jobs = {(pt, s): EvalJob(pt.checkpoint, pt.tag, s) for pt in points for s in (None, sigma)}
    results = evaluate_all(sub, list(jobs.values()))
    spawn_map(leak.per_frame, [(sub, pt, s, "read_at_twin") for pt in points
                               for s in (None, sigma)], study.settings.eval_workers)
    rows = []
    for pt in points:
        stm, km = results[jobs[pt, None]], results[jobs[pt, sigma]]
        twin_stm = leak.per_frame(sub, pt, None, "read_at_twin")
        twin_km = leak.per_frame(sub, pt, sigma, "read_at_twin")
        rows.append({"arm": pt.arm, "seed": study.profile.seed, "run": pt.run, "stage": pt.stage,
                     "iterations": pt.iterations, **_read_effect(stm, km),
                     "logit_std": float(twin_stm["logit_std"].mean()),
                     "top_gap": float(twin_stm["top_gap"].mean()),
                     "margin_over_penalty": float(twin_km["margin_over_penalty"].median()),
                     "leakage": 100 * float(twin_stm["leakage"].mean()),
                     "leakage_km": 100 * float(twin_km["leakage"].mean()),
                     "sigma": sigma, "sequences": len(sub.sequences or [])})
    return pd.DataFrame(rows, columns=SCALE_COLUMNS)


def _read_effect(stm: dict, km: dict) -> dict[str, float]:
    """J&F of both reads and the paired KM − STM difference over the subset's sequences, with a
    bootstrap interval over sequences (one seed: sequences are the only unit here)."""
    a, b = (per_sequence_table(r["per_sequence"]).set_index("sequence")["J&F"] for r in (km, stm))
    diff = (a - b).to_frame().T
    mean, low, high, _ = bootstrap_mean(diff)
    return {"J&F": jf_from_global(stm["global"])["J&F"], "J&F_km": jf_from_global(km["global"])["J&F"],
            "km_minus_stm": mean, "ci_low": low, "ci_high": high}


def trends(table: pd.DataFrame, at: Sequence[float] = PAPER_JF) -> pd.DataFrame:
    """Per quantity of :data:`QUANTITIES`: its least-squares line against J&F over every point of
    ``table``, the slope's interval and the line's value (with its 95 % prediction interval) at
    each J&F of ``at`` — and how far that lies outside the measured J&F."""
    rows = []
    for q in (q for q in QUANTITIES if q in table):
        data = table[["J&F", q]].replace([np.inf, -np.inf], np.nan).dropna()
        if len(data) < 3 or data["J&F"].nunique() < 2:
            continue
        fit = fit_trend(data["J&F"], data[q], at)
        for p in fit.predictions:
            rows.append({"quantity": q, "points": fit.n, "slope_per_jf": fit.slope,
                         "slope_ci_low": fit.slope_ci[0], "slope_ci_high": fit.slope_ci[1],
                         "r2": fit.r2, "jf_min": fit.x_range[0], "jf_max": fit.x_range[1],
                         "at_jf": p.x, "predicted": p.value, "pi_low": p.pi[0], "pi_high": p.pi[1],
                         "jf_beyond_data": max(p.x - fit.x_range[1], fit.x_range[0] - p.x, 0.0)})
    return pd.DataFrame(rows)


def trend_sentences(trend: pd.DataFrame) -> list[str]:
    """One sentence per quantity: the direction of its trend against J&F (or that the data cannot
    tell it) and its extrapolated value at the paper's highest J&F, with the prediction interval."""
    out = []
    for q, g in trend.groupby("quantity", sort=False):
        f = g.iloc[-1]
        lo, hi = f["slope_ci_low"], f["slope_ci_high"]
        way = ("rises" if lo > 0 else "falls" if hi < 0 else "has no direction the data can tell")
        out.append(f"{q} {way} with J&F (slope {f['slope_per_jf']:+.3g} per J&F point, 95 % "
                   f"[{lo:+.3g}, {hi:+.3g}], {int(f['points'])} checkpoints, J&F "
                   f"{f['jf_min']:.1f}–{f['jf_max']:.1f}); the line at {f['at_jf']:.0f} J&F: "
                   f"{f['predicted']:.3g} [{f['pi_low']:.3g}, {f['pi_high']:.3g}], "
                   f"{f['jf_beyond_data']:.0f} J&F points beyond the data"
                   + _impossible(q, f["predicted"]) + ".")
    return out


def _impossible(quantity: str, value: float) -> str:
    lo, hi = POSSIBLE[quantity]
    if lo <= value <= hi:
        return ""
    return f" — outside the range {quantity} can take ({lo:g} to {hi:g}): the line cannot hold there"


def long_run_final(long: Study) -> Path:
    """The long run's final checkpoint (``FileNotFoundError`` naming it while the run is unfinished)."""
    final = _long_run_checkpoints(long)[1]
    if not final.is_file():
        raise FileNotFoundError(f"{final}: the long run has not finished; resume it with the "
                                f"command in {long.out_dir / 'RUN.md'}")
    return final


def long_run_log(long: Study) -> Path:
    """The long run's main-training log (per-iteration CSV beside its checkpoint)."""
    return long_run_final(long).with_suffix(".csv")


def long_run_val(long: Study) -> pd.DataFrame:
    """The long run's final model on all of DAVIS-2016 val with STM's read and the kernel at the
    profile's σ and the paper's: J&F, J, F, and for each kernel read its paired difference to STM's
    read with a bootstrap interval over the sequences (one seed) — cached in the long run's folder."""
    final = long_run_final(long)
    sigmas = tuple(dict.fromkeys((None, long.profile.inference.sigma, PAPER_SIGMA)))
    jobs = [EvalJob(final, "long_has", s) for s in sigmas]
    results = evaluate_all(long, jobs)
    rows = []
    for j in jobs:
        effect = {} if j.sigma is None else {
            k: v for k, v in _read_effect(results[jobs[0]], results[j]).items()
            if k in ("km_minus_stm", "ci_low", "ci_high")}
        rows.append({"model": f"mini-long, HaS, {long.profile.pretrain.iterations}+"
                              f"{long.profile.main.iterations} it, seed {long.profile.seed}",
                     "read": sigma_label(j.sigma), **jf_from_global(results[j]["global"]),
                     **effect, "s/frame": results[j]["s_per_frame"], "run": results[j]["run"]})
    return pd.DataFrame(rows)
