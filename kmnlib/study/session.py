"""The study's first step: a profile name and an overrides mapping → a :class:`Study`.

Every notebook's parameters cell holds two names, ``profile`` and ``overrides``; papermill (and
``python -m kmnlib.study``) replaces them. ``overrides`` keys are either :class:`StudySettings`
fields (``data_root``, ``out_dir``, ``sequences``, ``threads``, ...) or dotted profile paths
(``seed``, ``pretrain.iterations``, ``inference.infer_height``, ...); each value is type-checked.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmnlib.config import (
    EVAL_SETS,
    REPO_ROOT,
    Profile,
    StudySettings,
    get_profile,
    resolve_data_root,
    results_root,
    split_overrides,
    study_settings,
)
from kmnlib.denormals import flush_denormals
from kmnlib.files import save_text


@dataclass(frozen=True)
class Study:
    """One study run: the profile (overrides applied) and how the run executes."""

    profile: Profile
    settings: StudySettings   # data_root and out_dir resolved to absolute paths

    def _resolved(self, name: str) -> Path:
        value = getattr(self.settings, name)
        if value is None:
            raise RuntimeError(f"Study.{name} is unresolved: make studies with resolve_study()")
        return value

    @property
    def data_root(self) -> Path:
        return self._resolved("data_root")

    @property
    def out_dir(self) -> Path:
        return self._resolved("out_dir")

    @property
    def derived_dir(self) -> Path:
        """Cache of the stress sets derived from the data (:mod:`kmnlib.data.derived`)."""
        return self._resolved("derived_dir")

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def force(self) -> bool:
        return self.settings.force

    @property
    def sequences(self) -> list[str] | None:
        return list(self.settings.sequences) if self.settings.sequences else None

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def figure(self, name: str) -> Path:
        """Path of a figure ``out_dir/figures/<name>``."""
        return self.out_dir / "figures" / name

    def table(self, name: str) -> Path:
        """Path of a table ``out_dir/tables/<name>``."""
        return self.out_dir / "tables" / name


def resolve_study(profile: str, overrides: Mapping[str, Any] | None = None) -> Study:
    """Validate ``profile`` and ``overrides`` and resolve paths; touches nothing on disk.

    Relative ``data_root`` / ``out_dir`` are made absolute against the current directory. The data
    root must hold DAVIS-2016 and every other set of the profile's ``eval_sets`` (``ValueError``
    naming the setting, the set, the expected path and the fix otherwise).
    """
    settings_in, profile_in = split_overrides(overrides)
    prof = get_profile(profile).with_overrides(profile_in)
    settings = study_settings(settings_in)
    root = resolve_data_root(settings.data_root)
    if not (root / "DAVIS-2016").is_dir():
        raise ValueError(f"{root / 'DAVIS-2016'}: DAVIS-2016 not found under the data root "
                         f"(run `make data`, or pass data_root / set KMN_DATA to the folder "
                         f"holding DAVIS-2016/)")
    missing = {s: root / EVAL_SETS[s] for s in prof.eval_sets if not (root / EVAL_SETS[s]).exists()}
    if missing:
        what = ", ".join(f"{s!r} ({path} is missing)" for s, path in missing.items())
        keep = json.dumps([s for s in prof.eval_sets if s not in missing])
        raise ValueError(f"eval_sets: not found under the data root: {what}; add the data "
                         f"(data/README.md) or leave the set out, e.g. overrides "
                         f"{{\"eval_sets\": {keep}}}")
    out = (settings.out_dir or results_root() / prof.name).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out}: is a file, not a folder; name a folder for the results")
    if out == root or root in out.parents:
        raise ValueError(f"out_dir {out}: lies inside the data root {root}; results must not be "
                         f"written into the data — choose another folder")
    cache = (settings.derived_dir or REPO_ROOT / "data" / "derived").expanduser().resolve()
    return Study(prof, dataclasses.replace(settings, data_root=root, out_dir=out,
                                           derived_dir=cache))


PROFILE_JSON = "profile.json"


def open_study(profile: str, overrides: Mapping[str, Any] | None = None) -> Study:
    """The notebooks' first call: :func:`resolve_study`, then seed numpy and torch with the
    profile's seed, set torch's CPU threads (``threads``: on a CPU shared with other jobs one
    thread per process is many times faster than two), flush subnormal floats to zero in every
    CPU thread (:func:`kmnlib.denormals.flush_denormals`), create the output folder and record the
    profile there (``profile.json``: replicates are recognised by it)."""
    study = resolve_study(profile, overrides)
    np.random.seed(study.profile.seed)
    torch.manual_seed(study.profile.seed)
    if study.settings.threads:
        torch.set_num_threads(study.settings.threads)
    # The notebooks' entry point: their training and inference run with subnormals flushed.
    flush_denormals()
    # Training imports tqdm.auto, which warns when ipywidgets is absent; progress bars are off here.
    warnings.filterwarnings("ignore", message="IProgress not found")
    study.out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(study.profile.to_dict(), indent=1)
    path = study.out_dir / PROFILE_JSON
    if not path.is_file() or path.read_text() != text:
        save_text(text, path)
    return study


def environment_summary() -> dict[str, str]:
    """Interpreter and library versions, shown at the top of each notebook (and checked by tests)."""
    return {"python": sys.executable, "version": sys.version.split()[0], "torch": torch.__version__,
            "threads": str(torch.get_num_threads())}


def describe(study: Study) -> str:
    """One line for the top of a notebook: profile, seed, data, outputs, inference size, subset."""
    return (f"profile={study.profile.name} seed={study.profile.seed} data={study.data_root} "
            f"out={study.out_dir} inference={study.profile.inference_label()} "
            f"sequences={study.sequences or 'all'}")
