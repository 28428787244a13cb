"""The distractor study's tables: J&F on the twin and pair stress sets, twin leakage, oracle reads,
and their paired effects (:mod:`kmnlib.data.derived`, :mod:`kmnlib.analysis.distractors`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kmnlib.analysis.distractors import leakage_by_sequence, twin_leakage
from kmnlib.study.runs import PAIRS_VAL, TWIN_VAL, EvalJob, davis
from kmnlib.study.session import Study
from kmnlib.study.tables import (LABEL_COLUMNS, Comparison, Results, jf_from_global,
                                 per_sequence_table, row_labels)
from kmnlib.study.training import STAGE_LABELS, TrainedCheckpoint

SET_NAMES = {TWIN_VAL: "DAVIS-16 val + twin", PAIRS_VAL: "DAVIS-16 val pairs"}


def run_leakage(study: Study, dataset: str, result: dict) -> pd.DataFrame:
    """Per sequence (``sequence``, ``leakage``): the share of the twin's pixels (the ``Twins/`` maps
    of the derived set ``dataset``) that an evaluation run's result PNGs label as the object."""
    ds = davis(study, dataset)
    names = study.sequences or ds.names
    return leakage_by_sequence(twin_leakage(result["run_dir"] / "masks", ds.root, names))


@dataclass(frozen=True)
class DistractorTable:
    """Every model × read on the twin and pair sets, the ``extension_sigmas`` (not the paper's
    method) on the twin set, and the oracle read (twin pixels read no object memory) of
    ``oracle_models`` on the twin set with STM's read and the first σ. Rows: labels,
    ``extension``, ``oracle``, J&F, J, F, twin ``leakage`` (percent of twin pixels labelled object;
    twin set only), s/frame, run."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    reads: Sequence[float | None]
    oracle_models: Sequence[TrainedCheckpoint] = ()
    extension_sigmas: Sequence[float] = ()

    def _triples(self) -> list[tuple[TrainedCheckpoint, float | None, EvalJob]]:
        out = [(m, s, EvalJob(m.checkpoint, m.tag, s, ds))
               for ds in (TWIN_VAL, PAIRS_VAL) for m in self.models for s in self.reads]
        out += [(m, s, EvalJob(m.checkpoint, m.tag, s, TWIN_VAL))
                for m in self.models for s in self.extension_sigmas]
        first_sigma = next(s for s in self.reads if s is not None)
        out += [(m, s, EvalJob(m.checkpoint, m.tag, s, TWIN_VAL, oracle=True))
                for m in self.oracle_models for s in (None, first_sigma)]
        return out

    def jobs(self) -> list[EvalJob]:
        return [job for *_, job in self._triples()]


    def per_sequence(self, results: Results) -> pd.DataFrame:
        frames = []
        for model, sigma, job in self._triples():
            res = results[job]
            df = per_sequence_table(res["per_sequence"])
            if job.dataset == TWIN_VAL:
                lk = run_leakage(self.study, TWIN_VAL, res).set_index("sequence")["leakage"]
                df["leakage"] = 100.0 * df["sequence"].map(lk)
            else:
                df["leakage"] = np.nan
            frames.append(df.assign(**row_labels(self.study, model, sigma, job.dataset),
                                    oracle=job.oracle, extension=self._is_extension(sigma),
                                    run=job.run))
        return pd.concat(frames, ignore_index=True).reindex(
            columns=LABEL_COLUMNS + ["extension", "oracle", "run", "sequence", "objects", "J",
                                     "F", "J&F", "leakage"])

    def _is_extension(self, sigma: float | None) -> bool:
        return sigma is not None and sigma in self.extension_sigmas and sigma not in self.reads

    def build(self, results: Results, per_seq: pd.DataFrame | None = None) -> pd.DataFrame:
        per_seq = self.per_sequence(results) if per_seq is None else per_seq
        rows = []
        for model, sigma, job in self._triples():
            res = results[job]
            lk = per_seq[per_seq["run"] == job.run]["leakage"]
            rows.append({**row_labels(self.study, model, sigma, job.dataset),
                         "set_name": SET_NAMES[job.dataset], "model": model.label,
                         "extension": self._is_extension(sigma), "oracle": job.oracle,
                         **jf_from_global(res["global"]),
                         "leakage": float(lk.mean()) if lk.notna().any() else np.nan,
                         "s/frame": res["s_per_frame"], "run": job.run})
        return pd.DataFrame(rows)


def distractor_comparisons(sigmas: Sequence[float], extension_sigmas: Sequence[float] = ()
                           ) -> list[Comparison]:
    """Effects on the stress sets (main-trained models): KM − STM read in J&F on both sets and in
    twin leakage, per σ; the extension widths likewise on the twin set (labelled "extension");
    and the oracle read − the plain read in twin leakage and J&F."""
    stage = STAGE_LABELS["main"]
    out = []
    for arm in ("HaS", "no HaS"):
        for s in extension_sigmas:
            for metric in ("J&F", "leakage"):
                out.append(Comparison(f"extension, KM − STM read, {arm} model, "
                                      f"{SET_NAMES[TWIN_VAL]}", stage, f"KM σ={s:g} vs STM",
                                      dict(set=TWIN_VAL, stage=stage, pretraining=arm, sigma=s,
                                           oracle=False),
                                      dict(set=TWIN_VAL, stage=stage, pretraining=arm, sigma=None,
                                           oracle=False), metric))
        for s in sigmas:
            for ds, metric in ((TWIN_VAL, "J&F"), (TWIN_VAL, "leakage"), (PAIRS_VAL, "J&F")):
                out.append(Comparison(f"KM − STM read, {arm} model, {SET_NAMES[ds]}", stage,
                                      f"KM σ={s:g} vs STM",
                                      dict(set=ds, stage=stage, pretraining=arm, sigma=s,
                                           oracle=False),
                                      dict(set=ds, stage=stage, pretraining=arm, sigma=None,
                                           oracle=False), metric))
        for s in (None, sigmas[0]):
            read = "STM read" if s is None else f"KM σ={s:g}"
            for metric in ("leakage", "J&F"):
                out.append(Comparison(f"oracle − plain read, {arm} model, {SET_NAMES[TWIN_VAL]}",
                                      stage, read,
                                      dict(set=TWIN_VAL, stage=stage, pretraining=arm, sigma=s,
                                           oracle=True),
                                      dict(set=TWIN_VAL, stage=stage, pretraining=arm, sigma=s,
                                           oracle=False), metric))
    return out
