"""The leak-mechanism tables of the distractor study (notebook 07): where the twin leak is made.

* ``07_decoder_swap.csv`` — :func:`kmnlib.analysis.leak.decoder_swap` on every twin video: leakage
  of the four decoder-input combinations (readout × query features from the twin or the clean
  frame, swapped over the dilated twin region or the whole frame), at frame 1 and over the video.
* ``07_read_in_use.csv`` — :func:`kmnlib.analysis.leak.read_at_twin`: per frame, the weight twin
  cells put on object-labelled memory in the read the model uses, and where q̂ of those memory
  cells lands, with the frame's leakage (the leak's onset).
* ``07_oracle_strength.csv`` — :class:`OracleStrengthTable`: leakage with oracles of every strength.
* ``07_clean_control.csv`` — :class:`CleanControlTable`: J&F without the twin on the same frames,
  and the false-positive rate of clean predictions where the twin would be.

Each (model, read) is computed once per checkpoint and settings: its per-frame rows are kept in
``<out_dir>/<run>_leak/`` with the twin set's run key (:func:`kmnlib.study.runs.run_key`) plus the
analysis, and reused only while that key holds.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kmnlib.analysis import leak as leak_analysis
from kmnlib.analysis.leak import decoder_swap, read_at_twin, swap_summary
from kmnlib.analysis.oracle import ORACLE_STRENGTHS
from kmnlib.checkpoints import load_model
from kmnlib.data.derived import twin_masks
from kmnlib.files import save_csv, save_text
from kmnlib.fingerprint import file_sha256
from kmnlib.memory import sigma_label
from kmnlib.parallel import spawn_map
from kmnlib.study.runs import (CLEAN_VAL, DAVIS16_VAL, TWIN_VAL, EvalJob, data_fingerprint,
                               davis, is_cached, run_key, run_name)
from kmnlib.study.distractors import run_leakage
from kmnlib.study.effects import seed_level
from kmnlib.study.session import Study
from kmnlib.study.tables import Results, jf_from_global
from kmnlib.study.training import TrainedCheckpoint

ANALYSES = {"decoder_swap": decoder_swap, "read_at_twin": read_at_twin}


def _folder(study: Study, model: TrainedCheckpoint, sigma: float | None) -> Path:
    return study.out_dir / f"{run_name(model.tag, sigma)}_leak"


def per_frame(study: Study, model: TrainedCheckpoint, sigma: float | None, analysis: str
              ) -> pd.DataFrame:
    """Per-frame rows of ``analysis`` for every twin video of the study, cached (module docstring)."""
    folder = _folder(study, model, sigma)
    csv, marker = folder / f"{analysis}.csv", folder / f"{analysis}.json"
    key = {**run_key(study, model.checkpoint, sigma, TWIN_VAL), "analysis": analysis,
           "clean_data": data_fingerprint(study, DAVIS16_VAL),
           "analysis_sha256": file_sha256(Path(leak_analysis.__file__))}
    if study.force or not is_cached(marker, key, [csv]):
        twin_ds, clean_ds = davis(study, TWIN_VAL), davis(study, DAVIS16_VAL)
        inf = study.profile.inference
        net = load_model(model.checkpoint, study.device, inference=inf)
        rows = [ANALYSES[analysis](net, clean_ds[n], twin_ds[n], twin_masks(twin_ds.root, n),
                                   sigma=sigma, inference=inf, device=study.device)
                for n in (study.sequences or twin_ds.names)]
        folder.mkdir(parents=True, exist_ok=True)
        save_csv(pd.concat(rows, ignore_index=True), csv)
        save_text(json.dumps(key, indent=1), marker)     # written last: the rows are complete
    return pd.read_csv(csv)


def _labels(study: Study, model: TrainedCheckpoint, sigma: float | None) -> dict[str, object]:
    return {"model": model.label, "pretraining": model.arm, "seed": study.profile.seed,
            "read": sigma_label(sigma), "sigma": sigma}


def compute_all(study: Study, models: Sequence[TrainedCheckpoint], reads: Sequence[float | None]
                ) -> None:
    """Every (model, read, analysis) computed, ``eval_workers`` processes at a time."""
    jobs = [(study, m, s, a) for m in models for s in reads for a in ANALYSES]
    spawn_map(per_frame, jobs, study.settings.eval_workers)


def decoder_swap_table(study: Study, models: Sequence[TrainedCheckpoint],
                       reads: Sequence[float | None]) -> pd.DataFrame:
    """``07_decoder_swap.csv``: per model × read × swap scope × combination × ``scope``
    (first_frame, video), leakage in percent (mean over the twin videos)."""
    out = []
    for m in models:
        for s in reads:
            rows = per_frame(study, m, s, "decoder_swap")
            by_video = [swap_summary(g) for _, g in rows.groupby("sequence", sort=False)]
            mean = (pd.concat(by_video).groupby(["swap_over", "readout_from", "query_from", "scope"],
                                                sort=False)["leakage"].mean() * 100).reset_index()
            out.append(mean.assign(**_labels(study, m, s)))
    return pd.concat(out, ignore_index=True)


def read_in_use_table(study: Study, models: Sequence[TrainedCheckpoint],
                      reads: Sequence[float | None]) -> pd.DataFrame:
    """``07_read_in_use.csv``: per model × read × frame, the means over twin videos of the weight
    twin cells put on object memory, the q̂ landing shares, the leakage (percent) and the read's
    scale (mean logit std and top gap; median margin over penalty), with the number of twin
    ``cells`` summed."""
    out = []
    values = ["weight_on_object", "qhat_on_object", "qhat_on_twin", "qhat_elsewhere", "leakage"]
    for m in models:
        for s in reads:
            rows = per_frame(study, m, s, "read_at_twin")
            frame = rows.groupby("frame")
            table = (frame[values + ["logit_std", "top_gap"]].mean()
                     .join(frame["margin_over_penalty"].median())
                     .join(frame["cells"].sum()).reset_index())
            table["leakage"] *= 100
            out.append(table.assign(**_labels(study, m, s)))
    return pd.concat(out, ignore_index=True)


def _mean_leakage(study: Study, dataset: str, result: dict) -> float:
    """Percent of the twin's pixels (the ``Twins/`` maps of ``dataset``) that a run's result PNGs
    label as the object, mean over sequences with a visible twin."""
    return 100.0 * float(run_leakage(study, dataset, result)["leakage"].mean())


@dataclass(frozen=True)
class OracleStrengthTable:
    """``07_oracle_strength.csv``: twin leakage (%) and J&F on the twin set of ``models`` with each
    read, plain (``oracle`` = "none") and with every oracle of
    :data:`kmnlib.analysis.oracle.ORACLE_STRENGTHS`."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    reads: Sequence[float | None]

    def _pairs(self) -> list[tuple[TrainedCheckpoint, float | None, str, EvalJob]]:
        out = []
        for m in self.models:
            for s in self.reads:
                out.append((m, s, "none", EvalJob(m.checkpoint, m.tag, s, TWIN_VAL)))
                out += [(m, s, name, EvalJob(m.checkpoint, m.tag, s, TWIN_VAL, oracle=True,
                                             oracle_strength=name)) for name in ORACLE_STRENGTHS]
        return out

    def jobs(self) -> list[EvalJob]:
        return [job for *_, job in self._pairs()]

    def build(self, results: Results) -> pd.DataFrame:
        return pd.DataFrame([{**_labels(self.study, m, s), "oracle": name,
                              "leakage": _mean_leakage(self.study, TWIN_VAL, results[job]),
                              **jf_from_global(results[job]["global"]), "run": job.run}
                             for m, s, name, job in self._pairs()])


@dataclass(frozen=True)
class CleanControlTable:
    """``07_clean_control.csv``: the twin set's clean counterpart — J&F of ``models`` × reads on the
    same first frames without the twin (``DAVIS-2016-clean``) beside their J&F on the twin set, and
    ``mirrored_fp``: percent of the would-be twin's pixels that the clean run labels as the object
    (the twin-leakage metric's floor)."""

    study: Study
    models: Sequence[TrainedCheckpoint]
    reads: Sequence[float | None]

    def _pairs(self) -> list[tuple[TrainedCheckpoint, float | None, EvalJob, EvalJob]]:
        return [(m, s, EvalJob(m.checkpoint, m.tag, s, CLEAN_VAL),
                 EvalJob(m.checkpoint, m.tag, s, TWIN_VAL))
                for m in self.models for s in self.reads]

    def jobs(self) -> list[EvalJob]:
        return [j for *_, clean, twin in self._pairs() for j in (clean, twin)]

    def build(self, results: Results) -> pd.DataFrame:
        rows = []
        for m, s, clean, twin in self._pairs():
            rows.append({**_labels(self.study, m, s),
                         "J&F": jf_from_global(results[clean]["global"])["J&F"],
                         "J&F with twin": jf_from_global(results[twin]["global"])["J&F"],
                         "mirrored_fp": _mean_leakage(self.study, CLEAN_VAL, results[clean]),
                         "leakage": _mean_leakage(self.study, TWIN_VAL, results[twin]),
                         "run": clean.run})
        return pd.DataFrame(rows)


# --- effects pooled over the seeds: seeds are the unit ------------------------------------------
MECHANISM_COLUMNS = ["table", "model", "read", "contrast", "seeds", "mean_diff", "seed_ci_low",
                     "seed_ci_high", "seed_mde80"]


def _seed_effect(per_seed: pd.Series) -> dict[str, object]:
    """Mean over seeds of per-seed differences with the seed-level t interval
    (:func:`kmnlib.study.effects.seed_level`; NaN with one seed)."""
    low, high, mde = seed_level(per_seed.to_frame())
    return {"seeds": " ".join(str(s) for s in per_seed.index), "mean_diff": float(per_seed.mean()),
            "seed_ci_low": low, "seed_ci_high": high, "seed_mde80": mde}


def _contrasts(table: pd.DataFrame, name: str, key: str, value: str,
               pairs: Sequence[tuple[str, object, object]]) -> list[dict[str, object]]:
    """Per (model, read) and contrast ``label: a − b`` (values of column ``key``): the per-seed
    differences of ``value`` pooled over seeds."""
    rows = []
    for (model, read), g in table.groupby(["model", "read"], sort=False):
        by = g.pivot_table(index="seed", columns=key, values=value)
        for label, a, b in pairs:
            if a in by and (b is None or b in by):
                diff = (by[a] - (by[b] if b is not None else 0.0)).dropna()
                if len(diff):
                    rows.append({"table": name, "model": model, "read": read, "contrast": label,
                                 **_seed_effect(diff)})
    return rows


def mechanism_effects(swap: pd.DataFrame, oracle: pd.DataFrame, clean: pd.DataFrame
                      ) -> pd.DataFrame:
    """``07_mechanism_effects.csv`` from the leak tables of every seed (stacked, each row with its
    seed): what the twin's readout and the twin's query features each add to the leak (decoder
    swap over the twin region, over the video), the leak's floor, what each oracle removes, and
    the clean control (twin − clean J&F; leakage above the mirrored region's false positives)."""
    s = swap[(swap["swap_over"] == "twin region") & (swap["scope"] == "video")].copy()
    s["combo"] = s["readout_from"] + " readout + " + s["query_from"] + " query"
    tt, ct = "twin readout + twin query", "clean readout + twin query"
    tc, cc = "twin readout + clean query", "clean readout + clean query"
    rows = _contrasts(s, "07_decoder_swap", "combo", "leakage", [
        ("twin readout adds (twin query): tt − ct", tt, ct),
        ("twin query features add (twin readout): tt − tc", tt, tc),
        ("leak with the clean readout: ct − cc", ct, cc),
        ("floor: cc", cc, None)])
    rows += _contrasts(oracle, "07_oracle_strength", "oracle", "leakage",
                       [(f"oracle {o} − none", o, "none") for o in ORACLE_STRENGTHS])
    diffs = clean.assign(**{"J&F with twin − J&F clean": clean["J&F with twin"] - clean["J&F"],
                            "leakage − mirrored_fp (floor)": clean["leakage"] - clean["mirrored_fp"]})
    for label in ("J&F with twin − J&F clean", "leakage − mirrored_fp (floor)"):
        for (model, read), g in diffs.groupby(["model", "read"], sort=False):
            rows.append({"table": "07_clean_control", "model": model, "read": read,
                         "contrast": label, **_seed_effect(g.set_index("seed")[label])})
    return pd.DataFrame(rows, columns=MECHANISM_COLUMNS)
