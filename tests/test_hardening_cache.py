"""Hardening round 2: a cached result is reused only while what made it is unchanged.

* evaluation runs (``run.json``, :func:`kmnlib.study.runs.run_key`) are keyed by the checkpoint's
  content and the content of the data they read, not by paths or mtimes;
* a main checkpoint records its parent's content hash and the study retrains it on a new parent;
* the study's output-inside-the-data guard sees through symlinked data folders;
* the derived-set cache keeps sets of different data roots side by side and never loses one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import copy_davis
from kmnlib.checkpoints import load_checkpoint, save_checkpoint
from kmnlib.config import StudySettings, get_profile
from kmnlib.data import DAVISDataset, derived
from kmnlib.fingerprint import file_sha256
from kmnlib.model import build_model
from kmnlib.study import runner, runs, session, training
from kmnlib.study.session import Study
from kmnlib.training import train_stage

TEST = get_profile("test")
SEQ = "blackswan"


def _tree_digest(*roots: Path) -> dict[str, str]:
    """relative path → sha256 of every file (``"dir"`` for a folder) under ``roots`` (symlinks
    followed)."""
    out = {}
    for root in roots:
        for top, dirs, names in os.walk(root, followlinks=True):
            out |= {str((Path(top) / d).relative_to(root.parent)): "dir" for d in dirs}
            for n in names:
                p = Path(top) / n
                out[str(p.relative_to(root.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _checkpoint(path: Path, seed: int) -> Path:
    """A finished main-stage checkpoint of the test profile's network (weights from ``seed``)."""
    torch.manual_seed(seed)
    return save_checkpoint(path, {"model": build_model(TEST.model).state_dict(),
                                  "profile": TEST.to_dict(), "stage": "main", "finished": True})


def _study(data: Path, out: Path) -> Study:
    return Study(TEST, StudySettings(data_root=data, out_dir=out, derived_dir=out.parent / "derived",
                                     sequences=(SEQ,), progress=False, eval_workers=1))


@pytest.fixture
def evaluated(tmp_path, davis_root, one_thread):
    """One DAVIS-2016 val sequence (4 frames) evaluated once with a random network."""
    data = tmp_path / "data"
    copy_davis(davis_root, data / "DAVIS-2016", [SEQ], 4)
    study = _study(data, tmp_path / "out")
    job = runs.EvalJob(_checkpoint(study.out_dir / "ck" / "main.pt", seed=1), "has", 7.0)
    first = runs.evaluate(study, job)
    assert not first["cached"] and runs.evaluate(study, job)["cached"]  # the plain reuse works
    return study, job, first


def _j(res) -> float:
    return float(res["global"]["J-Mean"].iloc[0])


def _key_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two run keys (the culprit of a recomputation)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _key_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def test_changed_ground_truth_is_recomputed(evaluated) -> None:
    study, job, first = evaluated
    old_key = json.loads((first["run_dir"] / "run.json").read_text())
    # The ground truth of the evaluated frames (1, 2; the first and last are not scored) becomes
    # the network's own prediction: the fresh J is exactly 1, the stale one was not.
    gt_dir = study.data_root / "DAVIS-2016" / "Annotations" / "480p" / SEQ
    for t in (1, 2):
        pred = np.asarray(Image.open(first["run_dir"] / "masks" / SEQ / f"{t:05d}.png")) > 0
        Image.fromarray((pred * 255).astype(np.uint8)).save(gt_dir / f"{t:05d}.png")
    assert _j(first) < 1.0
    again = runs.evaluate(study, job)
    assert not again["cached"], "a run on changed ground truth was reused"
    assert _j(again) == pytest.approx(1.0)
    new_key = json.loads((again["run_dir"] / "run.json").read_text())
    diff = _key_diff(old_key, new_key)  # names the culprit: the annotations, nothing else
    assert "data.annotations.sha256" in diff and all(d.startswith("data.annotations.")
                                                     for d in diff), diff
    assert runs.evaluate(study, job)["cached"]  # and the new result is cached in turn


def test_same_content_elsewhere_is_reused(evaluated, tmp_path) -> None:
    study, job, first = evaluated
    # The data and the results folder (checkpoint inside) copied, with new mtimes.
    data2, out2 = tmp_path / "moved" / "data", tmp_path / "moved" / "out"
    shutil.copytree(study.data_root, data2, copy_function=shutil.copyfile)
    shutil.copytree(study.out_dir, out2, copy_function=shutil.copyfile)
    moved = _study(data2, out2)
    job2 = runs.EvalJob(out2 / "ck" / "main.pt", job.model_tag, job.sigma)
    res = runs.evaluate(moved, job2)
    assert res["cached"], "the same checkpoint on the same data (both moved) was recomputed"
    assert _j(res) == _j(first)
    key = runs.run_key(moved, job2.checkpoint, job.sigma, job.dataset)
    old = json.loads((out2 / job.run / "run.json").read_text())
    assert _key_diff(old, key) == ["checkpoint.mtime_ns", "checkpoint.path"]  # record only
    assert str(data2) not in json.dumps(key) and str(study.data_root) not in json.dumps(key)


def test_changed_checkpoint_with_its_old_mtime_is_recomputed(evaluated) -> None:
    study, job, first = evaluated
    old_key = json.loads((first["run_dir"] / "run.json").read_text())
    st = job.checkpoint.stat()
    old_sha = file_sha256(job.checkpoint)  # cached in-process under the old file identity
    # Other weights written over the same file (same inode), its old mtime set back.
    other = _checkpoint(job.checkpoint.with_name("other.pt"), seed=2).read_bytes()
    assert len(other) == st.st_size
    with open(job.checkpoint, "r+b") as f:
        f.write(other)
    os.utime(job.checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = job.checkpoint.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert file_sha256(job.checkpoint) != old_sha
    again = runs.evaluate(study, job)
    assert not again["cached"], "a rewritten checkpoint with its old size and mtime was reused"
    new_key = json.loads((again["run_dir"] / "run.json").read_text())
    assert _key_diff(old_key, new_key) == ["checkpoint.sha256"]
    assert _j(again) != _j(first)  # the other weights' result, not the stale one


def test_main_checkpoint_of_a_changed_parent_is_retrained(tmp_path, data_root, one_thread) -> None:
    base = {"data_root": str(data_root), "out_dir": str(tmp_path / "out"), "progress": False,
            "threads": 1, "pretrain.iterations": 1, "main.iterations": 1, "main.snapshots": []}
    s1 = session.open_study("test", base)
    main = training._trained(s1, "main", True, force=False)
    parent = s1.checkpoints / "pretrain.pt"
    assert load_checkpoint(main)["spec"]["init"] == {"sha256": file_sha256(parent)}
    old_main = file_sha256(main)
    # `--force --only 01_pretrain_static` with a new pretrain.iterations ...
    s2 = session.open_study("test", {**base, "pretrain.iterations": 2})
    training._train_job(session.open_study("test", {**base, "pretrain.iterations": 2,
                                                    "force": True}), "pretrain", True)
    assert load_checkpoint(parent)["spec"]["iterations"] == 2
    # ... then the command line without --force refuses the stale main run, naming it and why,
    with pytest.raises(ValueError, match=r"main_from_pretrain\.pt.*\(init\).*--force"):
        train_stage(s2.profile, "main", s2.checkpoints, data_root=s2.data_root, init=parent,
                    progress=False)
    assert file_sha256(main) == old_main
    # ... and the study (`--only 02_train_video 03_evaluate`) retrains it from the new parent.
    assert training.parent_changed(s2, True, parent)
    assert training._trained(s2, "main", True, force=False) == main
    assert file_sha256(main) != old_main
    assert load_checkpoint(main)["spec"]["init"] == {"sha256": file_sha256(parent)}
    assert not training.parent_changed(s2, True, parent)
    assert "2+1 it" in runs.protocol(s2, "main")  # the "static + video" rows' label
    mtime = main.stat().st_mtime_ns
    assert training._trained(s2, "main", True, force=False) == main  # now reused
    assert main.stat().st_mtime_ns == mtime
    # Another changed main setting is still refused (only a new parent retrains by itself).
    s3 = session.open_study("test", {**base, "pretrain.iterations": 2, "main.iterations": 2})
    with pytest.raises(ValueError, match=r"main_from_pretrain\.pt.*iterations.*--force"):
        training._trained(s3, "main", True, force=False)
    assert main.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("through", ["link", "target"])
def test_out_dir_in_symlinked_data_is_refused_before_writing(tmp_path, davis_root, capsys,
                                                             through) -> None:
    shared = copy_davis(davis_root, tmp_path / "shared" / "DAVIS-2016", [SEQ], 2)
    data = tmp_path / "data"  # as `make data` lays it out: data/DAVIS-2016 → shared copy
    data.mkdir()
    (data / "DAVIS-2016").symlink_to(shared)
    gt = (data if through == "link" else shared.parent) / "DAVIS-2016" / "Annotations" / "480p"
    before = _tree_digest(shared, data)
    rc = runner.main(["--profile", "test", "--out-dir", str(gt / SEQ), "--params-json",
                      json.dumps({"data_root": str(data)})])
    assert rc == 2
    err = capsys.readouterr().err
    assert "inside the data root" in err and str(data / "DAVIS-2016") in err, err
    assert _tree_digest(shared, data) == before  # nothing written into the ground truth
    with pytest.raises(ValueError, match=r"lies inside the data root .*through .*DAVIS-2016"):
        session.resolve_study("test", {"data_root": str(data), "out_dir": str(gt / "new")})
    assert not (gt / "new").exists()


def _sets(cache: Path) -> dict[Path, list[str]]:
    return {p: DAVISDataset(p, "2016", "val", "480p").names
            for p in sorted((cache / derived.TWIN).iterdir()) if not p.name.startswith(".")}


def test_derived_sets_of_two_data_roots_coexist(tmp_path, davis_root) -> None:
    cache = tmp_path / "cache"
    a = copy_davis(davis_root, tmp_path / "a" / "DAVIS-2016", [SEQ, "car-shadow"], 2)
    b = copy_davis(davis_root, tmp_path / "b" / "DAVIS-2016", [SEQ], 2)
    twin_a = derived.build_twin_set(a, cache)
    files_a = _tree_digest(twin_a)
    twin_b = derived.build_twin_set(b, cache)
    assert twin_b != twin_a
    assert _sets(cache) == {twin_a: [SEQ, "car-shadow"], twin_b: [SEQ]}
    assert _tree_digest(twin_a) == files_a  # the first root's set is untouched
    # The same content under another root reuses the build; changed content makes a new one.
    a2 = tmp_path / "a2" / "DAVIS-2016"
    shutil.copytree(a, a2, copy_function=shutil.copyfile)
    mtime = (twin_a / "build.json").stat().st_mtime_ns
    assert derived.build_twin_set(a2, cache) == twin_a
    assert (twin_a / "build.json").stat().st_mtime_ns == mtime
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(a2 / "Annotations" / "480p" / SEQ
                                                          / "00001.png")
    assert derived.build_twin_set(a2, cache) not in (twin_a, twin_b)
    assert len(_sets(cache)) == 3 and _tree_digest(twin_a) == files_a


def test_failed_derived_build_keeps_the_old_set(tmp_path, davis_root, monkeypatch) -> None:
    cache = tmp_path / "cache"
    a = copy_davis(davis_root, tmp_path / "a" / "DAVIS-2016", [SEQ, "car-shadow"], 2)
    twin_a = derived.build_twin_set(a, cache)
    before = _tree_digest(cache)
    calls = []

    def broken(frame, gt):
        calls.append(1)
        if len(calls) == 3:  # midway: the first sequence written, the second not
            raise RuntimeError("builder broke midway")
        return derived_twin_frame(frame, gt)

    derived_twin_frame = derived.twin_frame
    monkeypatch.setattr(derived, "twin_frame", broken)
    # A build from changed data fails midway: the existing set stays, no partial folder is left.
    b = tmp_path / "b" / "DAVIS-2016"
    shutil.copytree(a, b)
    (b / "JPEGImages" / "480p" / SEQ / "00001.jpg").write_bytes(
        (a / "JPEGImages" / "480p" / SEQ / "00000.jpg").read_bytes())
    with pytest.raises(RuntimeError, match="builder broke midway"):
        derived.build_twin_set(b, cache)
    assert _tree_digest(cache) == before and _sets(cache) == {twin_a: [SEQ, "car-shadow"]}
    # A stale folder of the same key (its build.json lost) is not deleted by a failing rebuild.
    (twin_a / "build.json").unlink()
    calls.clear()
    with pytest.raises(RuntimeError, match="builder broke midway"):
        derived.build_twin_set(a, cache)
    stale = {k: v for k, v in before.items() if not k.endswith("build.json")}
    assert _tree_digest(cache) == stale
    assert not [p for p in (cache / derived.TWIN).iterdir() if p.name.startswith(".")]
    # Fixed, the rebuild replaces the stale folder with a complete one (the same bytes).
    monkeypatch.setattr(derived, "twin_frame", derived_twin_frame)
    assert derived.build_twin_set(a, cache) == twin_a
    assert _tree_digest(cache) == before
