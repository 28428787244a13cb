"""Every setting does something (issue "Design", item 3).

Each leaf setting of the ``mini`` profile, changed to another valid value, changes exactly one of:

* the key of an evaluation run (:func:`kmnlib.study.runs.run_key`: a cached run is reused only
  when its ``run.json`` holds the same key);
* the spec a finished checkpoint must match to be reused (:func:`kmnlib.training.trainer.run_spec`);

or it is listed, with its reason, in exactly one of :data:`kmnlib.config.NOT_AFFECTING_RESULTS`
(changes no result) and :data:`kmnlib.config.SELECTS_RUNS` (selects which evaluations and
analyses run). A new profile field that does none of these fails here until it is wired or
classified. Also: evaluation sets (``eval_sets``) and renamed settings are refused clearly.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from kmnlib import config
from kmnlib.config import MINI, NOT_AFFECTING_RESULTS, SELECTS_RUNS, STAGES, Profile, StudySettings
from kmnlib.study import runner, runs, session, tables
from kmnlib.study.runs import DAVIS16_VAL, run_key
from kmnlib.study.session import PROFILE_JSON, Study
from kmnlib.training.trainer import run_spec


def leaf_paths(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every non-dataclass field below ``obj`` (the profile's dataclasses,
    recursively: Profile, ModelConfig, StageConfig with its AugmentConfig, InferenceConfig)."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += leaf_paths(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


LEAVES = leaf_paths(MINI)

#: Valid values of settings that are not plain numbers (the first that differs is used).
OPTIONS: dict[str, tuple[Any, ...]] = {
    "name": ("mini", "other"),
    "backbone": ("efficientnet_lite0", "resnet50"),
    "memory_format": ("channels_last", "contiguous"),
    "weights": (None, "my/weights.pth"),
    "video_resolution": ("480p", "240p"),
    "davis_resolution": ("480p", "240p"),
    "precision": ("fp32", "bf16"),
    "read_backend": config.READ_BACKENDS,
    "crop_size": (192, 208),              # multiples of FEATURE_STRIDE
    "video_sets": (("DAVIS-2016:train",), ("DAVIS-2017:train",)),
    "eval_sets": ((DAVIS16_VAL,), (DAVIS16_VAL, "DAVIS-2017:val")),
    "lr_decay": ("constant", "cosine"),
    "snapshots": ((), (2,)),
}


def other_value(profile: Profile, path: str) -> Any:
    """A valid value of ``path`` that differs from ``profile``'s."""
    obj: Any = profile
    *groups, name = path.split(".")
    for g in groups:
        obj = getattr(obj, g)
    value = getattr(obj, name)
    if name in OPTIONS:
        return next(v for v in OPTIONS[name] if v != value)
    hint = typing.get_type_hints(type(obj))[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.1   # stays in every range of Profile.validate
    if isinstance(value, tuple) and typing.get_args(hint)[-1] is Ellipsis:
        return value[:-1] if len(value) > 1 else (*value, 2.0)
    if isinstance(value, tuple):             # a fixed-length range (lo, hi)
        return (value[0] / 2, *value[1:])
    raise AssertionError(f"{path}: no other valid value known for {value!r}; add one to OPTIONS")


def changed(profile: Profile, path: str) -> Profile:
    value = other_value(profile, path)
    if path == "name":   # with_overrides keeps a profile's name
        return dataclasses.replace(profile, name=value).validate()
    if path.endswith(".n_frames"):   # its one valid value is 3 (STM's step): set it unvalidated
        stage = path.split(".")[0]
        return dataclasses.replace(profile, **{stage: dataclasses.replace(
            profile.stage(stage), n_frames=value)})
    return profile.with_overrides({path: value})


def categories(base: Profile, other: Profile, tmp: Path) -> set[str]:
    """Which of the run key and the training spec differ between two profiles."""
    ckpt = tmp / "main.pt"
    ckpt.write_bytes(b"a checkpoint")
    settings = StudySettings(data_root=tmp, out_dir=tmp / "out", derived_dir=tmp / "derived")

    def key(p: Profile) -> dict[str, Any]:
        return run_key(Study(p, settings), ckpt, 3.5, DAVIS16_VAL)

    def specs(p: Profile) -> list[dict[str, Any]]:
        return [run_spec(p, "pretrain", True, None), run_spec(p, "pretrain", False, None),
                run_spec(p, "main", True, tmp / "pretrain.pt")]

    out = set()
    if key(base) != key(other):
        out.add("run key")
    if specs(base) != specs(other):
        out.add("training spec")
    return out


# Known gaps in files this change does not own (each fails strictly, as a reminder, once fixed):


@pytest.mark.parametrize("path", LEAVES)
def test_every_setting_does_exactly_one_thing(path, tmp_path) -> None:
    measured = categories(MINI, changed(MINI, path), tmp_path)
    declared = {name for name, table in (("NOT_AFFECTING_RESULTS", NOT_AFFECTING_RESULTS),
                                         ("SELECTS_RUNS", SELECTS_RUNS)) if path in table}
    assert len(measured | declared) == 1, (
        f"{path}: changes {sorted(measured) or 'neither the run key nor the training spec'}, "
        f"listed in {sorted(declared) or 'neither table'}: wire it into run_key / run_spec, or "
        f"list it with its reason in exactly one of config.NOT_AFFECTING_RESULTS / SELECTS_RUNS")


def test_the_tables_name_settings_that_exist() -> None:
    assert set(NOT_AFFECTING_RESULTS) <= set(LEAVES) and set(SELECTS_RUNS) <= set(LEAVES)
    assert not set(NOT_AFFECTING_RESULTS) & set(SELECTS_RUNS)
    assert all(reason.strip() for reason in [*NOT_AFFECTING_RESULTS.values(),
                                             *SELECTS_RUNS.values()])
    # The walk reaches every group: a field of each dataclass is a leaf here.
    assert {"name", "model.backbone", "pretrain.hide_grid", "main.augment.hue",
            "inference.read_backend", "eval_sets"} <= set(LEAVES)


# ---------------------------------------------------------------------------- renamed settings
@pytest.mark.parametrize("old,new", [("pretrain.has_grid", "pretrain.hide_grid"),
                                     ("main.has_p_start", "main.hide_p_start"),
                                     ("pretrain.has_p_end", "pretrain.hide_p_end")])
def test_an_old_setting_name_is_refused_naming_the_new_one(old, new) -> None:
    with pytest.raises(ValueError) as info:
        MINI.with_overrides({old: 4 if old.endswith("grid") else 0.25})
    assert str(info.value) == f"override {old!r}: renamed to {new!r}"
    assert MINI.with_overrides({new: 4 if new.endswith("grid") else 0.25})


def test_a_profile_recorded_under_old_names_still_pools(tmp_path) -> None:
    """``profile.json`` of a replicate written before the rename is read under the new names."""
    def record(seed: int, old_names: bool) -> dict[str, Any]:
        d = dataclasses.replace(MINI, seed=seed).to_dict()
        if old_names:
            back = {v: k for k, v in config.RENAMED_SETTINGS.items()}
            for st in STAGES:
                d[st] = {back.get(k, k): v for k, v in d[st].items()}
        return d

    out = tmp_path / "mini"
    for folder, seed, old in ((out, 0, False), (tmp_path / "mini-seed1", 1, True)):
        folder.mkdir()
        (folder / PROFILE_JSON).write_text(json.dumps(record(seed, old), indent=1))
        (folder / "provenance.json").write_text(json.dumps({"commit": None, "dirty": []}))
    assert "has_grid" in (tmp_path / "mini-seed1" / PROFILE_JSON).read_text()
    study = Study(MINI, StudySettings(data_root=tmp_path, out_dir=out, derived_dir=tmp_path))
    assert tables.replicate_dirs(study) == [out, tmp_path / "mini-seed1"]


# ------------------------------------------------------------------------------ evaluation sets
def test_validate_refuses_unknown_or_misordered_eval_sets() -> None:
    with pytest.raises(ValueError, match=r"eval_sets names unknown set\(s\) \['DAVIS-2017:test-dev'\]"):
        MINI.with_overrides({"eval_sets": [DAVIS16_VAL, "DAVIS-2017:test-dev"]})
    with pytest.raises(ValueError, match="eval_sets must start with 'DAVIS-2016:val'"):
        MINI.with_overrides({"eval_sets": ["DAVIS-2017:val"]})
    with pytest.raises(ValueError, match="eval_sets must not repeat"):
        MINI.with_overrides({"eval_sets": [DAVIS16_VAL, DAVIS16_VAL]})
    for name in config.PROFILES:
        assert config.get_profile(name).validate()


def test_the_evaluated_sets_are_the_profiles_eval_sets(tmp_path) -> None:
    settings = StudySettings(data_root=tmp_path, out_dir=tmp_path / "o", derived_dir=tmp_path)
    paper = config.get_profile("paper")
    assert paper.eval_sets == (DAVIS16_VAL, "DAVIS-2017:val", "YouTube-VOS:valid")
    s = Study(paper, settings)   # no data under tmp_path: the profile alone decides
    assert runs.extra_eval_sets(s) == ["DAVIS-2017:val"] and runs.youtube_vos_splits(s) == ["valid"]
    for name in ("mini", "test"):
        assert config.get_profile(name).eval_sets == (DAVIS16_VAL,)
        s = Study(config.get_profile(name), settings)
        assert runs.extra_eval_sets(s) == [] and runs.youtube_vos_splits(s) == []


def test_a_missing_eval_set_is_refused_before_any_work(tmp_path, capsys, data_root) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for name in ("DAVIS-2016", "static"):   # the rest of the test profile's data, as it is
        (data / name).symlink_to(data_root / name)
    wanted = [DAVIS16_VAL, "DAVIS-2017:val"]
    assert runner.main(["--profile", "test", "--out-dir", str(out), "--params-json",
                        json.dumps({"data_root": str(data), "eval_sets": wanted})]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: eval_sets:"), err
    for needle in ("'DAVIS-2017:val'", str(data / "DAVIS-2017" / "ImageSets" / "2017" / "val.txt"),
                   "data/README.md", '{"eval_sets": ["DAVIS-2016:val"]}'):
        assert needle in err, (needle, err)
    assert not out.exists()   # refused before anything was written
    # The paper profile names both extra sets; open_study refuses it likewise, naming both.
    with pytest.raises(ValueError, match="'DAVIS-2017:val'.*'YouTube-VOS:valid'"):
        session.open_study("paper", {"data_root": str(data), "out_dir": str(out)})
    assert not out.exists()
    # With the data there, the set is accepted.
    (data / "DAVIS-2017" / "ImageSets" / "2017").mkdir(parents=True)
    (data / "DAVIS-2017" / "ImageSets" / "2017" / "val.txt").write_text("bike-packing\n")
    s = session.resolve_study("test", {"data_root": str(data), "eval_sets": wanted})
    assert runs.extra_eval_sets(s) == ["DAVIS-2017:val"]


def test_a_fixed_length_range_can_be_overridden() -> None:
    """(lo, hi) settings are type-checked element by element (they once compared types to values)."""
    p = MINI.with_overrides({"pretrain.augment.scale_range": [0.8, 1.2]})
    assert p.pretrain.augment.scale_range == (0.8, 1.2)
    with pytest.raises(ValueError, match=r"scale_range'\[1\]: expected float"):
        MINI.with_overrides({"pretrain.augment.scale_range": [0.8, "big"]})
    with pytest.raises(ValueError, match="expected 2 values"):
        MINI.with_overrides({"pretrain.augment.scale_range": [0.8]})


def test_the_long_run_profile_validates_like_the_others(tmp_path, capsys) -> None:
    long = config.get_profile("mini-long")
    assert long.pretrain.iterations + long.main.iterations >= 4 * (MINI.pretrain.iterations
                                                                   + MINI.main.iterations)
    assert long.main.lr_decay == "cosine" and long.main.warmup_iterations > 0
    assert long.model == MINI.model and long.main.snapshots
    bad = {"main.lr_decay": "linear", "main.warmup_iterations": 3600,
           "main.snapshots": [800, 400], "main.lr_final_fraction": 2.0}
    for key, value in bad.items():
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            long.with_overrides({key: value})
    out = tmp_path / "long"
    assert runner.main(["--profile", "mini-long", "--out-dir", str(out), "--params-json",
                        json.dumps({"main.lr_decay": "linear"})]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "main.lr_decay" in err[0] and not out.exists()
