"""The study's tables of our numbers, each built from the evaluation runs it needs.

A table builder (:class:`Ablation`, :class:`SigmaSweep`, :class:`Table1`) names its evaluation jobs
(``jobs()``) and turns their results into rows (``build(results)``); :func:`make_tables` runs the
union of the jobs of several tables (side by side, cached) and builds each. Rows carry their
protocol label (:func:`kmnlib.study.runs.protocol`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from kmnlib.memory import sigma_label
from kmnlib.study.runs import DAVIS16_VAL, EvalJob, evaluate_all
from kmnlib.study.session import Study
from kmnlib.training.log import read_log

Results = Mapping[EvalJob, dict[str, Any]]


# --- reading evaluation tables ---------------------------------------------------------------
def jf_from_global(global_df: pd.DataFrame, *, source: str = "global table") -> dict[str, float]:
    """Pick J&F, J and F (in percent) from an evaluation's global table.

    Accepts the official DAVIS column names (``J&F-Mean``, ``J-Mean``, ``F-Mean``) or plain
    ``J&F``/``J``/``F``, with one row. The official toolkit stores fractions in [0, 1]; a table
    whose three values all lie in [0, 1] is taken as fractions and scaled to percent.
    """
    if len(global_df) != 1:
        raise ValueError(f"{source}: expected one row of global metrics, got {len(global_df)}")
    row = global_df.iloc[0]
    out = {}
    for key in ("J&F", "J", "F"):
        for col in (f"{key}-Mean", key, f"{key}_mean"):
            if col in global_df.columns:
                out[key] = float(row[col])
                break
        else:
            raise ValueError(f"{source}: no column for {key} (columns: {list(global_df.columns)})")
    if all(0.0 <= v <= 1.0 for v in out.values()):
        out = {k: 100.0 * v for k, v in out.items()}
    return out


def per_sequence_table(per_seq_df: pd.DataFrame, *, source: str = "per-sequence table"
                       ) -> pd.DataFrame:
    """Per-sequence J, F and J&F in percent from an evaluation's per-object table.

    Input columns ``Sequence`` (``<seq>_<object id>``), ``J-Mean``, ``F-Mean`` (fractions, as
    :func:`kmnlib.evaluate.evaluate_davis` returns). Objects of one sequence are averaged, so the
    output has one row per video: ``sequence``, ``objects``, ``J``, ``F``, ``J&F``.
    """
    need = ["Sequence", "J-Mean", "F-Mean"]
    if any(c not in per_seq_df.columns for c in need):
        raise ValueError(f"{source}: needs columns {need} (has {list(per_seq_df.columns)})")
    seq = per_seq_df["Sequence"].astype(str).str.rsplit("_", n=1).str[0]
    df = pd.DataFrame({"sequence": seq, "J": 100.0 * per_seq_df["J-Mean"].astype(float),
                       "F": 100.0 * per_seq_df["F-Mean"].astype(float)})
    out = df.groupby("sequence", sort=False).agg(objects=("J", "size"), J=("J", "mean"),
                                                 F=("F", "mean")).reset_index()
    out["J&F"] = (out["J"] + out["F"]) / 2.0
    return out


def results_row(result: dict[str, Any], *, method: str, dataset: str) -> dict[str, Any]:
    """One row of ours for a paper-style table from an evaluation result."""
    jf = jf_from_global(result["global"], source=str(result["run_dir"]))
    return {"method": method, "training_data": result["training_data"], "dataset": dataset, **jf,
            "s/frame": result["s_per_frame"], "run": result["run"], "protocol": result["protocol"]}


def results_table(study: Study, runs: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per labelled evaluation result: J&F, J, F (percent), s/frame, run folder, protocol."""
    rows = []
    for label, res in runs.items():
        jf = jf_from_global(res["global"], source=str(res["run_dir"]))
        rows.append({"run": label, **jf, "s/frame": res["s_per_frame"],
                     "folder": str(Path(res["run_dir"]).relative_to(study.out_dir)),
                     "protocol": res["protocol"]})
    return pd.DataFrame(rows)


def per_sequence_long(per_seq: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack per-sequence tables (label → :func:`per_sequence_table`) with a ``run`` column."""
    return pd.concat([df.assign(run=label) for label, df in per_seq.items()], ignore_index=True)


def training_summary(logs: Mapping[str, str | os.PathLike], *, tail: float = 0.1) -> pd.DataFrame:
    """One row per training run (label → CSV log of the trainer).

    Columns: run, iterations (last ``step``), wall_s (last ``wall_s``), first_loss (mean of the
    first ``tail`` fraction of rows), final_loss (mean of the last ``tail`` fraction), clips_per_s
    (median).
    """
    rows = []
    for label, path in logs.items():
        df = read_log(path)
        k = max(1, int(round(len(df) * tail)))
        rows.append({"run": label, "iterations": int(df["step"].iloc[-1]),
                     "wall_s": float(df["wall_s"].iloc[-1]) if "wall_s" in df else float("nan"),
                     "first_loss": float(df["loss"].head(k).mean()),
                     "final_loss": float(df["loss"].tail(k).mean()),
                     "clips_per_s": (float(df["clips_per_s"].median()) if "clips_per_s" in df
                                     else float("nan"))})
    return pd.DataFrame(rows)


# --- table builders --------------------------------------------------------------------------
class EvalTable(Protocol):
    def jobs(self) -> list[EvalJob]: ...
    def build(self, results: Results) -> pd.DataFrame: ...


def make_tables(study: Study, *tables: EvalTable) -> list[pd.DataFrame]:
    """Run the union of the tables' evaluation jobs (:func:`evaluate_all`), then build each."""
    results = evaluate_all(study, [j for t in tables for j in t.jobs()])
    return [t.build(results) for t in tables]


@dataclass(frozen=True)
class Ablation:
    """Table 3 rows of ours: each model (label "HaS" / "no HaS" → checkpoint, tag) read with the
    kernel σ and with STM's read; DAVIS16 val J&F, DAVIS17 val when in ``extra_sets``."""

    models: Mapping[str, tuple[Path, str]]
    sigma: float
    extra_sets: Sequence[str] = field(default_factory=tuple)

    def _job(self, label: str, read: float | None, dataset: str = DAVIS16_VAL) -> EvalJob:
        ckpt, tag = self.models[label]
        return EvalJob(Path(ckpt), tag, read, dataset)

    def jobs(self) -> list[EvalJob]:
        sets = [DAVIS16_VAL, *(s for s in self.extra_sets if s == "DAVIS-2017:val")]
        return [self._job(label, read, ds) for label in self.models
                for read in (None, self.sigma) for ds in sets]

    def build(self, results: Results) -> pd.DataFrame:
        rows = []
        for label in self.models:
            for read in (None, self.sigma):
                res = results[self._job(label, read)]
                d17 = float("nan")
                if "DAVIS-2017:val" in self.extra_sets:
                    d17 = jf_from_global(results[self._job(label, read, "DAVIS-2017:val")]
                                         ["global"])["J&F"]
                rows.append({"method": "KMN", "HaS": label == "HaS", "KM": read is not None,
                             "DAVIS16 J&F": jf_from_global(res["global"])["J&F"],
                             "DAVIS17 J&F": d17, "YouTube-VOS overall": float("nan"),
                             "read": sigma_label(read), "s/frame": res["s_per_frame"],
                             "run": res["run"], "protocol": res["protocol"]})
        order = {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}
        rows.sort(key=lambda r: order[(r["HaS"], r["KM"])])
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class SigmaSweep:
    """DAVIS16 val J&F/J/F of each model (label → checkpoint, tag) for every σ (None = STM read)."""

    models: Mapping[str, tuple[Path, str]]
    sigmas: Sequence[float | None]

    def jobs(self) -> list[EvalJob]:
        return [EvalJob(Path(c), tag, s) for c, tag in self.models.values() for s in self.sigmas]

    def build(self, results: Results) -> pd.DataFrame:
        rows = []
        for label, (ckpt, tag) in self.models.items():
            for s in self.sigmas:
                res = results[EvalJob(Path(ckpt), tag, s)]
                rows.append({"model": label, "sigma": float("nan") if s is None else float(s),
                             "read": sigma_label(s), **jf_from_global(res["global"]),
                             "s/frame": res["s_per_frame"], "run": res["run"]})
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class Table1:
    """Our rows for Table 1 (DAVIS16 val; DAVIS17 val when in ``extra_sets``): the static-only HaS
    model and the HaS model with the kernel ("KMN"), the no-HaS model with STM's read ("STM").

    ``models``: ``pretrain_has``, ``has``, ``nohas`` → checkpoint (the keys are also the tags).
    """

    models: Mapping[str, Path]
    sigma: float
    extra_sets: Sequence[str] = field(default_factory=tuple)

    def _rows(self) -> list[tuple[str, str, EvalJob]]:
        out = []
        for ds in [DAVIS16_VAL, *self.extra_sets]:
            label = "DAVIS16 val" if ds == DAVIS16_VAL else "DAVIS17 val"
            for method, key, read in (("KMN", "pretrain_has", self.sigma),
                                      ("KMN", "has", self.sigma), ("STM", "nohas", None)):
                out.append((method, label, EvalJob(Path(self.models[key]), key, read, ds)))
        return out

    def jobs(self) -> list[EvalJob]:
        return [job for _, _, job in self._rows()]

    def build(self, results: Results) -> pd.DataFrame:
        return pd.DataFrame([results_row(results[job], method=method, dataset=label)
                             for method, label, job in self._rows()])
