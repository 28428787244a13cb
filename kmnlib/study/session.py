"""The study's first step: a profile name and an overrides mapping → a :class:`Study`.

Every notebook's parameters cell holds two names, ``profile`` and ``overrides``; papermill (and
``python -m kmnlib.study``) replaces them. ``overrides`` keys are either :class:`StudySettings`
fields (``data_root``, ``out_dir``, ``sequences``, ``threads``, ...) or dotted profile paths
(``seed``, ``pretrain.iterations``, ``inference.infer_height``, ...); each value is type-checked.
"""
from __future__ import annotations

import dataclasses
import difflib
import html
import io
import json
import os
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
from kmnlib.cli import check_device
from kmnlib.data.davis import read_split
from kmnlib.denormals import flush_denormals
from kmnlib.files import save_text
from kmnlib.model.backbones import resolve_weights


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
    naming the setting, the set, the expected path and the fix otherwise), and everything else the
    study will read must be there (:func:`check_study_inputs`): no setting fails late.
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
    inside = data_holding(out, root)
    if inside is not None:
        raise ValueError(f"out_dir {out}: lies inside the data root {root}{inside}; results must "
                         f"not be written into the data — choose another folder")
    check_study_inputs(prof, settings, root)
    cache = (settings.derived_dir or REPO_ROOT / "data" / "derived").expanduser().resolve()
    return Study(prof, dataclasses.replace(settings, data_root=root, out_dir=out,
                                           derived_dir=cache))


LINK_DEPTH = 3  # data-root levels searched for symlinks (<root>/DAVIS-2016/JPEGImages/480p)


def data_holding(out: Path, root: Path) -> str | None:
    """None if ``out`` lies outside the data, else how it lies inside (``""``, or
    ``" (through <link> → <target>)"``). Both paths are compared resolved (symlinks followed),
    and so is every symlink within the data root's first :data:`LINK_DEPTH` levels: through the
    default ``data/DAVIS-2016 → …/shared/data/DAVIS-2016`` links, an ``out_dir`` in the linked
    ground truth is inside the data although its resolved path is not under the root's."""
    out = Path(out).expanduser().resolve()
    places = [(root, Path(root).resolve())]
    level = [Path(root)]
    for _ in range(LINK_DEPTH):  # links inside linked folders count too (depth-bounded: no loop)
        below = []
        for folder in level:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                if e.is_symlink():
                    places.append((Path(e.path), Path(e.path).resolve()))
                if e.is_dir():
                    below.append(Path(e.path))
        level = below
    for link, target in places:
        if out == target or target in out.parents:
            return "" if link == root else f" (through {link} → {target})"
    return None


def check_study_inputs(prof: Profile, settings: StudySettings, root: Path) -> None:
    """What :func:`resolve_study` checks beyond the settings' types and ranges, before any work:
    the device, the ``sequences`` (DAVIS-2016 val names), the ``inference.davis_resolution``
    folder of those sequences, the training data (``static_sets``, ``video_sets`` at
    ``main.video_resolution``) and the ImageNet weights file (``model.weights``). A
    ``ValueError`` of one line naming the setting, its value and the fix otherwise."""
    check_device(settings.device, setting="device")
    names = _val_sequences(root, settings.sequences)
    res = prof.inference.davis_resolution
    for name in names:
        for kind in ("JPEGImages", "Annotations"):
            if not (root / "DAVIS-2016" / kind / res / name).is_dir():
                there = sorted(p.parent.name for p in (root / "DAVIS-2016" / kind).glob(f"*/{name}")
                               if p.is_dir())
                raise ValueError(f"inference.davis_resolution {res!r}: DAVIS-2016 val is not "
                                 f"stored at {res} under the data root "
                                 f"({root / 'DAVIS-2016' / kind / res / name} is missing); use "
                                 f"one of {there or ['480p']} (inference.infer_height sets the "
                                 f"size inference runs at)")
    _check_training_sets(prof, root)
    try:
        resolve_weights(prof.model)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None


def _val_sequences(root: Path, sequences: tuple[str, ...] | None) -> list[str]:
    """``sequences`` (all of DAVIS-2016 val if None), each checked against the val list."""
    try:
        val = read_split(root / "DAVIS-2016", "2016", "val")
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"DAVIS-2016 val: {exc} (data root {root}; run `make data`, or pass "
                         f"data_root / set KMN_DATA)") from None
    if sequences is None:
        return val
    unknown = [s for s in sequences if s not in val]
    if unknown:
        close = {s: difflib.get_close_matches(s, val, n=1) for s in unknown}
        hint = "".join(f"; {s!r}: did you mean {c[0]!r}?" for s, c in close.items() if c)
        raise ValueError(f"sequences: {unknown} are not DAVIS-2016 val sequences (the list in "
                         f"{root / 'DAVIS-2016' / 'ImageSets' / '2016' / 'val.txt'}, which the "
                         f"twin and pairs sets are made from){hint}; name val sequences, e.g. "
                         f"{json.dumps(val[:2])}, or leave sequences out for all")
    return list(sequences)


def _check_training_sets(prof: Profile, root: Path) -> None:
    """``static_sets`` (folders under <root>/static) and ``video_sets`` (their split lists, and
    DAVIS frames at ``main.video_resolution``) are there."""
    missing = [f"{s!r} ({root / 'static' / s} is missing)" for s in prof.static_sets
               if not (root / "static" / s).is_dir()]
    if missing:
        there = sorted(p.name for p in (root / "static").iterdir() if p.is_dir()) \
            if (root / "static").is_dir() else []
        raise ValueError(f"static_sets: not found under the data root: {', '.join(missing)}; add "
                         f"the data (data/README.md) or override static_sets with sets that are "
                         f"there: {json.dumps(there)}")
    res = prof.main.video_resolution
    for spec in prof.video_sets:
        name, _, split = spec.partition(":")
        base = root / name
        if name == "YouTube-VOS":
            need = [base / split / "meta.json"]
        else:
            year = name[-4:]
            listed = base / "ImageSets" / year / f"{split}.txt"
            first = read_split(base, year, split)[:1] if listed.is_file() else []
            need = [listed, *(base / "JPEGImages" / res / n for n in first)]
        gone = next((p for p in need if not p.exists()), None)
        if gone is not None:
            raise ValueError(f"video_sets: {spec!r} not found under the data root ({gone} is "
                             f"missing; main.video_resolution is {res!r}); add the data "
                             f"(data/README.md) or override video_sets / main.video_resolution")


PROFILE_JSON = "profile.json"
#: Set by the study runner to ``<out_dir>/notebooks/<name>.log``: where a notebook's progress goes.
PROGRESS_LOG_ENV = "KMN_PROGRESS_LOG"
_progress_log: Path | None = None   # where this process's stderr goes, once redirected


def redirect_progress(path: str | os.PathLike | None = None) -> Path | None:
    """Send this process's stderr, and that of every process it starts, to the file ``path``
    (default ``$KMN_PROGRESS_LOG``; nothing happens when neither is set, as in JupyterLab), appended
    to, and show one line linking it in the notebook. Returns the file, or None.

    File descriptor 2 itself is pointed at the file, so the evaluation workers (spawned, they
    inherit it) write there too; and ``sys.stderr`` is rebound to it, since in a kernel it is a
    stream to the notebook. Errors still reach the notebook: the kernel sends a cell's exception
    as a message of its own, not through stderr.
    """
    global _progress_log
    target = path if path is not None else os.environ.get(PROGRESS_LOG_ENV)
    if not target:
        return None
    target = Path(target).resolve()
    if _progress_log == target:
        return target   # a second open_study in the same kernel
    target.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="replace", line_buffering=True)
    _progress_log = target
    _show_progress_link(target)
    return target


def _show_progress_link(path: Path) -> None:
    """One line in the notebook: the log's name, linked relative to the report beside it."""
    text = f"progress log: {path.name}"
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # noqa: N806 - no IPython: a plain print
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    link = f'progress log: <a href="{html.escape(path.name)}">{html.escape(path.name)}</a>'
    display({"text/html": link, "text/plain": text}, raw=True)


def open_study(profile: str, overrides: Mapping[str, Any] | None = None) -> Study:
    """The notebooks' first call: :func:`resolve_study`, then seed numpy and torch with the
    profile's seed, set torch's CPU threads (``threads``: on a CPU shared with other jobs one
    thread per process is many times faster than two), flush subnormal floats to zero in every
    CPU thread (:func:`kmnlib.denormals.flush_denormals`), create the output folder and record the
    profile there (``profile.json``: replicates are recognised by it). Run by the study runner,
    it first sends the notebook's progress lines to their log (:func:`redirect_progress`)."""
    redirect_progress()   # first: every progress line of the notebook goes to its log
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
