"""The study's tables of our numbers, each built from the evaluation runs it needs.

A table builder (:class:`Ablation`, :class:`SigmaSweep`, :class:`Table1`) names its evaluation jobs
(``jobs()``) and turns their results into rows (``build(results)``); :func:`results_for` runs the
union of the jobs of several tables (side by side, cached), from which each table is built. Rows
carry their protocol label (:func:`kmnlib.study.runs.protocol`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from kmnlib.config import current_names
from kmnlib.provenance import PROVENANCE_JSON, code_changed_since, provenance, read_provenance
from kmnlib.study.effects import effects_table, paired_differences, paired_effect
from kmnlib.study.paper import effect_interval
from kmnlib.study.runs import DAVIS16_VAL, EvalJob, evaluate_all
from kmnlib.study.session import PROFILE_JSON, Study, environment_summary
from kmnlib.study.summary import replicates
from kmnlib.study.training import STAGE_LABELS, TrainedCheckpoint
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


def training_lines(summary: pd.DataFrame) -> list[str]:
    """One line per arm of a :func:`training_summary`: iterations, loss at the start and the end,
    wall time and throughput (what a reader needs instead of the trainer's progress output)."""
    def num(value: float, fmt: str) -> str:
        return "—" if pd.isna(value) else format(value, fmt)

    return [f"{r.run}: {int(r.iterations)} iterations, loss {num(r.first_loss, '.3f')} → "
            f"{num(r.final_loss, '.3f')} (means of the first and last tenth), wall "
            f"{num(r.wall_s, '.0f')} s, {num(r.clips_per_s, '.2f')} clips/s"
            for r in summary.itertuples(index=False)]


def evaluation_lines(table: pd.DataFrame, results: Results) -> list[str]:
    """One line per evaluated arm of an :class:`ArmsTable` table: what it is, J&F, s/frame, and
    whether it was computed now or read back from its folder."""
    cached = {res["run"]: res["cached"] for res in results.values()}
    lines = []
    for _, r in table.iterrows():
        read = r["read"] if pd.isna(r["sigma"]) else f"{r['read']} σ={r['sigma']:g}"
        how = "read back" if cached.get(r["run"]) else "computed now"
        lines.append(f"{r['run']}: {r['stage']}, {r['pretraining']}, {read}: J&F {r['J&F']:.1f}, "
                     f"{r['s/frame']:.3g} s/frame, {how}")
    return lines


def timing_hardware(study: Study) -> str:
    """What our s/frame was measured on: the device, the CPU model recorded in the study's
    ``provenance.json`` (else this machine's) and the torch threads of one evaluation (one thread
    per worker when ``eval_workers`` > 1, :func:`kmnlib.study.runs.evaluate_all`)."""
    if study.device != "cpu":
        return study.device
    try:
        cpu = read_provenance(study.out_dir)["cpu"]
    except (FileNotFoundError, KeyError, ValueError):
        cpu = provenance([])["cpu"]  # the folder's record is written after its first run
    workers = study.settings.eval_workers
    threads = 1 if workers > 1 else environment_summary()["threads"]
    side = f", {workers} evaluations side by side" if workers > 1 else ""
    return f"CPU ({cpu}), {threads} torch thread(s) per evaluation{side}"


# --- table builders --------------------------------------------------------------------------
class EvalTable(Protocol):
    def jobs(self) -> list[EvalJob]: ...
    def build(self, results: Results) -> pd.DataFrame: ...


def results_for(study: Study, *tables: EvalTable) -> Results:
    """The results of the union of the tables' evaluation jobs (:func:`evaluate_all`: missing runs
    are computed side by side first); build each table from them."""
    return evaluate_all(study, [j for t in tables for j in t.jobs()])


def row_labels(study: Study, model: TrainedCheckpoint, sigma: float | None,
               dataset: str = DAVIS16_VAL) -> dict[str, Any]:
    """What a row of ours is: set, backbone, stage, pre-training arm, read, σ, resolution, seed."""
    return {"set": dataset, "backbone": study.profile.model.backbone,
            "stage": STAGE_LABELS[model.stage], "pretraining": model.arm,
            "read": "STM read" if sigma is None else "KM",
            "sigma": float("nan") if sigma is None else float(sigma),
            "resolution": study.profile.inference_label(), "seed": study.profile.seed}


LABEL_COLUMNS = ["set", "backbone", "stage", "pretraining", "read", "sigma", "resolution", "seed"]


@dataclass(frozen=True)
class ArmsTable:
    """Every model × every read on one DAVIS-layout set: one labelled row each (J&F, J, F,
    s/frame, run, protocol), and the same runs per sequence (:meth:`per_sequence`)."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    reads: Sequence[float | None]
    dataset: str = DAVIS16_VAL

    def _pairs(self) -> list[tuple[TrainedCheckpoint, float | None, EvalJob]]:
        return [(m, s, EvalJob(m.checkpoint, m.tag, s, self.dataset))
                for m in self.models for s in self.reads]

    def jobs(self) -> list[EvalJob]:
        return [job for _, _, job in self._pairs()]

    def build(self, results: Results) -> pd.DataFrame:
        rows = []
        for model, sigma, job in self._pairs():
            res = results[job]
            rows.append({**row_labels(self.study, model, sigma, self.dataset),
                         **jf_from_global(res["global"], source=str(res["run_dir"])),
                         "s/frame": res["s_per_frame"], "run": res["run"],
                         "protocol": res["protocol"]})
        return pd.DataFrame(rows)

    def per_sequence(self, results: Results) -> pd.DataFrame:
        """Per sequence of every row: the labels, sequence, objects, J, F, J&F (percent)."""
        frames = [per_sequence_table(results[job]["per_sequence"]).assign(
                      **row_labels(self.study, model, sigma, self.dataset), run=job.run)
                  for model, sigma, job in self._pairs()]
        df = pd.concat(frames, ignore_index=True)
        return df.reindex(columns=LABEL_COLUMNS + ["run", "sequence", "objects", "J", "F", "J&F"])


@dataclass(frozen=True)
class Ablation:
    """Table 3 rows of ours: each main-trained model (HaS / no HaS) with STM's read and with the
    kernel at each σ of ``sigmas``; DAVIS16 val J&F (DAVIS17 val when in ``extra_sets``)."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    sigmas: Sequence[float]
    extra_sets: Sequence[str] = field(default_factory=tuple)

    def _job(self, model: TrainedCheckpoint, read: float | None,
             dataset: str = DAVIS16_VAL) -> EvalJob:
        return EvalJob(model.checkpoint, model.tag, read, dataset)

    def _reads(self) -> list[float | None]:
        return [None, *self.sigmas]

    def jobs(self) -> list[EvalJob]:
        sets = [DAVIS16_VAL, *(s for s in self.extra_sets if s == "DAVIS-2017:val")]
        return [self._job(m, read, ds) for m in self.models for read in self._reads()
                for ds in sets]

    def build(self, results: Results) -> pd.DataFrame:
        rows = []
        for model in self.models:
            for read in self._reads():
                res = results[self._job(model, read)]
                d17 = float("nan")
                if "DAVIS-2017:val" in self.extra_sets:
                    d17 = jf_from_global(results[self._job(model, read, "DAVIS-2017:val")]
                                         ["global"])["J&F"]
                rows.append({**row_labels(self.study, model, read),
                             "method": "ours", "HaS": model.arm == "HaS", "KM": read is not None,
                             "DAVIS16 J&F": jf_from_global(res["global"])["J&F"],
                             "DAVIS17 J&F": d17, "YouTube-VOS overall": float("nan"),
                             "s/frame": res["s_per_frame"], "run": res["run"],
                             "protocol": res["protocol"]})
        rows.sort(key=lambda r: (r["KM"], r["HaS"], 0 if np.isnan(r["sigma"]) else r["sigma"]))
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class SigmaSweep:
    """DAVIS16 val J&F/J/F of each model for every σ (None = STM read)."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    sigmas: Sequence[float | None]

    def jobs(self) -> list[EvalJob]:
        return [EvalJob(m.checkpoint, m.tag, s) for m in self.models for s in self.sigmas]

    def build(self, results: Results) -> pd.DataFrame:
        rows = []
        for model in self.models:
            for s in self.sigmas:
                res = results[EvalJob(model.checkpoint, model.tag, s)]
                rows.append({**row_labels(self.study, model, s), "model": model.label,
                             **jf_from_global(res["global"]), "s/frame": res["s_per_frame"],
                             "run": res["run"]})
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class Table1:
    """Our rows for Table 1 (DAVIS16 val; DAVIS17 val when in ``extra_sets``), each named by what
    it is: the KMN recipe (HaS pre-training, kernel read σ) static-only and after video training,
    and the STM recipe on our network (no-HaS pre-training, STM's read) likewise."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    sigma: float
    extra_sets: Sequence[str] = field(default_factory=tuple)

    def _rows(self) -> list[tuple[str, str, TrainedCheckpoint, EvalJob]]:
        out = []
        for ds in [DAVIS16_VAL, *self.extra_sets]:
            label = "DAVIS16 val" if ds == DAVIS16_VAL else "DAVIS17 val"
            for model in self.models:
                read = self.sigma if model.arm == "HaS" else None
                method = (f"ours, KMN recipe: {model.label}, KM σ={self.sigma:g}" if read
                          else f"ours, STM recipe: {model.label}, STM read")
                out.append((method, label, model, EvalJob(model.checkpoint, model.tag, read, ds)))
        return out

    def jobs(self) -> list[EvalJob]:
        return [job for *_, job in self._rows()]

    def build(self, results: Results) -> pd.DataFrame:
        return pd.DataFrame([{**results_row(results[job], method=method, dataset=label),
                              **row_labels(self.study, model, job.sigma, job.dataset)}
                             for method, label, model, job in self._rows()])


# --- replicates and effects ------------------------------------------------------------------
def replicate_dirs(study: Study) -> list[Path]:
    """This run's folder and every replicate beside it (``<out_dir>-seed<N>``).

    A replicate is never left out: one that cannot be pooled stops the pooling step with a
    ``ValueError`` naming the folder and why (:func:`replicate_problem`) — its settings differ
    beyond the seed, it is not a finished study, or it was made by other code — and the fix."""
    mine = _profile_without_seed(study.out_dir / PROFILE_JSON)
    out = [study.out_dir]
    for d in replicates(study.out_dir):
        problem = replicate_problem(mine, d)
        if problem:
            seed = d.name.rsplit("-seed", 1)[1]
            raise ValueError(f"replicate {d}: {problem}; re-make it with this code "
                             f"(python -m kmnlib.study --profile {study.profile.name} --seed "
                             f"{seed} --out-dir {d}) or move it out of {d.parent} to leave it out")
        out.append(d)
    return out


def replicate_problem(mine: dict[str, Any], folder: Path) -> str | None:
    """Why ``folder`` cannot be pooled with a run whose profile (minus seed) is ``mine``, or None:
    no ``profile.json`` or ``provenance.json`` (not a finished study), settings that differ beyond
    the seed (named), made from uncommitted code, or made by a commit whose ``kmnlib/`` or
    ``notebooks/`` differ from this checkout's (:func:`kmnlib.provenance.code_changed_since`)."""
    for name in (PROFILE_JSON, PROVENANCE_JSON):
        if not (folder / name).is_file():
            return f"has no {name} (not a finished study run)"
    differ = setting_differences(mine, _profile_without_seed(folder / PROFILE_JSON))
    if differ:
        return (f"differs beyond the seed in {', '.join(differ[:8])}"
                f"{' …' if len(differ) > 8 else ''}")
    record = read_provenance(folder)
    if record.get("changed_during_run"):
        return f"its code changed while it ran ({record['changed_during_run']})"
    if record.get("dirty"):
        return f"was made from uncommitted code ({', '.join(record['dirty'][:3])})"
    changed = code_changed_since(record["commit"]) if record.get("commit") else None
    if changed:
        return (f"was made by other code: {len(changed)} file(s) of kmnlib/ or notebooks/ "
                f"changed since its commit {record['commit'][:10]} (e.g. {changed[0]})")
    return None


def setting_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the settings in which two recorded profiles (nested dicts) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b), key=str)
                for p in setting_differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _profile_without_seed(path: Path) -> dict[str, Any]:
    """A recorded profile minus its seed, settings renamed since under their current names
    (:func:`kmnlib.config.current_names`), so replicates recorded before a rename still pool."""
    prof = current_names(json.loads(path.read_text()))
    prof.pop("seed", None)
    return prof


def pooled_per_sequence(study: Study, table: str) -> pd.DataFrame:
    """``tables/<table>`` of this run and of every replicate (:func:`replicate_dirs`), stacked
    (each row carries its seed); a replicate without it is refused, naming the file."""
    paths = [d / "tables" / table for d in replicate_dirs(study)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: table missing (a replicate must be a whole study "
                                f"run; re-make {missing[0].parent.parent} with this code)")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def select_rows(per_seq: pd.DataFrame, **match: Any) -> pd.DataFrame:
    """Rows whose columns equal ``match`` (``sigma=None`` matches STM's read, stored as NaN)."""
    sel = pd.Series(True, index=per_seq.index)
    for col, value in match.items():
        if col == "sigma" and value is None:
            sel &= per_seq[col].isna()
        elif col == "sigma":
            sel &= np.isclose(per_seq[col].astype(float), float(value))
        else:
            sel &= per_seq[col] == value
    return per_seq[sel]


@dataclass(frozen=True)
class Comparison:
    """``a − b`` on per-sequence rows: ``a`` and ``b`` are column matches (:func:`select_rows`)."""

    comparison: str
    stage: str
    read: str
    a: Mapping[str, Any]
    b: Mapping[str, Any]
    metric: str = "J&F"


def val_comparisons(sigmas: Sequence[float]) -> list[Comparison]:
    """The DAVIS-16 val effects of the study: the kernel (KM − STM read) on every model at each σ,
    and Hide-and-Seek (HaS − no HaS) at both stages with either read (the first σ)."""
    out = []
    for stage in STAGE_LABELS.values():
        for s in sigmas:
            for arm in ("HaS", "no HaS"):
                out.append(Comparison(f"KM − STM read, {arm} model", stage, f"KM σ={s:g} vs STM",
                                      dict(stage=stage, pretraining=arm, sigma=s),
                                      dict(stage=stage, pretraining=arm, sigma=None)))
        for s in (None, sigmas[0]):
            read = "STM read" if s is None else f"KM σ={s:g}"
            out.append(Comparison("HaS − no HaS", stage, read,
                                  dict(stage=stage, pretraining="HaS", sigma=s),
                                  dict(stage=stage, pretraining="no HaS", sigma=s)))
    return out


def effects(per_seq: pd.DataFrame, comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """One :func:`kmnlib.study.effects.paired_effect` row per comparison whose rows exist (pooled
    over every seed present in both arms), with the metric named."""
    rows = []
    for c in comparisons:
        a, b = select_rows(per_seq, **c.a), select_rows(per_seq, **c.b)
        if a.empty or b.empty:
            continue
        # Pairs where both arms have the metric (leakage is undefined without a visible twin),
        # from seeds that hold both arms.
        keys = (set(zip(a["seed"], a["sequence"], a[c.metric].notna()))
                & set(zip(b["seed"], b["sequence"], b[c.metric].notna())))
        keep = {(s, q) for s, q, ok in keys if ok}
        a = a[[k in keep for k in zip(a["seed"], a["sequence"])]]
        b = b[[k in keep for k in zip(b["seed"], b["sequence"])]]
        if a.empty:
            continue
        rows.append({**paired_effect(a, b, comparison=c.comparison, stage=c.stage, read=c.read,
                                     metric=c.metric), "metric": c.metric})
    return effects_table(rows)


def sequence_differences(per_seq: pd.DataFrame, c: Comparison) -> pd.DataFrame:
    """Per (seed, sequence) ``a − b`` of a comparison, long: ``seed``, ``sequence``, ``diff`` (the
    points of a per-sequence dot plot); pairs where either side lacks the metric are left out."""
    a, b = select_rows(per_seq, **c.a), select_rows(per_seq, **c.b)
    a, b = a[a[c.metric].notna()], b[b[c.metric].notna()]
    keep = set(zip(a["seed"], a["sequence"])) & set(zip(b["seed"], b["sequence"]))
    a = a[[k in keep for k in zip(a["seed"], a["sequence"])]]
    b = b[[k in keep for k in zip(b["seed"], b["sequence"])]]
    if a.empty:
        return pd.DataFrame(columns=["seed", "sequence", "diff"])
    wide = paired_differences(a, b, metric=c.metric)
    return (wide.stack().rename("diff").reset_index()
            .reindex(columns=["seed", "sequence", "diff"]).dropna())


def sigma_effects(effects_df: pd.DataFrame, *, stage: str = STAGE_LABELS["main"]) -> pd.DataFrame:
    """The kernel's effect against STM's read per model and σ (rows ``KM − STM read, <arm>
    model`` of an effects table at ``stage``): ``model``, ``sigma``, ``mean_diff``, ``low``,
    ``high``, ``interval`` (:func:`kmnlib.study.paper.effect_interval`)."""
    rows = []
    for _, r in effects_df.iterrows():
        if r["stage"] != stage or not str(r["comparison"]).startswith("KM − STM read, "):
            continue
        if r.get("metric", "J&F") != "J&F":
            continue
        low, high, _, kind = effect_interval(r)
        sigma = float(str(r["read"]).split("σ=", 1)[1].split()[0])
        rows.append({"model": str(r["comparison"]).removeprefix("KM − STM read, "),
                     "sigma": sigma, "mean_diff": float(r["mean_diff"]), "low": low,
                     "high": high, "interval": kind})
    return pd.DataFrame(rows, columns=["model", "sigma", "mean_diff", "low", "high", "interval"])
