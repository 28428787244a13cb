"""Evaluation runs and their cache: one (checkpoint, read, dataset) → a folder of results.

A run folder ``out_dir/<run>/`` holds the result masks (``masks/``, git-ignored), the DAVIS
evaluation CSVs, ``timing.csv`` (s/frame per sequence) and, written last, ``run.json``: the run's key
(:func:`run_key`: the checkpoint's content hash, the content of the data the run reads, the
inference code, read, dataset, sequences, inference size, memory schedule, device). A later
request with the same key reuses the folder; a folder without a matching ``run.json`` is recomputed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import kmnlib
from kmnlib.analysis.oracle import ORACLE_STRENGTHS, twin_oracle
from kmnlib.checkpoints import checkpoint_stage, load_model
from kmnlib.config import REPO_ROOT
from kmnlib.data import DAVISDataset, YouTubeVOSDataset, derived
from kmnlib.data.davis import read_split
from kmnlib.evaluate import evaluate_davis
from kmnlib.files import atomic_write, save_csv, save_text
from kmnlib.fingerprint import file_sha256, files_digest, folder_files, inference_code_sha256
from kmnlib.memory import sigma_label
from kmnlib.parallel import spawn_map
from kmnlib.predict import run_dataset
from kmnlib.study.session import Study

DAVIS16_VAL = "DAVIS-2016:val"
TWIN_VAL = f"{derived.TWIN}:val"     # DAVIS-2016 val with a mirrored twin of the object
CLEAN_VAL = f"{derived.CLEAN}:val"   # the twin set's frames without the twin (its control)
PAIRS_VAL = f"{derived.PAIRS}:val"   # two-object composites of DAVIS-2016 val videos
# Derived sets: DAVIS year of their layout and builder (kmnlib.data.derived).
DERIVED_SETS = {derived.TWIN: ("2016", derived.build_twin_set),
                derived.CLEAN: ("2016", derived.build_clean_set),
                derived.PAIRS: ("2017", derived.build_pair_set)}


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: a checkpoint (tagged for folder names, e.g. ``has``) read with ``sigma``
    (None = STM's read) on a DAVIS-layout split. ``oracle`` (twin set only; analysis, not the
    method): twin pixels read nothing from the object's memory."""

    checkpoint: Path
    model_tag: str
    sigma: float | None
    dataset: str = DAVIS16_VAL
    oracle: bool = False
    oracle_strength: str = "half"      # a key of kmnlib.analysis.oracle.ORACLE_STRENGTHS

    @property
    def run(self) -> str:
        """The run folder's name (:func:`run_name`, with the dataset for sets other than DAVIS-16 val)."""
        name = run_name(self.model_tag, self.sigma) + (oracle_tag(self.oracle_strength)
                                                       if self.oracle else "")
        return name if self.dataset == DAVIS16_VAL else f"{name}_{dataset_tag(self.dataset)}"


def oracle_tag(strength: str) -> str:
    """Folder suffix of an oracle read: ``_oracle`` (the study's), ``_oracle-any``, ``_oracle-half-dilated-1``."""
    if strength not in ORACLE_STRENGTHS:
        raise ValueError(f"oracle strength {strength!r}: expected one of {list(ORACLE_STRENGTHS)}")
    return "_oracle" if strength == "half" else "_oracle-" + strength.replace(",", "").replace(" ", "-")


def run_name(model_tag: str, sigma: float | None) -> str:
    """Folder name of one (model, read) evaluation, e.g. ``has_sigma7`` or ``has_stm``."""
    return f"{model_tag}_stm" if sigma is None else f"{model_tag}_sigma{sigma:g}"


def dataset_tag(dataset: str) -> str:
    """``"DAVIS-2017:val"`` → ``"davis-2017-val"`` (for folder names)."""
    return dataset.replace(":", "-").lower()


def _fingerprint(path: Path) -> dict[str, Any]:
    """A checkpoint file in a run key: its content (``sha256``, ``size``) and, as a record only,
    where it was and when it was written (``path``, ``mtime_ns``: not compared, see
    :data:`RECORD_ONLY`). A copied or moved results folder with the same checkpoint reuses its
    runs; a rewritten checkpoint, even one given its old mtime back, does not.

    The path is relative to the repository (:data:`kmnlib.config.REPO_ROOT`, POSIX separators)
    when the checkpoint lies inside it — the study's own checkpoints under ``results/`` do — so
    that committed ``run.json`` files name no machine's folders; a checkpoint elsewhere (an
    ``out_dir`` outside the repository) is named absolutely."""
    st = path.stat()
    resolved = path.resolve()
    try:
        name = resolved.relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        name = str(resolved)
    return {"path": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": file_sha256(path)}


#: Checkpoint fields of a run key that ``run.json`` records but :func:`is_cached` does not
#: compare: the content hash identifies the checkpoint.
RECORD_ONLY = ("path", "mtime_ns")


def run_key(study: Study, checkpoint: Path, sigma: float | None, dataset: str,
            oracle: bool = False, oracle_strength: str = "half") -> dict[str, Any]:
    """What a cached run folder's ``run.json`` must hold for the folder to be reused: the
    checkpoint (:func:`_fingerprint`), the data the run reads (:func:`data_fingerprint`), the code
    (kmnlib's version; a hash of its inference and evaluation sources,
    :func:`kmnlib.fingerprint.inference_code_sha256`, a few ms once per process; torch's version),
    the device (masks and s/frame depend on it) and every inference setting.

    The data root's path is not in it: the same content under another root (a moved or copied
    data folder) reuses the run; changed content under the same root does not."""
    inf = study.profile.inference
    return {"checkpoint": _fingerprint(Path(checkpoint)), "sigma": sigma, "dataset": dataset,
            "oracle": oracle, "oracle_strength": oracle_strength if oracle else None,
            "sequences": _sequences_of(study, dataset),
            "data": data_fingerprint(study, dataset, oracle),
            "code": {"kmnlib": kmnlib.__version__, "inference_sha256": inference_code_sha256(),
                     "torch": torch.__version__},
            "device": study.device,
            "infer_height": inf.infer_height, "davis_resolution": inf.davis_resolution,
            "mem_every": inf.mem_every, "fold_batchnorm": inf.fold_batchnorm,
            "winograd": inf.winograd, "precision": inf.precision,
            "read_backend": inf.read_backend, "read_budget_bytes": inf.read_budget_bytes}


def data_fingerprint(study: Study, dataset: str, oracle: bool = False) -> dict[str, Any]:
    """The content of what a run on ``dataset`` reads, for the sequences it evaluates:
    ``frames`` and ``annotations`` (DAVIS layout: at ``inference.davis_resolution``; YouTube-VOS:
    the split's video folders, ``meta.json`` with the annotations), and ``twins`` for an oracle
    read — each a :func:`kmnlib.fingerprint.files_digest` (count, bytes, sha256 over every file's
    relative name, size and content).

    Frame content is hashed, not only names and sizes: DAVIS-2016 val 480p is 100 MB, 0.1-0.3 s
    once per process (hashes are cached per file; later keys cost a stat per file, ~0.01 s),
    against minutes of inference (measurements in :mod:`kmnlib.fingerprint`). A missing folder
    hashes as empty (the evaluation itself then names what is missing)."""
    set_name, _, split = dataset.partition(":")
    if set_name == YOUTUBE_VOS:
        root = study.data_root / YOUTUBE_VOS / split
        names = _youtube_videos(root / "meta.json", study.sequences)
        meta = [root / "meta.json"] if (root / "meta.json").is_file() else []
        return {"frames": _digest(root, [root / "JPEGImages" / n for n in names]),
                "annotations": _digest(root, [root / "Annotations" / n for n in names], meta)}
    if set_name in DERIVED_SETS:
        root, year = davis(study, dataset).root, DERIVED_SETS[set_name][0]
    else:
        root, year = study.data_root / set_name, set_name[-4:]
    names = _sequences_of(study, dataset)
    if names is None:
        try:
            names = read_split(root, year, split)
        except (OSError, ValueError):
            names = []
    res = study.profile.inference.davis_resolution
    out = {"frames": _digest(root, [root / "JPEGImages" / res / n for n in names]),
           "annotations": _digest(root, [root / "Annotations" / res / n for n in names])}
    if oracle:  # the oracle reads the twin maps (stored at 480p)
        out["twins"] = _digest(root, [root / "Twins" / "480p" / n for n in names])
    return out


def _digest(root: Path, folders: Sequence[Path], extra: Sequence[Path] = ()) -> dict[str, Any]:
    return files_digest(root, [f for d in folders for f in folder_files(d)] + list(extra))


def _youtube_videos(meta: Path, sequences: list[str] | None) -> list[str]:
    """The videos a YouTube-VOS prediction reads (those of ``sequences`` that the split has)."""
    try:
        names = sorted(json.loads(meta.read_text())["videos"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return names if sequences is None else [n for n in sequences if n in names]


def _sequences_of(study: Study, dataset: str) -> list[str] | None:
    """The study's val subset as it applies to ``dataset`` (pairs: videos whose host is in it)."""
    if study.sequences is None:
        return None
    if dataset.startswith(derived.PAIRS):
        return [n for n in davis(study, dataset).names if n.split("+")[0] in study.sequences] \
            or None
    return study.sequences


def is_cached(marker: Path, key: dict[str, Any], files: Sequence[Path]) -> bool:
    """``marker`` (run.json, written last) holds ``key`` (:data:`RECORD_ONLY` fields aside) and
    every output file exists. An unreadable marker matches nothing: the run is recomputed."""
    if not (marker.is_file() and all(f.is_file() for f in files)):
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return _compared(saved) == _compared(key)


def _compared(key: Any) -> Any:
    """``key`` without the checkpoint's :data:`RECORD_ONLY` fields."""
    if isinstance(key, dict) and isinstance(key.get("checkpoint"), dict):
        return {**key, "checkpoint": {k: v for k, v in key["checkpoint"].items()
                                      if k not in RECORD_ONLY}}
    return key


def training_data(study: Study, stage: str) -> str:
    """What a checkpoint after ``stage`` was trained on, for protocol labels."""
    static = "+".join(study.profile.static_sets)
    if stage == "pretrain":
        return f"static ({static})"
    return f"static ({static}) → {'+'.join(study.profile.video_sets)}"


def protocol(study: Study, stage: str) -> str:
    """One line that says how a model of ours was made: profile, backbone, crops, inference size,
    training data, iterations (and the val subset, when the study uses one)."""
    p = study.profile
    its = (f"{p.pretrain.iterations}" if stage == "pretrain"
           else f"{p.pretrain.iterations}+{p.main.iterations}")
    label = (f"ours ({p.name}): {p.model.backbone}, {p.main.crop_size}² crops, "
             f"{p.inference_label()}, {training_data(study, stage)}, {its} it")
    if study.sequences:  # a subset is not the benchmark: say so in every row
        label += f", {len(study.sequences)} val sequence(s) only"
    return label


def davis(study: Study, dataset: str) -> DAVISDataset:
    """The reader of a DAVIS-layout split (``"DAVIS-2016:val"``, or a derived stress set, built
    into the study's derived-data folder on first use) at the profile's DAVIS folder (inference
    resizes frames; ground truth is evaluated there)."""
    set_name, _, split = dataset.partition(":")
    if set_name in DERIVED_SETS:
        year, build = DERIVED_SETS[set_name]
        root = build(study.data_root / "DAVIS-2016", study.derived_dir)
    elif set_name in ("DAVIS-2016", "DAVIS-2017"):
        year, root = set_name[-4:], study.data_root / set_name
    else:
        raise ValueError(f"{dataset!r} has no local evaluation (DAVIS-2016/2017 or "
                         f"{sorted(DERIVED_SETS)})")
    return DAVISDataset(root, year=year, split=split,
                        resolution=study.profile.inference.davis_resolution)


def evaluate(study: Study, job: EvalJob, *, force: bool = False) -> dict[str, Any]:
    """Segment a DAVIS split with a checkpoint and one read, evaluate it; cached by folder.

    Returns ``run``, ``run_dir``, ``global`` and ``per_sequence`` (evaluation tables),
    ``s_per_frame`` (mean), ``cached``, ``training_data`` and ``protocol`` (labels for tables).
    """
    run_dir = study.out_dir / job.run
    ds = davis(study, job.dataset)
    if job.oracle and not job.dataset.startswith(derived.TWIN):
        raise ValueError(f"{job.run}: the oracle read needs the twin set's distractor maps")
    key = run_key(study, job.checkpoint, job.sigma, job.dataset, job.oracle, job.oracle_strength)
    sequences = _sequences_of(study, job.dataset)
    marker = run_dir / "run.json"
    stage = checkpoint_stage(job.checkpoint)
    about = {"training_data": training_data(study, stage),
             "protocol": f"{protocol(study, stage)}; {sigma_label(job.sigma)}; "
                         f"s/frame on {study.device}"}
    files = [run_dir / "global_results.csv", run_dir / "per-sequence_results.csv",
             run_dir / "timing.csv"]
    cached = not force and is_cached(marker, key, files)
    if not cached:
        # Computed in a new folder that replaces the old one only once complete.
        with _new_folder(run_dir) as tmp:
            strength = ORACLE_STRENGTHS[job.oracle_strength]
            hooks = ((lambda seq, start, size: [twin_oracle(ds.root, seq.name, start, size,
                                                            strength)])
                     if job.oracle else None)
            timings = _run_with_profile(study, job.checkpoint, ds, tmp / "masks", job.sigma,
                                        sequences, hooks=hooks, report=_reporter(study, job.run))
            evaluate_davis(ds.root, tmp / "masks", year=ds.year, split=ds.split, out_dir=tmp,
                           sequences=sequences, resolution=ds.resolution)
            save_csv(pd.DataFrame({"sequence": list(timings),
                                   "s_per_frame": list(timings.values())}), tmp / files[2].name)
            save_text(json.dumps(key, indent=1), tmp / marker.name)
    # Tables are read back from the CSVs, so fresh and cached results have the same precision.
    timing = pd.read_csv(files[2])
    return {"run": job.run, "run_dir": run_dir, "global": pd.read_csv(files[0]),
            "per_sequence": pd.read_csv(files[1]),
            "s_per_frame": float(timing["s_per_frame"].mean()), "cached": cached, **about}


@contextlib.contextmanager
def _new_folder(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target`` to compute into; on success it replaces ``target`` (the old
    one is renamed away first and deleted last), on failure it is removed and ``target`` stays."""
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _run_with_profile(study: Study, checkpoint: Path, ds: Any, out: Path, sigma: float | None,
                      sequences: list[str] | None, **extra: Any) -> dict[str, float]:
    """:func:`kmnlib.predict.run_dataset` with the study's inference settings — every setting
    :func:`run_key` records, in one place — writing masks at the ground truth's size to ``out``."""
    inf = study.profile.inference
    return run_dataset(load_model(checkpoint, study.device, inference=inf), ds, out, sigma=sigma,
                       mem_every=inf.mem_every, infer_height=inf.infer_height,
                       resolution_out="gt", sequences=sequences, device=study.device,
                       precision=inf.precision, read_backend=inf.read_backend,
                       read_budget_bytes=inf.read_budget_bytes, **extra)


def _reporter(study: Study, run: str) -> Callable[[str], None] | None:
    """Progress lines ``[eval <run>] …`` on stderr when the study shows progress."""
    if not study.settings.progress:
        return None
    return lambda line: print(f"[eval {run}] {line}", file=sys.stderr, flush=True)


def _evaluate_job(study: Study, job: EvalJob) -> str:
    return evaluate(study, job, force=study.force)["run"]


def evaluate_all(study: Study, jobs: Sequence[EvalJob]) -> dict[EvalJob, dict[str, Any]]:
    """Results of every job (duplicates once), computing what is missing first.

    Missing runs (all of them with ``force``) run ``eval_workers`` processes at a time, one torch
    thread each; their s/frame is then measured with the workers sharing the CPU. Every result is
    then read back from its folder (``cached`` says whether it existed before this call).
    """
    unique = list(dict.fromkeys(jobs))
    for dataset in dict.fromkeys(j.dataset for j in unique):
        davis(study, dataset)  # derived sets are built here, once, not by racing workers
    fresh = set()
    todo = [j for j in unique if study.force or not _is_done(study, j)]
    if todo:
        spawn_map(_evaluate_job, [(study, j) for j in todo], study.settings.eval_workers)
        fresh = set(todo)
    out = {}
    for j in unique:
        res = evaluate(study, j)
        out[j] = {**res, "cached": j not in fresh}
    return out


def _is_done(study: Study, job: EvalJob) -> bool:
    run_dir = study.out_dir / job.run
    files = [run_dir / n for n in ("global_results.csv", "per-sequence_results.csv", "timing.csv")]
    return is_cached(run_dir / "run.json",
                     run_key(study, job.checkpoint, job.sigma, job.dataset, job.oracle,
                             job.oracle_strength), files)


YOUTUBE_VOS = "YouTube-VOS"


def extra_eval_sets(study: Study) -> list[str]:
    """The DAVIS-layout sets of the profile's ``eval_sets`` beyond DAVIS-2016 val, scored locally
    (``"DAVIS-2017:val"``); :func:`kmnlib.study.session.resolve_study` checked their data."""
    return [s for s in study.profile.eval_sets
            if s != DAVIS16_VAL and s.partition(":")[0] != YOUTUBE_VOS]


def youtube_vos_splits(study: Study) -> list[str]:
    """The YouTube-VOS splits of the profile's ``eval_sets`` (``"YouTube-VOS:valid"`` →
    ``"valid"``), predicted for the evaluation server (:func:`predict_youtube_vos`)."""
    return [split for name, _, split in (s.partition(":") for s in study.profile.eval_sets)
            if name == YOUTUBE_VOS]


def predict_youtube_vos(study: Study, checkpoint: Path, model_tag: str, *, sigma: float | None,
                        split: str, force: bool = False) -> dict[str, Any]:
    """Segment a YouTube-VOS split and package the predictions for the evaluation server.

    YouTube-VOS val/test ground truth is not public, so there is no local score: this writes
    ``out_dir/<run>_youtube-vos-<split>/Annotations/<video>/<frame>.png`` (palette PNGs at the stored
    size, objects joining at their first annotation), ``submission.zip`` of that folder (the layout
    the CodaLab server takes), ``timing.csv`` and ``run.json`` last. Cached like :func:`evaluate`.
    Returns ``run``, ``run_dir``, ``submission``, ``videos``, ``s_per_frame`` and ``cached``.
    """
    run = f"{run_name(model_tag, sigma)}_youtube-vos-{split}"
    run_dir = study.out_dir / run
    key = run_key(study, checkpoint, sigma, f"YouTube-VOS:{split}")
    marker, timing_csv, archive = run_dir / "run.json", run_dir / "timing.csv", run_dir / "submission.zip"
    cached = not force and is_cached(marker, key, [timing_csv, archive])
    if not cached:
        with _new_folder(run_dir) as new:
            ds = YouTubeVOSDataset(study.data_root / "YouTube-VOS", split=split)
            # A study restricted to some sequences (smoke runs name DAVIS videos) predicts those
            # it has.
            names = None if study.sequences is None else [n for n in study.sequences
                                                          if n in ds.names]
            timings = _run_with_profile(study, checkpoint, ds, new / "Annotations", sigma, names)
            save_csv(pd.DataFrame({"sequence": list(timings),
                                   "s_per_frame": list(timings.values())}), new / timing_csv.name)

            def _zip(tmp: Path) -> None:
                # make_archive appends ".zip" to the base name it is given
                made = shutil.make_archive(str(tmp), "zip", root_dir=new, base_dir="Annotations")
                os.replace(made, tmp)

            atomic_write(new / archive.name, _zip)
            save_text(json.dumps(key, indent=1), new / marker.name)
    timing = pd.read_csv(timing_csv)
    return {"run": run, "run_dir": run_dir, "submission": archive, "videos": len(timing),
            "s_per_frame": float(timing["s_per_frame"].mean()), "cached": cached}
