"""Hardening of the command lines, round 2: settings checked before any work, checkpoints checked
on load, Ctrl-C and concurrent runs.

Each case asserts the exit status (or the exception), that the one-line message names the culprit
(setting, value, file), and that nothing outside the command's output folder changed: small trees
are hashed (sha256) before and after, the data root (about 200 MB) by size and mtime of every file.
The Ctrl-C cases run the real command in a subprocess on the ``test`` profile's tiny sizes, send
SIGINT to its process group (as a terminal's Ctrl-C does) once it is working, and then re-run it to
see it resume and finish.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from kmnlib import train
from kmnlib.checkpoints import load_checkpoint, load_model, save_checkpoint
from kmnlib.cli import INTERRUPTED, INTERRUPTED_STATUS
from kmnlib.config import MAX_SEED, MINI, REPO_ROOT, TEST
from kmnlib.model.backbones import RESNET50_ENV
from kmnlib.study import runner, session
from kmnlib.training import train_stage

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


# ----------------------------------------------------------------------------------------- helpers
def _digest(*roots: Path, content: bool = True) -> dict[str, object]:
    """Every file under ``roots``: its sha256 (``content``) or its (size, mtime_ns)."""
    out: dict[str, object] = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest() if content
                               else (st.st_size, st.st_mtime_ns))
    return out


class Unchanged:
    """``with Unchanged(a, b, data=root):`` no file under a, b (hashed) or ``data`` (size and
    mtime) was added, removed or changed."""

    def __init__(self, *roots: Path, data: Path | None = None) -> None:
        self.roots, self.data = roots, data

    def _now(self) -> tuple[dict, dict]:
        return _digest(*self.roots), _digest(self.data, content=False) if self.data else {}

    def __enter__(self) -> "Unchanged":
        self.before = self._now()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            assert self._now() == self.before, "a file outside the output folder changed"


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def earlier_study(tmp_path) -> Path:
    """An output folder holding an earlier study's files (which a refused run must not touch)."""
    out = tmp_path / "study"
    (out / "notebooks").mkdir(parents=True)
    (out / "index.html").write_text("<html>earlier</html>")
    (out / "notebooks" / "01_pretrain_static.html").write_text("<html>report</html>")
    return out


def _study(out: Path, data_root: Path, params: dict, *args: str, profile: str = "test") -> int:
    return runner.main(["--profile", profile, "--out-dir", str(out), *args, "--params-json",
                        json.dumps({"data_root": str(data_root), **params})])


# ------------------------------------------------------------- 1. settings checked before any work
STUDY_CASES = [
    ({"sequences": ["bear-typo"]}, (), ("sequences", "'bear-typo'", "val.txt")),
    ({"sequences": ["blackswan", "bmx-tres"]}, (), ("sequences", "did you mean 'bmx-trees'")),
    ({"pretrain.augment.flip_p": 7.5}, (), ("pretrain.augment.flip_p", "7.5", "[0, 1]")),
    ({"main.augment.brightness": -0.5}, (), ("main.augment.brightness", "-0.5", "[0, 1]")),
    ({}, ("--seed", str(MAX_SEED + 1)), ("seed", str(MAX_SEED + 1), str(MAX_SEED))),
    ({"inference.davis_resolution": "240p"}, (),
     ("inference.davis_resolution '240p'", "240p/blackswan is missing", "'480p'")),
    ({"device": "gpu"}, (), ("device 'gpu'", "'cpu'")),
    ({"model.weights": "/nonexistent/lite0.pth"}, (),
     ("model.weights /nonexistent/lite0.pth", "not found")),
    ({"static_sets": ["MSRA10K"]}, (), ("static_sets", "'MSRA10K'", "weizmann-horse")),
    ({"video_sets": ["DAVIS-2017:train"]}, (), ("video_sets", "'DAVIS-2017:train'", "missing")),
    ({"main.video_resolution": "480p"}, (), ("video_sets", "main.video_resolution is '480p'")),
]


@pytest.mark.parametrize("params,args,needles", STUDY_CASES,
                         ids=[next(iter(c[0]), " ".join(c[1])) for c in STUDY_CASES])
def test_study_settings_are_refused_before_any_work(capsys, earlier_study, data_root, params,
                                                     args, needles) -> None:
    with Unchanged(earlier_study, data=data_root):
        assert _study(earlier_study, data_root, params, *args) == 2
    _one_line(capsys, *needles)


def test_study_cuda_without_cuda_is_refused(capsys, tmp_path, data_root) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    with Unchanged(tmp_path, data=data_root):
        assert _study(out, data_root, {"device": "cuda"}) == 2
    _one_line(capsys, "device 'cuda'", "CUDA is not available", "'cpu'")
    assert not out.exists()


def test_paper_profile_without_its_data_is_refused(capsys, tmp_path, data_root,
                                                   monkeypatch) -> None:
    monkeypatch.delenv(RESNET50_ENV, raising=False)
    out = tmp_path / "out"
    with Unchanged(tmp_path, data=data_root):
        assert _study(out, data_root, {}, profile="paper") == 2
        _one_line(capsys, "eval_sets", "'DAVIS-2017:val'", "'YouTube-VOS:valid'")
        only16 = {"eval_sets": ["DAVIS-2016:val"]}
        assert _study(out, data_root, only16, profile="paper") == 2
        _one_line(capsys, "static_sets", "'MSRA10K'", "'COCO'", "data/README.md")
        here = {**only16, "static_sets": ["weizmann-horse"]}
        assert _study(out, data_root, here, profile="paper") == 2
        _one_line(capsys, "video_sets", "'DAVIS-2017:train'")
        assert _study(out, data_root, {**here, "video_sets": ["DAVIS-2016:train"],
                                       "main.video_resolution": "240p"}, profile="paper") == 2
        _one_line(capsys, "model.weights", "resnet50-0676ba61.pth", RESNET50_ENV)
    assert not out.exists()


def test_open_study_refuses_a_bad_sequence_before_writing(tmp_path, data_root) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"sequences: \['bear-typo'\]"):
        session.open_study("test", {"data_root": str(data_root), "out_dir": str(out),
                                    "sequences": ["bear-typo"]})
    assert not out.exists()


# Every AugmentConfig range (kmnlib.synthesis): an out-of-range value of each is refused by name.
BAD_AUGMENT = {"rotation_deg": -1.0, "scale_range": [1.2, 0.8], "shear_deg": 90.0, "flip_p": 7.5,
               "crop_area": [0.5, 1.5], "crop_aspect": [0.0, 1.0], "brightness": -0.5,
               "contrast": 1.5, "saturation": float("nan"), "hue": 0.7,
               "video_rotation_jitter_deg": 200.0, "video_scale_jitter": 1.0,
               "video_shift_jitter": -0.1, "min_object_fraction": 2.0, "crop_tries": 0,
               "hide_tries": 0, "clip_tries": 0}


def test_every_augment_setting_is_range_checked() -> None:
    aug_fields = set(MINI.pretrain.augment.__dataclass_fields__)
    assert aug_fields == set(BAD_AUGMENT), "a new AugmentConfig field: add a bad value here"
    for stage in ("pretrain", "main"):
        for name, value in BAD_AUGMENT.items():
            with pytest.raises(ValueError, match=rf"{stage}\.augment\.{name} must"):
                MINI.with_overrides({f"{stage}.augment.{name}": value})
    assert MINI.validate() and TEST.validate()


def test_seed_range_in_validate_and_the_train_command(capsys, tmp_path, data_root) -> None:
    assert MINI.with_overrides({"seed": MAX_SEED}).seed == MAX_SEED
    with pytest.raises(ValueError, match=f"seed must lie in \\[0, {MAX_SEED}\\]"):
        MINI.with_overrides({"seed": MAX_SEED + 1})
    out = tmp_path / "ckpt"
    with Unchanged(tmp_path, data=data_root):
        assert train.main(["--profile", "test", "--stage", "pretrain", "--seed", str(2**40),
                           "--out", str(out), "--data-root", str(data_root), "--quiet"]) == 1
    _one_line(capsys, "seed", str(2**40))
    assert not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["--device", "cuda"], ("--device 'cuda'",)),
    (["--profile", "paper"], ("model.weights", RESNET50_ENV)),
], ids=["cuda", "resnet50-weights"])
def test_train_settings_are_refused_before_any_work(capsys, tmp_path, data_root, monkeypatch,
                                                    args, needles) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv(RESNET50_ENV, raising=False)
    out = tmp_path / "ckpt"
    argv = ["--profile", "test", "--stage", "pretrain", "--out", str(out), "--data-root",
            str(data_root), "--quiet", *args]
    with Unchanged(tmp_path, data=data_root):
        assert train.main(argv) == 1
    _one_line(capsys, *needles)
    assert not out.exists()


# -------------------------------------------------------------------------------- 2. checkpoints
class _Kill(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root) -> Path:
    """``finished/pretrain.pt`` (2 iterations) and ``unfinished/pretrain.last.pt`` (step 2 of 4,
    killed at step 3)."""
    root = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    prof = TEST.with_overrides({"pretrain.iterations": 2})
    train_stage(prof, "pretrain", root / "finished", data_root=data_root, progress=False)

    def kill(done, model, losses) -> None:
        if done == 3:
            raise _Kill

    with pytest.raises(_Kill):
        train_stage(TEST, "pretrain", root / "unfinished", data_root=data_root, progress=False,
                    callback=kill)
    return root


def _train_main(init: Path, out: Path, data_root: Path, *extra: str) -> int:
    return train.main(["--profile", "test", "--stage", "main", "--init", str(init), "--out",
                       str(out), "--data-root", str(data_root), "--quiet", *extra])


def test_init_from_an_unfinished_run_is_refused(capsys, runs, tmp_path, data_root) -> None:
    last = runs / "unfinished" / "pretrain.last.pt"
    assert load_checkpoint(last)["finished"] is False
    out = tmp_path / "o"
    with Unchanged(runs, tmp_path, data=data_root):
        assert _train_main(last, out, data_root) == 1
    _one_line(capsys, "--init", str(last), "unfinished run (step 2 of 4)", "<name>.pt")
    assert not out.exists()


def test_init_a_directory_is_named_as_such(capsys, runs, tmp_path, data_root) -> None:
    out = tmp_path / "o"
    with Unchanged(runs, tmp_path, data=data_root):
        assert _train_main(runs / "finished", out, data_root) == 1
    _one_line(capsys, "--init", str(runs / "finished"),
              "is a directory, expected a checkpoint file")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(runs / "finished")
    assert not out.exists()


def test_a_checkpoint_with_nan_weights_is_refused(capsys, runs, tmp_path, data_root) -> None:
    state = load_checkpoint(runs / "finished" / "pretrain.pt")
    name = list(state["model"])[3]
    state["model"][name] = state["model"][name].clone().fill_(float("nan"))
    bad = save_checkpoint(tmp_path / "nan" / "pretrain.pt", state)
    out = tmp_path / "o"
    with Unchanged(runs, tmp_path, data=data_root):
        for load in (load_checkpoint, load_model):
            with pytest.raises(ValueError, match=f"{bad}: weight tensor '{name}' holds NaN"):
                load(bad)
        assert _train_main(bad, out, data_root) == 1
    _one_line(capsys, str(bad), repr(name), "NaN")
    assert not out.exists()


def test_params_json_file_that_does_not_exist_is_not_found(capsys, earlier_study, data_root,
                                                           tmp_path) -> None:
    missing = tmp_path / "params.json"
    with Unchanged(earlier_study, data=data_root):
        assert runner.main(["--profile", "test", "--out-dir", str(earlier_study),
                            "--params-json", str(missing)]) == 2
    _one_line(capsys, "--params-json", str(missing), "file not found")
    assert runner.parse_overrides(json.dumps({"seed": 1})) == {"seed": 1}
    missing.write_text(json.dumps({"seed": 2}))
    assert runner.parse_overrides(str(missing)) == {"seed": 2}


@pytest.mark.parametrize("name", ["../x", "/tmp/kmn-abs-name", "a/b", "..", ""])
def test_a_run_name_cannot_leave_the_output_folder(capsys, tmp_path, data_root, name) -> None:
    out = tmp_path / "box" / "ckpt"
    with Unchanged(tmp_path, data=data_root):
        assert train.main(["--profile", "test", "--stage", "pretrain", "--iterations", "1",
                           "--out", str(out), "--data-root", str(data_root), "--quiet",
                           "--name", name]) == 1
    _one_line(capsys, f"--name {name!r}", "path separators")
    assert not out.exists() and not Path("/tmp/kmn-abs-name.pt").exists()


# --------------------------------------------------------- 3. Ctrl-C, concurrent runs, leftovers
def _interrupt_when(cmd: list[str], ready, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a session of its own; once ``ready()`` holds, SIGINT its process group (what
    a terminal's Ctrl-C does); return the finished process (stdout, stderr as text)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=REPO_ROOT, start_new_session=True)
    t0 = time.monotonic()
    try:
        while not ready():
            assert proc.poll() is None, f"ended before it was interrupted: {proc.communicate()}"
            assert time.monotonic() - t0 < timeout, "never got going"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_interrupted(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == INTERRUPTED_STATUS, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [ln.split("\r")[-1] for ln in done.stderr.splitlines() if ln.split("\r")[-1].strip()]
    assert lines and lines[-1] == INTERRUPTED, done.stderr[-3000:]


def _rows(csv: Path, n: int) -> list[list[str]]:
    return [ln.split(",") for ln in csv.read_text().splitlines()[1:n + 1]]


@pytest.mark.slow
def test_ctrl_c_during_training_then_resume(tmp_path, data_root) -> None:
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "kmnlib.train", "--profile", "test", "--stage", "pretrain",
           "--iterations", "40", "--out", str(out), "--data-root", str(data_root), "--quiet",
           "--threads", "1"]
    with Unchanged(data=data_root):
        done = _interrupt_when(cmd, lambda: (out / "pretrain.last.pt").is_file())
    _assert_interrupted(done)
    assert done.stderr.strip() == INTERRUPTED            # with --quiet, the only line
    assert not (out / "pretrain.pt").exists()
    step = load_checkpoint(out / "pretrain.last.pt")["step"]
    kept = _rows(out / "pretrain.csv", step)
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO_ROOT,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _rows(out / "pretrain.csv", step) == kept      # resumed: the rows before it are kept
    assert len(pd.read_csv(out / "pretrain.csv")) == 40
    assert load_checkpoint(out / "pretrain.pt")["finished"] is True


@pytest.mark.slow
def test_ctrl_c_during_evaluation_then_rerun(tmp_path, data_root) -> None:
    out = tmp_path / "eval"
    davis = data_root / "DAVIS-2016"
    # The ground truth scored as results: the whole val split, some seconds of work.
    cmd = [sys.executable, "-m", "kmnlib.evaluate", "--davis", str(davis), "--results",
           str(davis / "Annotations" / "480p"), "--out", str(out), "--workers", "2"]
    seen: list[float] = []

    def working() -> bool:
        # The folder is made once the work has begun; a moment later the workers are forked (a
        # SIGINT inside fork's own handlers is swallowed by Python, as with its default handler).
        if out.is_dir() and not seen:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 1.0

    with Unchanged(data=data_root):
        done = _interrupt_when(cmd, working)
        _assert_interrupted(done)
        assert done.stderr.strip() == INTERRUPTED
        rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO_ROOT,
                               timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "global_results.csv").is_file() and (out / "per-sequence_results.csv").is_file()


@pytest.mark.slow
def test_ctrl_c_during_a_study_then_resume(tmp_path, data_root) -> None:
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "kmnlib.study", "--profile", "test", "--only",
           "01_pretrain_static", "--out-dir", str(out), "--threads", "1", "--params-json",
           json.dumps({"data_root": str(data_root), "pretrain.iterations": 24,
                       "train_workers": 1, "sequences": ["car-shadow"]})]
    last = out / "checkpoints" / "pretrain.last.pt"
    with Unchanged(data=data_root):
        done = _interrupt_when(cmd, last.is_file)
    _assert_interrupted(done)
    assert not (out / ".study.lock").exists()
    step = load_checkpoint(last)["step"]
    kept = _rows(out / "checkpoints" / "pretrain.csv", step)
    time.sleep(1.0)   # nothing is left running that still writes (the kernel was killed)
    assert load_checkpoint(last)["step"] == step
    assert not (out / "checkpoints" / "pretrain.pt").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO_ROOT,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _rows(out / "checkpoints" / "pretrain.csv", step) == kept   # resumed
    assert load_checkpoint(out / "checkpoints" / "pretrain.pt")["finished"] is True
    assert (out / "notebooks" / "01_pretrain_static.html").is_file()
    assert not (out / "notebooks" / "01_pretrain_static.failed.ipynb").exists()


def _trivial_notebooks(folder: Path) -> Path:
    folder.mkdir()
    params = new_code_cell('profile = "mini"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell("print('ran')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(folder / "01_pretrain_static.ipynb"))
    return folder


def test_a_second_study_into_the_same_folder_is_refused(capsys, earlier_study, data_root) -> None:
    lock = earlier_study / runner.LOCK_FILE
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")   # a live study: this process
    with Unchanged(earlier_study, data=data_root):
        assert _study(earlier_study, data_root, {}, "--only", "01_pretrain_static") == 2
    _one_line(capsys, f"out_dir {earlier_study}", f"pid {os.getpid()}", "another study")


def test_a_stale_lock_is_taken_over_and_leftovers_cleaned(capsys, earlier_study, data_root,
                                                          tmp_path, monkeypatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = earlier_study / runner.LOCK_FILE
    lock.write_text(f"{dead.pid} {socket.gethostname()}\n")   # a study killed with SIGKILL …
    partial = earlier_study / ".has_stm.partial"               # … in the middle of an evaluation,
    (partial / "masks").mkdir(parents=True)
    (earlier_study / ".nohas_stm.old" / "x.csv").parent.mkdir()  # between a replacement's renames,
    (earlier_study / ".nohas_stm.old" / "x.csv").write_text("kept")
    running = earlier_study / "notebooks" / ".02_train_video.running.ipynb"  # running a notebook
    running.write_text("{}")
    temp = earlier_study / "checkpoints" / ".pretrain.pt.ab12cd_9.tmp"   # and saving a checkpoint
    temp.parent.mkdir()
    temp.write_bytes(b"half")
    keep = earlier_study / "checkpoints" / "pretrain.last.pt"
    keep.write_bytes(b"resume point")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", _trivial_notebooks(tmp_path / "nbs"))
    with Unchanged(data=data_root):
        assert _study(earlier_study, data_root, {}, "--only", "01_pretrain_static") == 0
    assert not lock.exists()                      # taken over, and released at the end
    assert not partial.exists() and not running.exists() and not temp.exists()
    assert (earlier_study / "nohas_stm" / "x.csv").read_text() == "kept"   # renamed back
    assert keep.read_bytes() == b"resume point"
    assert (earlier_study / "notebooks" / "01_pretrain_static.html").is_file()


def test_a_notebook_failure_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    """A full disk (or any error) inside a notebook: the study says what the notebook raised in one
    line (its partial execution is kept as <name>.failed.ipynb), not papermill's cell dump."""
    from papermill.exceptions import PapermillExecutionError

    def failing(*args, **kwargs):
        raise PapermillExecutionError(cell_index=3, exec_count=3, source="save_csv(...)",
                                      ename="OSError", evalue="[Errno 28] No space left on device",
                                      traceback=["Traceback (most recent call last):", "  ..."])
    monkeypatch.setattr(runner, "run_study", failing)
    assert runner.main(["--profile", "test", "--out-dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["[study] FAILED: OSError: [Errno 28] No space left on device"]
