"""One training stage as an object: distributed setup, finished-run check, resume, loop, saving.

Run files in ``out_dir`` for a run called ``<name>`` (see :func:`checkpoint_name`): ``<name>.pt``
(final checkpoint, reused by re-runs), ``<name>.last.pt`` (periodic checkpoint for resuming) and
``<name>.csv`` (one row per iteration, :mod:`kmnlib.training.log`).

CPU note: on a CPU shared with other jobs use one torch thread (``--threads 1``); two threads per
process oversubscribe 2 cores and a step runs several times slower (benchmarks/README.md).
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm  # plain bars: tqdm.auto warns inside Jupyter without ipywidgets

from kmnlib.checkpoints import (check_run_name, load_checkpoint, load_finished_checkpoint,
                                save_checkpoint)
from kmnlib.config import NOT_AFFECTING_RESULTS, STAGES, Profile, current_names
from kmnlib.fingerprint import file_sha256
from kmnlib.memory import LogitStats
from kmnlib.model import build_model
from kmnlib.training.batches import StepBatches, build_clip_dataset
from kmnlib.training.log import TrainingLog, log_row
from kmnlib.training.schedule import learning_rate
from kmnlib.training.step import StepModule, TrainingDiverged, train_step

Callback = Callable[[int, nn.Module, dict[str, float]], None]


def checkpoint_name(stage: str, *, hide: bool, init: str | os.PathLike | None) -> str:
    """Default run name: ``pretrain`` / ``pretrain_nohas``; ``main_from_<init stem>`` / ``main_scratch``."""
    if stage == "pretrain":
        return "pretrain" if hide else "pretrain_nohas"
    if stage == "main":
        return f"main_from_{Path(init).stem}" if init else "main_scratch"
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def run_spec(profile: Profile, stage: str, hide: bool, init: Path | None) -> dict[str, Any]:
    """What a checkpoint must match to be reused or resumed (a changed config means a different
    run); settings that change no result (``config.NOT_AFFECTING_RESULTS``) are left out.

    ``init`` (the parent checkpoint a main stage starts from) is recorded by its content,
    ``{"sha256": ...}``, not its path: a retrained parent (new weights under the same name) makes
    its children's spec differ, so they are retrained, not reused; the same parent in a moved or
    copied ``out_dir`` still matches. The :class:`Trainer` checks the file exists before this runs;
    a missing one (only callers that compare specs without training) records ``None``."""
    stage_config = {k: v for k, v in asdict(profile.stage(stage)).items()
                    if f"{stage}.{k}" not in NOT_AFFECTING_RESULTS}
    parent = None
    if init:
        parent = {"sha256": file_sha256(init) if Path(init).is_file() else None}
    return {"profile": profile.name, "stage": stage, "iterations": profile.stage(stage).iterations,
            "seed": profile.seed, "hide": bool(hide) if stage == "pretrain" else True,
            "init": parent, "amp": profile.amp,
            "model": asdict(profile.model), "stage_config": stage_config,
            "static_sets": list(profile.static_sets) if stage == "pretrain" else [],
            "video_sets": list(profile.video_sets) if stage == "main" else []}


def spec_mismatch(saved: dict[str, Any] | None, spec: dict[str, Any]) -> list[str]:
    """Keys of ``spec`` whose saved value differs (compared as lists, since torch.save keeps tuples;
    settings renamed since the checkpoint was saved compare under their current names)."""
    saved = current_names(saved or {})
    return [k for k in spec if repr(_listify(saved.get(k))) != repr(_listify(spec[k]))]


def _listify(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_listify(v) for v in x]
    if isinstance(x, dict):
        return {k: _listify(v) for k, v in x.items()}
    return x


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             # numpy's key array as a tensor so the checkpoint loads with weights_only=True
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    # Generator states are host memory: a checkpoint loaded with map_location=cuda puts these
    # tensors on the GPU, and numpy / torch.set_rng_state take CPU tensors only.
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Trainer:
    """Train one stage of ``profile`` and write its checkpoint (:meth:`run`).

    ``stage`` "pretrain": static-image clips with Hide-and-Seek (``hide=False`` → p = 0, the no-HaS
    arm); "main": video clips, starting from the ``init`` checkpoint. Iterations, batch size, seed
    and every other setting come from ``profile``; data from ``data_root``. An existing final
    checkpoint of the same run is returned as is unless ``force``; otherwise ``<name>.last.pt`` is
    resumed when ``resume``. Under ``torchrun`` (WORLD_SIZE > 1) it trains with
    DistributedDataParallel and only rank 0 writes files. ``callback(step, model, losses)`` runs on
    every rank after each iteration. ``progress`` shows a tqdm bar; ``report_every`` (seconds)
    instead writes a plain progress line (iteration, loss, s/iteration, ETA) to stderr that often —
    readable in a terminal and in a log, also from a worker process.
    """

    def __init__(self, profile: Profile, stage: str, out_dir: str | os.PathLike, *,
                 data_root: str | os.PathLike, hide: bool = True,
                 init: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 resume: bool = True, force: bool = False, progress: bool = True,
                 name: str | None = None, callback: Callback | None = None,
                 report_every: float | None = None) -> None:
        self.profile, self.stage, self.cfg = profile, stage, profile.stage(stage)
        if self.cfg.iterations < 1:
            raise ValueError(f"{stage}.iterations must be >= 1, got {self.cfg.iterations}")
        self.init = Path(init).resolve() if init else None
        if self.init is not None and not self.init.is_file():
            raise FileNotFoundError(f"{self.init}: init checkpoint not found")
        self.data_root, self.hide = Path(data_root), hide
        if not self.data_root.is_dir():
            raise FileNotFoundError(f"{self.data_root}: data root not found (run `make data`, or "
                                    f"pass --data-root / set KMN_DATA to the folder holding the "
                                    f"datasets)")
        self.resume, self.force, self.progress, self.callback = resume, force, progress, callback
        self.report_every = report_every
        self.name = check_run_name(name, argument="name") if name else \
            checkpoint_name(stage, hide=hide, init=self.init)
        self.out_dir = Path(out_dir)
        self.final_path = self.out_dir / f"{self.name}.pt"
        self.last_path = self.out_dir / f"{self.name}.last.pt"
        self.log_path = self.out_dir / f"{self.name}.csv"
        self.spec = run_spec(profile, stage, hide, self.init)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device {device!r}: not a torch device (use 'cpu' or 'cuda[:N]')") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use 'cpu'")
        self.amp = bool(profile.amp and self.device.type == "cuda")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- the stage -----------------------------------------------------------------------------
    def run(self) -> Path:
        """Train (or reuse) the stage; return the final checkpoint path.

        Raises :class:`TrainingDiverged` on a NaN/inf loss, keeping the last good checkpoint.
        Subnormal floats are flushed by the entry points (``python -m kmnlib.train``, the study's
        ``open_study``, spawned workers: :func:`kmnlib.denormals.flush_denormals`), not here.
        """
        with self._distributed():
            if self.final_path.exists() and not self.force:
                return self._finished_run()
            clips = build_clip_dataset(self.profile, self.stage, self.data_root, hide=self.hide,
                                       world=self.world)
            model, optimizer, scaler = self._build()
            start, elapsed = self._resume_point(model, optimizer, scaler)
            self._loop(clips, model, optimizer, scaler, start, elapsed)
            return self.final_path

    @contextlib.contextmanager
    def _distributed(self) -> Iterator[None]:
        """Join the process group under torchrun (nccl on CUDA, gloo on CPU); leave it after."""
        own_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            own_group = True
        if self.world > 1:
            self.rank = torch.distributed.get_rank()
            self.world = torch.distributed.get_world_size()
        try:
            yield
        finally:
            if own_group:
                torch.distributed.destroy_process_group()

    def _finished_run(self) -> Path:
        saved = load_checkpoint(self.final_path)
        diff = spec_mismatch(saved.get("spec"), self.spec)
        if diff:
            raise ValueError(f"{self.final_path}: a finished run with different settings "
                             f"({', '.join(diff)}) is there; pass force=True (--force) to retrain "
                             f"or choose another out_dir")
        return self.final_path

    def _build(self) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
        # Model init is seeded so every rank (and every re-run) starts from the same weights.
        torch.manual_seed(self.profile.seed)
        model = build_model(self.profile.model).to(self.device)
        if self.init is not None:
            src = load_finished_checkpoint(self.init, argument="init")
            if _listify(src["profile"]["model"]) != _listify(asdict(self.profile.model)):
                raise ValueError(f"{self.init}: its model config {src['profile']['model']} differs "
                                 f"from profile {self.profile.name!r}'s {asdict(self.profile.model)}")
            model.load_state_dict(src["model"])
        model.train()
        model.freeze_bn()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.cfg.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        return model, optimizer, scaler

    def _resume_point(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler) -> tuple[int, float]:
        """(first step, wall seconds so far): from ``<name>.last.pt`` when resuming, else (0, 0)."""
        if not (self.resume and not self.force and self.last_path.exists()):
            return 0, 0.0
        state = load_checkpoint(self.last_path, map_location=self.device)
        diff = spec_mismatch(state.get("spec"), self.spec)
        if state.get("world_size", 1) != self.world:
            diff.append(f"world_size {state.get('world_size')}→{self.world}")
        if diff:
            raise ValueError(f"{self.last_path}: cannot resume, the run settings changed "
                             f"({', '.join(diff)}); pass resume=False (--no-resume) or force=True "
                             f"to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return int(state["step"]), float(state.get("wall_s", 0.0))

    def _state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, step: int, wall: float, finished: bool) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "rng": _rng_state(),
                "profile": self.profile.to_dict(), "spec": self.spec, "stage": self.stage,
                "name": self.name, "world_size": self.world, "wall_s": wall, "finished": finished}

    def snapshot_path(self, step: int) -> Path:
        """Where the weights after ``step`` iterations are kept (``cfg.snapshots``)."""
        return self.out_dir / f"{self.name}.it{step}.pt"

    def _save_points(self, done: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, elapsed: float) -> None:
        """After step ``done``: the weights as a snapshot if asked (``cfg.snapshots``; weights and
        records, no optimizer state), then the resumable ``.last.pt`` every ``checkpoint_every``
        and at every snapshot (so a resumed run never has to redo a snapshot)."""
        if done >= self.cfg.iterations:
            return
        snapshot = done in self.cfg.snapshots
        if snapshot:
            state = self._state(model, optimizer, scaler, done, elapsed, finished=False)
            for private in ("optimizer", "scaler", "rng"):
                state.pop(private)
            save_checkpoint(self.snapshot_path(done), {**state, "snapshot": True})
        if snapshot or done % self.cfg.checkpoint_every == 0:
            save_checkpoint(self.last_path, self._state(model, optimizer, scaler, done, elapsed,
                                                        finished=False))

    def _step_module(self, model: nn.Module) -> nn.Module:
        """The training step as a module, wrapped for DDP when there are several processes."""
        step_module: nn.Module = StepModule(model)
        if self.world > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return step_module

    def _loader(self, clips: Any, start: int) -> torch.utils.data.DataLoader:
        """Batches of steps ``start`` … ``iterations`` − 1 of this process's share."""
        cfg = self.cfg
        batches = StepBatches(clips, cfg.batch_size, start=start, total=cfg.iterations,
                              rank=self.rank, world=self.world)
        return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                           num_workers=cfg.num_workers,
                                           pin_memory=self.device.type == "cuda")

    def _report(self, done: int, loss: float, elapsed: float) -> None:
        """One ``[train …]`` progress line on stderr."""
        total = self.cfg.iterations
        rate = elapsed / max(done, 1)
        eta = rate * (total - done)
        print(f"[train {self.profile.name}/{self.name}] {done}/{total} it, loss {loss:.3f}, "
              f"{rate:.2f} s/it, ETA {int(eta // 60)}:{int(eta % 60):02d}", file=sys.stderr,
              flush=True)

    def _loop(self, clips: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, start: int, elapsed: float) -> None:
        cfg, total = self.cfg, self.cfg.iterations
        # Retraining a finished run (force) logs beside the old log and replaces it only once the
        # new final checkpoint exists: a failed or killed retraining loses nothing.
        replacing = self.force and self.final_path.exists()
        log_path = self.log_path.with_suffix(".retraining.csv") if replacing else self.log_path
        log = TrainingLog(log_path) if self.is_main else None
        if log is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log.open(resume_step=start)  # drops rows logged after the checkpoint we resume
        step_module = self._step_module(model)
        loader = self._loader(clips, start)
        bar = tqdm(total=total, initial=start, disable=not (self.progress and self.is_main),
                   desc=f"{self.profile.name}/{self.name}", dynamic_ncols=True)
        t_report = time.perf_counter()
        try:
            t_prev = time.perf_counter()
            for batch in loader:
                step = int(batch["step"])
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step)
                read_stats = LogitStats()
                losses = train_step(step_module, optimizer, scaler, batch, step=step + 1,
                                    device=self.device, amp=self.amp, stats=read_stats)
                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                elapsed += dt
                clips_per_s = cfg.batch_size * self.world / max(dt, 1e-9)
                done = step + 1
                if log is not None:
                    log.write(log_row(done, losses, optimizer.param_groups[0]["lr"], batch,
                                      clips_per_s, elapsed, read_stats.std, read_stats.median_gap))
                    self._save_points(done, model, optimizer, scaler, elapsed)
                bar.update(1)
                if done % max(cfg.log_every, 1) == 0 or done == total:
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", clips_s=f"{clips_per_s:.2f}")
                if self.callback is not None:
                    self.callback(done, model, losses)
                if (self.report_every is not None and self.is_main
                        and (now - t_report >= self.report_every or done == total)):
                    t_report = now
                    self._report(done, losses["loss"], elapsed)
        except TrainingDiverged as exc:
            kept = (f"last good checkpoint: {self.last_path}" if self.last_path.exists()
                    else "no checkpoint was written yet")
            raise TrainingDiverged(f"{self.profile.name}/{self.name}: {exc}; {kept}") from None
        finally:
            bar.close()
            if log is not None:
                log.close()
        if self.is_main:
            save_checkpoint(self.final_path, self._state(model, optimizer, scaler, total, elapsed,
                                                         finished=True))
            if replacing:
                os.replace(log_path, self.log_path)
            self.last_path.unlink(missing_ok=True)  # the final checkpoint supersedes it
        if self.world > 1:
            torch.distributed.barrier()  # other ranks return only once the final checkpoint exists


def train_stage(profile: Profile, stage: str, out_dir: str | os.PathLike, *,
                data_root: str | os.PathLike, **kwargs: Any) -> Path:
    """:class:`Trainer` ``(profile, stage, out_dir, data_root=…, **kwargs).run()``."""
    return Trainer(profile, stage, out_dir, data_root=data_root, **kwargs).run()
