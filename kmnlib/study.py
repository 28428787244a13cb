"""``python -m kmnlib.study``: run the study notebooks in order with papermill, render HTML.

    python -m kmnlib.study --profile mini [--force] [--only 03_evaluate ...] [--params-json '{...}']

Each notebook in ``notebooks/`` is executed with the venv's interpreter as its kernel and written,
with an HTML render, to ``results/<profile>/notebooks/``. Outputs are first written to temporary
files and renamed only on success, so a failing notebook stops the chain (exit code 1, papermill's
error printed) and leaves the outputs of earlier runs intact; the failed execution is kept beside
them as ``<name>.failed.ipynb`` for inspection. Wall times go to ``results/<profile>/stage_times.csv``
and ``results/<profile>/index.html`` links the reports.

The module also holds the study's shared steps that the notebooks call (so that no logic lives in
a notebook): :func:`open_study` (parameters cell → :class:`Study`), :func:`pretrained` /
:func:`main_trained` (train or reuse checkpoints), :func:`evaluate_checkpoint` (inference +
DAVIS evaluation of one (checkpoint, σ), cached by folder), and the table/figure data builders
(:func:`ablation_table`, :func:`sigma_sweep`, :func:`table1_rows`, :func:`loss_map_examples`,
:func:`read_weight_example`, ...). Plotting and table formatting live in :mod:`kmnlib.report`.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from kmnlib import report
from kmnlib.config import REPO_ROOT, Profile, get_profile, results_root
from kmnlib.config import data_root as kmn_data_root
from kmnlib.files import atomic_write
from kmnlib.report import save_csv, save_text

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS: tuple[str, ...] = ("01_pretrain_static", "02_train_video", "03_evaluate",
                              "04_ablation", "05_loss_maps", "06_tables")
KERNEL_NAME = "python3"
STAGE_TIMES = "stage_times.csv"


# --- the study's shared steps (called by the notebooks) ------------------------------------------
@dataclass
class Study:
    """One study run: the profile, where data and outputs live, and the smoke-test knobs."""

    profile: Profile
    data_root: Path
    out_dir: Path
    seed: int
    device: str = "cpu"
    force: bool = False
    iterations: int | None = None          # overrides both stages' iteration counts
    sequences: list[str] | None = None     # DAVIS val subset (None = the whole split)
    resolution: str = "480p"               # inference frame height, e.g. "240p" (infer_height)
    progress: bool = True

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def figure(self, name: str) -> Path:
        """Path of a figure ``out_dir/figures/<name>``."""
        return self.out_dir / "figures" / name

    def table(self, name: str) -> Path:
        """Path of a table ``out_dir/tables/<name>``."""
        return self.out_dir / "tables" / name

    def iterations_of(self, stage: str) -> int:
        return self.iterations or getattr(self.profile, stage).iterations

    def training_data(self, stage: str) -> str:
        """Training data of a checkpoint after ``stage``, for protocol labels."""
        static = "+".join(self.profile.static_sets)
        if stage == "pretrain":
            return f"static ({static})"
        return f"static ({static}) → {'+'.join(self.profile.video_sets)}"

    def protocol(self, stage: str) -> str:
        """Protocol label of a model trained up to ``stage`` (see :func:`report.protocol_label`)."""
        its = (f"{self.iterations_of('pretrain')}" if stage == "pretrain" else
               f"{self.iterations_of('pretrain')}+{self.iterations_of('main')}")
        label = report.protocol_label(self.profile, training_data=self.training_data(stage),
                                      iterations=its, resolution=self.resolution)
        if self.sequences:  # a subset is not the benchmark: say so in every row
            label += f", {len(self.sequences)} val sequence(s) only"
        return label


def open_study(profile: str = "mini", data_root: str | os.PathLike | None = None,
               out_dir: str | os.PathLike | None = None, seed: int | None = None,
               device: str = "cpu", force: bool = False, iterations: int | None = None,
               sequences: Sequence[str] | None = None, resolution: str | None = None,
               progress: bool = True, threads: int | None = None) -> Study:
    """The notebooks' first call: resolve the parameters cell into a :class:`Study`.

    A given ``data_root`` is exported as ``$KMN_DATA`` so the training and data code (which use
    :func:`kmnlib.config.data_root`) read the same folder. Seeds numpy and torch with ``seed``.
    ``threads`` sets torch's CPU threads: on a CPU shared with other jobs one thread per process
    is many times faster than two (threads spin waiting for each other).
    """
    import numpy as np
    import torch

    prof = get_profile(profile)
    if data_root:
        os.environ["KMN_DATA"] = str(Path(data_root).expanduser().resolve())
    root = kmn_data_root()
    if not (root / "DAVIS-2016").is_dir():
        raise FileNotFoundError(f"{root / 'DAVIS-2016'}: DAVIS-2016 not found under the data root "
                                f"(run `make data` or pass data_root / set KMN_DATA)")
    res = resolution or report.inference_resolution(prof)
    resolution_height(res)  # validate early
    seed = prof.seed if seed is None else int(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(int(threads))
    # Training imports tqdm.auto, which warns when ipywidgets is absent; progress bars are off here.
    warnings.filterwarnings("ignore", message="IProgress not found")
    study = Study(profile=prof, data_root=root,
                  out_dir=Path(out_dir) if out_dir else results_root() / prof.name, seed=seed,
                  device=device, force=bool(force),
                  iterations=int(iterations) if iterations else None,
                  sequences=list(sequences) if sequences else None, resolution=res,
                  progress=progress)
    study.out_dir.mkdir(parents=True, exist_ok=True)
    return study


def resolution_height(resolution: str) -> int:
    """``"240p"`` → 240 (the frame height inference runs at)."""
    text = str(resolution)
    if not (text.endswith("p") and text[:-1].isdigit() and int(text[:-1]) >= 16):
        raise ValueError(f"resolution {resolution!r}: expected '<height>p' such as '240p' or '480p'")
    return int(text[:-1])


def pretrained(study: Study, hide: bool, *, force: bool | None = None) -> Path:
    """Checkpoint of static pre-training with (``hide``) or without Hide-and-Seek; trains if missing."""
    from kmnlib.train import train_stage

    return train_stage(study.profile, "pretrain", study.checkpoints, hide=hide,
                       iterations=study.iterations, device=study.device, seed=study.seed,
                       force=bool(force), progress=study.progress)


def main_trained(study: Study, hide: bool, *, force: bool | None = None) -> Path:
    """Checkpoint of main video training started from :func:`pretrained` (trains what is missing)."""
    from kmnlib.train import train_stage

    init = pretrained(study, hide)
    return train_stage(study.profile, "main", study.checkpoints, init=init,
                       iterations=study.iterations, device=study.device, seed=study.seed,
                       force=bool(force), progress=study.progress)


ARMS: dict[str, bool] = {"HaS": True, "no HaS": False}  # arm label → Hide-and-Seek pre-training


def _train_job(study: Study, stage: str, hide: bool) -> Path:
    if stage == "pretrain":
        return pretrained(study, hide, force=study.force)
    return main_trained(study, hide, force=study.force)


def train_arms(study: Study, stage: str, *, workers: int = 1) -> dict[str, Path]:
    """Checkpoints of both arms (:data:`ARMS`) after ``stage`` ("pretrain" or "main"), trained if missing.

    With ``workers > 1`` the arms train side by side in that many processes, one torch thread each:
    on a 2-core CPU two single-threaded runs finish sooner than the same runs one after the other
    with two threads (benchmarks/README.md). Each run is the same as the sequential one (same seed,
    data order and checkpoints); ``study.force`` retrains the stage.
    """
    if stage not in ("pretrain", "main"):
        raise ValueError(f"train_arms: stage must be 'pretrain' or 'main', got {stage!r}")
    if workers <= 1:
        return {label: _train_job(study, stage, hide) for label, hide in ARMS.items()}
    paths = _spawn_map(_train_job, [(study, stage, hide) for hide in ARMS.values()], workers)
    return dict(zip(ARMS, paths))


def training_log(checkpoint: Path) -> Path:
    """The per-iteration CSV log written next to a checkpoint by :func:`kmnlib.train.train_stage`."""
    return checkpoint.with_suffix(".csv")


def archive_training_logs(study: Study, checkpoints: dict[str, Path]) -> list[Path]:
    """Copy each run's per-iteration CSV log to ``out_dir/training/`` (checkpoints are not committed)."""
    out = []
    for ckpt in checkpoints.values():
        log = training_log(Path(ckpt))
        out.append(save_csv(pd.read_csv(log), study.out_dir / "training" / log.name))
    return out


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _run_key(study: Study, checkpoint: Path, sigma: float | None, dataset: str) -> dict[str, Any]:
    """What a cached run folder's ``run.json`` must hold for the folder to be reused."""
    return {"checkpoint": _fingerprint(Path(checkpoint)), "sigma": sigma, "dataset": dataset,
            "sequences": study.sequences, "resolution": study.resolution,
            "mem_every": study.profile.inference.mem_every}


def _is_cached(marker: Path, key: dict[str, Any], files: Sequence[Path]) -> bool:
    """``marker`` (run.json, written last) holds ``key`` and every output file exists."""
    return (marker.is_file() and all(f.is_file() for f in files)
            and json.loads(marker.read_text()) == key)


def evaluate_checkpoint(study: Study, checkpoint: Path, model_tag: str, *, sigma: float | None,
                        dataset: str = "DAVIS-2016:val", force: bool = False) -> dict[str, Any]:
    """Segment a DAVIS split with a checkpoint and one read, evaluate it; cached by folder.

    Writes ``out_dir/<run>/masks/<seq>/*.png`` (run = :func:`report.run_name`, with the dataset
    appended for sets other than DAVIS-2016 val), the evaluation CSVs and ``timing.csv``
    (s/frame per sequence) in ``out_dir/<run>/``, and ``run.json`` last. A later call with the
    same checkpoint file (path, size, mtime), read, sequences, resolution and memory schedule
    reuses the folder instead of recomputing (unless ``force``). Returns ``run``, ``run_dir``,
    ``global`` and ``per_sequence`` (evaluate_davis tables), ``s_per_frame`` (mean), ``cached``,
    ``training_data`` and ``protocol`` (labels for tables).
    """
    from kmnlib.evaluate import evaluate_davis

    set_name, _, split = dataset.partition(":")
    if set_name not in ("DAVIS-2016", "DAVIS-2017"):
        raise ValueError(f"evaluate_checkpoint: {dataset!r} has no local evaluation "
                         f"(DAVIS-2016/2017 only)")
    year = set_name[-4:]
    run = report.run_name(model_tag, sigma)
    if dataset != "DAVIS-2016:val":
        run += "_" + dataset.replace(":", "-").lower()
    run_dir = study.out_dir / run
    davis_root = study.data_root / set_name
    key = _run_key(study, checkpoint, sigma, dataset)
    marker = run_dir / "run.json"
    stage = checkpoint_stage(checkpoint)
    about = {"training_data": study.training_data(stage),
             "protocol": f"{study.protocol(stage)}; {report.sigma_label(sigma)}; "
                         f"s/frame on {study.device}"}
    files = [run_dir / "global_results.csv", run_dir / "per-sequence_results.csv",
             run_dir / "timing.csv"]
    if not force and _is_cached(marker, key, files):
        timing = pd.read_csv(files[2])
        return {"run": run, "run_dir": run_dir, "global": pd.read_csv(files[0]),
                "per_sequence": pd.read_csv(files[1]),
                "s_per_frame": float(timing["s_per_frame"].mean()), "cached": True, **about}
    marker.unlink(missing_ok=True)  # a half-finished folder must not look finished
    ds = _davis(study, year, split)
    model = _load(checkpoint, study.device)
    timings = run_dataset(model, ds, run_dir / "masks", sigma=sigma,
                          mem_every=study.profile.inference.mem_every, resolution_out="gt",
                          infer_height=resolution_height(study.resolution),
                          sequences=study.sequences, device=study.device)
    evaluate_davis(davis_root, run_dir / "masks", year=year, split=split, out_dir=run_dir,
                   sequences=study.sequences, resolution=ds.resolution)
    timing = pd.DataFrame({"sequence": list(timings), "s_per_frame": list(timings.values())})
    save_csv(timing, files[2])
    save_text(json.dumps(key, indent=1), marker)
    # Tables are read back from the CSVs, so fresh and cached results have the same precision.
    return {"run": run, "run_dir": run_dir, "global": pd.read_csv(files[0]),
            "per_sequence": pd.read_csv(files[1]),
            "s_per_frame": float(timing["s_per_frame"].mean()), "cached": False, **about}


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a worker process with one torch thread (workers share the CPU)."""
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def _spawn_map(fn: Callable[..., Any], arg_tuples: Sequence[tuple[Any, ...]], workers: int) -> list[Any]:
    """``[fn(*a) for a in arg_tuples]`` in ``workers`` spawned processes, one torch thread each."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked Jupyter kernel with torch threads running is not safe to continue in.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_in_worker, fn, *a) for a in arg_tuples]
        return [f.result() for f in futures]


def _evaluate_job(study: Study, job: tuple[Path, str, float | None]) -> str:
    return evaluate_checkpoint(study, Path(job[0]), job[1], sigma=job[2], force=study.force)["run"]


def evaluate_many(study: Study, jobs: Sequence[tuple[Path, str, float | None]], *,
                  workers: int = 1) -> list[str]:
    """Run several :func:`evaluate_checkpoint` jobs ``(checkpoint, model_tag, sigma)`` up front.

    With ``workers > 1`` they run in that many processes (one torch thread each); results land in
    the same cached folders, so the notebook's later ``evaluate_checkpoint`` calls read them back.
    Their s/frame is then measured with the workers sharing the CPU. ``study.force`` recomputes.
    """
    if workers <= 1:
        return [_evaluate_job(study, job) for job in jobs]
    return _spawn_map(_evaluate_job, [(study, job) for job in jobs], workers)


def run_dataset(*args: Any, **kw: Any) -> dict[str, float]:
    """:func:`kmnlib.inference.run_dataset` (imported late: it pulls in torch)."""
    from kmnlib.inference import run_dataset as _run

    return _run(*args, **kw)


def _load(checkpoint: Path, device: str) -> Any:
    from kmnlib.train import load_model

    return load_model(checkpoint, device=device)


def _davis(study: Study, year: str, split: str) -> Any:
    from kmnlib.data import DAVISDataset

    # Frames are read from the profile's DAVIS folder (ground truth is evaluated there);
    # inference resizes them to study.resolution.
    return DAVISDataset(study.data_root / f"DAVIS-{year}", year=year, split=split,
                        resolution=study.profile.inference.resolution)


def davis_val(study: Study, year: str = "2016") -> Any:
    """The DAVIS val reader of the study's data root (480p frames, as stored)."""
    return _davis(study, year, "val")


def extra_eval_sets(study: Study) -> list[str]:
    """Evaluation sets beyond DAVIS-2016 val that are present under the data root."""
    out = []
    if (study.data_root / "DAVIS-2017" / "ImageSets" / "2017" / "val.txt").is_file():
        out.append("DAVIS-2017:val")
    return out


def youtube_vos_splits(study: Study) -> list[str]:
    """YouTube-VOS splits to predict that are present under the data root (``valid``)."""
    root = study.data_root / "YouTube-VOS"
    return [s for s in ("valid",) if (root / s / "meta.json").is_file()]


def predict_youtube_vos(study: Study, checkpoint: Path, model_tag: str, *, sigma: float | None,
                        split: str = "valid", force: bool = False) -> dict[str, Any]:
    """Segment a YouTube-VOS split and package the predictions for the evaluation server.

    YouTube-VOS val/test ground truth is not public, so there is no local score: this writes
    ``out_dir/<run>_youtube-vos-<split>/Annotations/<video>/<frame>.png`` (palette PNGs at the stored
    size, objects joining at their first annotation), ``submission.zip`` of that folder (the layout
    the CodaLab server takes), ``timing.csv`` and ``run.json`` last. Cached like
    :func:`evaluate_checkpoint`. Returns ``run``, ``run_dir``, ``submission``, ``videos``,
    ``s_per_frame`` and ``cached``.
    """
    import shutil

    from kmnlib.data import YouTubeVOSDataset

    run = f"{report.run_name(model_tag, sigma)}_youtube-vos-{split}"
    run_dir = study.out_dir / run
    key = _run_key(study, checkpoint, sigma, f"YouTube-VOS:{split}")
    marker, timing_csv, archive = run_dir / "run.json", run_dir / "timing.csv", run_dir / "submission.zip"
    if not force and _is_cached(marker, key, [timing_csv, archive]):
        timing = pd.read_csv(timing_csv)
        return {"run": run, "run_dir": run_dir, "submission": archive, "videos": len(timing),
                "s_per_frame": float(timing["s_per_frame"].mean()), "cached": True}
    marker.unlink(missing_ok=True)
    ds = YouTubeVOSDataset(study.data_root / "YouTube-VOS", split=split)
    # A study restricted to some sequences (smoke runs name DAVIS videos) predicts those it has.
    names = None if study.sequences is None else [n for n in study.sequences if n in ds.names]
    timings = run_dataset(_load(checkpoint, study.device), ds, run_dir / "Annotations", sigma=sigma,
                          mem_every=study.profile.inference.mem_every, resolution_out="gt",
                          infer_height=resolution_height(study.resolution),
                          sequences=names, device=study.device)
    timing = pd.DataFrame({"sequence": list(timings), "s_per_frame": list(timings.values())})
    save_csv(timing, timing_csv)

    def _zip(tmp: Path) -> None:
        # make_archive appends ".zip" to the base name it is given
        made = shutil.make_archive(str(tmp), "zip", root_dir=run_dir, base_dir="Annotations")
        os.replace(made, tmp)

    atomic_write(archive, _zip)
    save_text(json.dumps(key, indent=1), marker)
    return {"run": run, "run_dir": run_dir, "submission": archive, "videos": len(timing),
            "s_per_frame": float(timing["s_per_frame"].mean()), "cached": False}


def results_row(result: dict[str, Any], *, method: str, training_data: str, dataset: str,
                protocol: str) -> dict[str, Any]:
    """One row of ours for a paper-style table from an :func:`evaluate_checkpoint` result."""
    jf = report.jf_from_global(result["global"], source=str(result["run_dir"]))
    return {"method": method, "training_data": training_data, "dataset": dataset, **jf,
            "s/frame": result["s_per_frame"], "run": result["run"], "protocol": protocol}


def sample_static_clips(study: Study, n: int = 2) -> list[dict[str, Any]]:
    """``n`` pre-training clips as the HaS arm draws them at the end of its ramp (Fig. 4 data).

    Items of :class:`kmnlib.synthesis.StaticClipDataset` (frames, masks, hidden, name) plus the
    ``hide_p`` they were drawn with.
    """
    from dataclasses import replace

    from kmnlib.data import open_static_dataset
    from kmnlib.synthesis import StaticClipDataset

    cfg = replace(study.profile.pretrain, iterations=study.iterations_of("pretrain"))
    ds = StaticClipDataset.from_stage([open_static_dataset(s) for s in study.profile.static_sets],
                                      cfg, hide=True, seed=study.seed)
    last = len(ds) - 1
    clips = [{**ds[last - i], "hide_p": ds.hide_p(last - i)} for i in range(n)]
    for c in clips:  # "<set folder>/<image>" reads better than the absolute path
        c["name"] = "/".join(Path(c["name"]).parts[-2:])
    return clips


def load_model(checkpoint: Path, device: str = "cpu") -> Any:
    """The network of a training checkpoint, in eval mode (:func:`kmnlib.train.load_model`)."""
    return _load(checkpoint, device)


def checkpoint_stage(checkpoint: Path) -> str:
    """``pretrain`` or ``main``, from :func:`kmnlib.train.run_name`'s naming of checkpoints."""
    return "pretrain" if Path(checkpoint).stem.startswith("pretrain") else "main"


def results_table(runs: dict[str, dict[str, Any]], study: Study) -> pd.DataFrame:
    """One row per evaluated run: J&F, J, F (percent), s/frame, run folder, protocol."""
    rows = []
    for label, res in runs.items():
        jf = report.jf_from_global(res["global"], source=str(res["run_dir"]))
        rows.append({"run": label, **jf, "s/frame": res["s_per_frame"],
                     "folder": str(res["run_dir"].relative_to(study.out_dir)),
                     "protocol": res["protocol"]})
    return pd.DataFrame(rows)


def per_sequence_long(per_seq: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack per-sequence tables (label → :func:`report.per_sequence_table`) with a ``run`` column."""
    return pd.concat([df.assign(run=label) for label, df in per_seq.items()], ignore_index=True)


def ablation_table(study: Study, models: dict[str, Path], tags: dict[str, str], *,
                   sigma: float) -> pd.DataFrame:
    """Table 3 rows of ours: each model ("HaS"/"no HaS") × (kernel σ, STM read), DAVIS16 val J&F.

    DAVIS17 J&F is filled when DAVIS 2017 val is present; YouTube-VOS is never local (NaN).
    """
    rows = []
    extra = "DAVIS-2017:val" in extra_eval_sets(study)
    for label, ckpt in models.items():
        for read in (None, sigma):
            res = evaluate_checkpoint(study, ckpt, tags[label], sigma=read)
            d17 = float("nan")
            if extra:
                r17 = evaluate_checkpoint(study, ckpt, tags[label], sigma=read,
                                          dataset="DAVIS-2017:val")
                d17 = report.jf_from_global(r17["global"])["J&F"]
            rows.append({"method": "KMN", "HaS": label == "HaS", "KM": read is not None,
                         "DAVIS16 J&F": report.jf_from_global(res["global"])["J&F"],
                         "DAVIS17 J&F": d17, "YouTube-VOS overall": float("nan"),
                         "read": report.sigma_label(read), "s/frame": res["s_per_frame"],
                         "run": res["run"], "protocol": res["protocol"]})
    order = {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}
    df = pd.DataFrame(rows)
    return df.iloc[sorted(range(len(df)), key=lambda i: order[(df["HaS"][i], df["KM"][i])])
                   ].reset_index(drop=True)


def sigma_sweep(study: Study, models: dict[str, Path], tags: dict[str, str],
                sigmas: Sequence[float | None]) -> pd.DataFrame:
    """DAVIS16 val J&F/J/F of each model for every σ (None = STM read), reusing cached runs."""
    rows = []
    for label, ckpt in models.items():
        for s in sigmas:
            res = evaluate_checkpoint(study, ckpt, tags[label], sigma=s)
            rows.append({"model": label, "sigma": float("nan") if s is None else float(s),
                         "read": report.sigma_label(s), **report.jf_from_global(res["global"]),
                         "s/frame": res["s_per_frame"], "run": res["run"], "cached": res["cached"]})
    return pd.DataFrame(rows)


def loss_map_examples(study: Study, model: Any, *, n: int = 3) -> list[dict[str, Any]]:
    """Loss maps (:func:`kmnlib.train.loss_map_pair`) of ``n`` static images: ``plain`` and ``hidden``.

    Images are drawn with a seeded rng from the profile's static sets; the hiding probability is
    the end value of the pre-training ramp, grid and crop size those of pre-training.
    """
    import numpy as np

    from kmnlib.data import open_static_dataset
    from kmnlib.synthesis import NoObjectError
    from kmnlib.train import loss_map_pair

    cfg = study.profile.pretrain
    sets = [open_static_dataset(name) for name in study.profile.static_sets]
    rng = np.random.default_rng(study.seed)
    out: list[dict[str, Any]] = []
    for attempt in range(10 * n):
        if len(out) == n:
            break
        ds = sets[attempt % len(sets)]
        image, labels, name = ds[int(rng.integers(len(ds)))]
        try:
            pair = loss_map_pair(model, image, labels, size=cfg.crop_size, hide_p=cfg.has_p_end,
                                 seed=study.seed + attempt, grid=cfg.has_grid, device=study.device)
        except NoObjectError:
            continue  # an image whose objects vanish in every crop; take another
        out.append({"name": f"{Path(str(getattr(ds, 'root', ''))).name}/{name}", **pair})
    if len(out) < n:
        raise ValueError(f"only {len(out)} of {n} static images gave a clip with an object")
    return out


def loss_region_table(examples: list[dict[str, Any]]) -> pd.DataFrame:
    """Per clip, kind (plain/hidden) and query frame: mean loss near GT boundaries, near hidden-cell
    edges and elsewhere (:func:`report.boundary_loss_stats`), followed by per-kind means."""
    rows = []
    for ex in examples:
        for kind in ("plain", "hidden"):
            m = ex[kind]
            st_ = report.boundary_loss_stats(m["loss"], m["masks"], m["hidden_pixels"])
            rows.append(st_.assign(clip=ex["name"], kind=kind))
    df = pd.concat(rows, ignore_index=True)
    loss_cols = [c for c in df.columns if c.endswith("_loss")]
    means = df.groupby("kind", sort=False)[loss_cols].mean().reset_index().assign(clip="mean")
    cols = ["clip", "kind", "frame"] + loss_cols + [c for c in df.columns if c.endswith("_pixels")]
    return pd.concat([df, means], ignore_index=True).reindex(columns=cols)


def table1_rows(study: Study, ckpts: dict[str, Path], *, sigma: float) -> pd.DataFrame:
    """Our rows for Table 1 (DAVIS16 val; DAVIS17 val when present).

    ``ckpts``: ``pretrain_has`` (static images only), ``has`` (HaS pre-training + video) read
    with the kernel → "KMN"; ``nohas`` read with STM's read → "STM" (no HaS, no kernel: STM's
    recipe on our network).
    """
    sets = ["DAVIS-2016:val"] + extra_eval_sets(study)
    rows = []
    for ds_name in sets:
        label = "DAVIS16 val" if ds_name == "DAVIS-2016:val" else "DAVIS17 val"
        for method, key, read in (("KMN", "pretrain_has", sigma), ("KMN", "has", sigma),
                                  ("STM", "nohas", None)):
            res = evaluate_checkpoint(study, ckpts[key], key, sigma=read, dataset=ds_name)
            rows.append(results_row(res, method=method, dataset=label,
                                    training_data=res["training_data"],
                                    protocol=res["protocol"]))
    return pd.DataFrame(rows)


def read_weight_example(study: Study, model: Any, *, sequence: str = "car-roundabout",
                        sigma: float = 7.0, query_index: int | None = None) -> dict[str, Any]:
    """Fig. 1 data: read weights of one query position (centre of the annotated object in frame
    ``query_index``, default the middle frame) over memory frame 0, for STM's read and σ.

    Frames are resized to the study's inference height. ``summary`` gives per read the largest
    weight and the share of the weight that falls on the annotated object in the memory frame.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    seq = davis_val(study)[sequence]
    qi = len(seq) // 2 if query_index is None else int(query_index)
    frames = seq.load_frames([0, qi])
    masks = seq.load_masks([0, qi])
    h = resolution_height(study.resolution)
    w = max(1, round(frames.shape[2] * h / frames.shape[1]))
    frames_t = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(h, w),
                             mode="bilinear", antialias=True, align_corners=False)
    frames = frames_t.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
    masks = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=(h, w),
                          mode="nearest")[:, 0].byte().numpy()
    masks = np.where(masks == 255, 0, masks)
    query_yx = report.object_centre_cell(masks[1])
    weights = report.read_weight_maps(model, frames[0], masks[0], frames[1], query_yx,
                                      [None, sigma], device=study.device)
    # Share of each read's weight on the memorised object: object fraction per feature cell.
    from kmnlib.model.ops import pad_divide_by
    obj, _ = pad_divide_by(torch.from_numpy((masks[0] == 1).astype(np.float32))[None, None])
    frac = F.avg_pool2d(obj, 16)[0, 0].numpy()
    summary = pd.DataFrame([{"read": k, "max weight": float(v.max()),
                             "weight on the annotated object": float((v * frac).sum())}
                            for k, v in weights.items()])
    return {"memory_frame": frames[0], "query_frame": frames[1], "query_yx": query_yx,
            "weights": weights, "summary": summary, "frames": (0, qi)}


def default_parameters(profile: str, *, out_dir: Path | None = None, seed: int | None = None,
                       device: str = "cpu", force: bool = False) -> dict[str, Any]:
    """The papermill parameters every notebook receives (its ``parameters`` cell has the same names)."""
    prof = get_profile(profile)
    return {"profile": prof.name, "data_root": str(kmn_data_root()),
            "out_dir": str(out_dir or results_root() / prof.name),
            "seed": prof.seed if seed is None else seed, "device": device, "force": force}


def kernel_dir(parent: Path) -> Path:
    """Write a ``python3`` kernel spec that launches *this* interpreter; return its JUPYTER_PATH entry.

    Jupyter looks kernels up on ``$JUPYTER_PATH`` before the user's and the system's folders, so a
    spec placed there makes papermill's ``python3`` kernel the venv's python even on a machine
    with a global Jupyter whose ``python3`` points elsewhere.
    """
    spec = parent / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"kmn-study ({sys.executable})", "language": "python",
        "env": {"PYTHONPATH": pythonpath, "MPLBACKEND": "Agg"},
    }, indent=1))
    return parent


def render_html(ipynb: Path, html_path: Path) -> Path:
    """Render an executed notebook to a standalone HTML page (figures embedded), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return save_text(body, html_path)


def execute_notebook(src: Path, dst: Path, params: dict[str, Any], *, workdir: Path) -> float:
    """Execute ``src`` with papermill into ``dst`` (written via a temp file); return wall seconds.

    On failure the partially executed notebook is kept as ``<dst stem>.failed.ipynb`` and
    papermill's exception propagates.
    """
    import papermill as pm

    if not src.is_file():
        raise FileNotFoundError(f"{src}: notebook not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.running.ipynb")
    failed = dst.with_name(f"{dst.stem}.failed.ipynb")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(kernel_dir(workdir)), old) if p)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=KERNEL_NAME,
                            cwd=str(src.parent), progress_bar=False, log_output=False)
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    seconds = time.perf_counter() - t0
    os.replace(tmp, dst)
    failed.unlink(missing_ok=True)
    return seconds


def record_stage_time(out_dir: Path, notebook: str, seconds: float, status: str) -> pd.DataFrame:
    """Upsert one notebook's wall time into ``stage_times.csv`` (one row per notebook, latest run)."""
    path = out_dir / STAGE_TIMES
    cols = ["notebook", "seconds", "status", "finished_utc"]
    df = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=cols)
    df = df[df["notebook"] != notebook]
    row = pd.DataFrame([{"notebook": notebook, "seconds": round(seconds, 2), "status": status,
                         "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}])
    df = pd.concat([df, row] if len(df) else [row], ignore_index=True)
    order = {n: i for i, n in enumerate(NOTEBOOKS)}
    df = df.sort_values("notebook", key=lambda s: s.map(lambda n: order.get(n, len(order))))
    save_csv(df[cols], path)
    return df


def render_index(out_dir: Path, profile: str) -> Path:
    """Write ``index.html``: links to each notebook's HTML report and the figures and tables."""
    times = pd.read_csv(out_dir / STAGE_TIMES) if (out_dir / STAGE_TIMES).is_file() else None
    rows = []
    for name in NOTEBOOKS:
        nb_html = out_dir / "notebooks" / f"{name}.html"
        failed = out_dir / "notebooks" / f"{name}.failed.ipynb"
        secs = ""
        if times is not None and (times["notebook"] == name).any():
            r = times[times["notebook"] == name].iloc[-1]
            secs = f"{r['seconds']:.0f} s ({r['status']})"
        if nb_html.is_file():
            link = (f'<a href="notebooks/{name}.html">{name}</a> '
                    f'(<a href="notebooks/{name}.ipynb">ipynb</a>)')
        else:
            link = f"{name} — no report yet"
        if failed.is_file():  # the latest run failed; an earlier report (if any) stays linked
            link += f' — latest run: <a href="notebooks/{name}.failed.ipynb">failed run</a>'

        rows.append(f"<tr><td>{link}</td><td>{html.escape(secs)}</td></tr>")

    def listing(sub: str, pattern: str) -> str:
        files = sorted((out_dir / sub).rglob(pattern)) if (out_dir / sub).is_dir() else []
        items = "".join(f'<li><a href="{html.escape(str(f.relative_to(out_dir)))}">'
                        f"{html.escape(str(f.relative_to(out_dir / sub)))}</a></li>" for f in files)
        return f"<ul>{items}</ul>" if items else "<p>none yet</p>"

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kmn-study — {html.escape(profile)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:.2em 1em}}</style>
</head><body>
<h1>kmn-study — profile <code>{html.escape(profile)}</code></h1>
<p>Kernelized Memory Network (Seong et al., ECCV 2020) study. Generated
{datetime.now(timezone.utc).isoformat(timespec="seconds")} by <code>python -m kmnlib.study
--profile {html.escape(profile)}</code>.</p>
<h2>Notebook reports</h2><table><tr><th>notebook</th><th>wall time</th></tr>{''.join(rows)}</table>
<h2>Tables (CSV)</h2>{listing("tables", "*.csv")}
<h2>Figures (PNG)</h2>{listing("figures", "*.png")}
</body></html>
"""
    return save_text(page, out_dir / "index.html")


def run_study(profile: str, *, out_dir: Path | None = None, only: Sequence[str] | None = None,
              force: bool = False, params: dict[str, Any] | None = None,
              notebook_dir: Path | None = None,
              log: Callable[[str], None] = print) -> Path:
    """Execute the notebooks (all, or ``only``) in order; return the path of ``index.html``.

    ``params`` override/extend the default parameters (e.g. ``{"iterations": 2}``). Raises
    papermill's exception when a notebook fails, after recording the failure in the stage times.
    """
    prof = get_profile(profile)
    notebook_dir = Path(notebook_dir or NOTEBOOK_DIR)
    out_dir = Path(out_dir or results_root() / prof.name)
    names = list(NOTEBOOKS) if not only else list(only)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    names = [n for n in NOTEBOOKS if n in names]  # always in study order
    parameters = default_parameters(prof.name, out_dir=out_dir, force=force)
    parameters.update(params or {})
    # The notebooks run in notebooks/: relative paths are made absolute here, against the
    # directory the study was started from, so runner and notebooks write to the same place.
    for key in ("out_dir", "data_root"):
        if parameters.get(key):
            parameters[key] = str(Path(parameters[key]).expanduser().resolve())
    out_dir = Path(parameters["out_dir"])
    nb_out = out_dir / "notebooks"
    nb_out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kmn-kernel-") as kdir:
        for name in names:
            log(f"[study] {name} …")
            t0 = time.perf_counter()
            try:
                secs = execute_notebook(notebook_dir / f"{name}.ipynb", nb_out / f"{name}.ipynb",
                                        parameters, workdir=Path(kdir))
            except BaseException:
                record_stage_time(out_dir, name, time.perf_counter() - t0, "failed")
                render_index(out_dir, prof.name)
                raise
            render_html(nb_out / f"{name}.ipynb", nb_out / f"{name}.html")
            record_stage_time(out_dir, name, secs, "ok")
            log(f"[study] {name} done in {secs:.1f} s → {nb_out / (name + '.html')}")
    return render_index(out_dir, prof.name)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmnlib.study", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini", help="profile in kmnlib/config.py (default: mini)")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: results/<profile>")
    ap.add_argument("--only", nargs="+", metavar="NOTEBOOK", help=f"subset of {list(NOTEBOOKS)}")
    ap.add_argument("--force", action="store_true", help="retrain finished stages / recompute")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads in the notebooks (1 is fastest on a shared CPU)")
    ap.add_argument("--params-json", default=None,
                    help="JSON object of extra notebook parameters, or a path to a JSON file")
    args = ap.parse_args(argv)
    params: dict[str, Any] = {}
    if args.params_json:
        text = args.params_json
        if not text.lstrip().startswith("{") and Path(text).is_file():
            text = Path(text).read_text()
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            ap.error(f"--params-json: not valid JSON ({exc})")
        if not isinstance(params, dict):
            ap.error("--params-json must be a JSON object")
    if args.threads:
        params.setdefault("threads", args.threads)
    try:
        index = run_study(args.profile, out_dir=args.out_dir, only=args.only, force=args.force,
                          params=params)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # papermill's PapermillExecutionError and kernel failures
        print(f"[study] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"[study] report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
