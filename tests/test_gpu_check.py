"""benchmarks/gpu_check.py: its CPU smoke run (what CI can run without a GPU), its guard of the committed
record, and its verdicts and JSON helpers (benchmarks/gpucheck/verdicts.py, report.py)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmnlib.config import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
SUBSET_SCRIPT = REPO_ROOT / "benchmarks" / "gpu_data_subset.py"
SECTIONS = ("device", "train", "inference", "ddp")


def _load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", mod)
    spec.loader.exec_module(mod)
    return mod


check = _load_module()   # the command line; it puts benchmarks/ on sys.path for its package

from gpucheck import report, verdicts  # noqa: E402


def _run(out: Path | None, *extra: str, timeout: int = 300,
         env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CPU smoke run; ``out=None`` leaves ``--out`` to its default."""
    # One torch thread: the CPU is shared (tests/test_train.py measured 10x slower runs with two).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **(env_extra or {}))
    cmd = [sys.executable, str(SCRIPT), "--cpu-smoke", "--threads", "1",
           *(["--out", str(out)] if out is not None else []), *extra]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _numbers(obj):
    """Every number in a JSON document (bools excluded)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def _load_subset_module():
    spec = importlib.util.spec_from_file_location("gpu_data_subset", SUBSET_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


subset_tool = _load_subset_module()


@pytest.fixture(scope="module")
def data_subset(tmp_path_factory, data_root: Path) -> Path:
    """What a device machine receives (benchmarks/gpu_data_subset.py), small: the smoke run reads
    only this, so a subset missing anything the check needs fails every test below."""
    out = tmp_path_factory.mktemp("subset") / "gpudata"
    return subset_tool.build_subset(data_root, out, train_sequences=2, val_frames=4)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_subset: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    res = _run(out, "--data-root", str(data_subset))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res, json.loads(out.read_text())


def test_cpu_smoke_runs_every_section_and_writes_finite_numbers(smoke) -> None:
    res, doc = smoke
    assert "running the same checks on the CPU" in res.stdout     # it says it is not a GPU run
    assert doc["mode"] == "cpu-smoke" and doc["exit_code"] == 0 and doc["aborted"] is None
    assert list(doc["sections"]) == list(SECTIONS)
    for name in SECTIONS:
        sec = doc["sections"][name]
        assert sec["status"] == "PASS", (name, sec)
        rows = [r for r in doc["rows"] if r["section"] == name]
        # WARN only where the check says its verdict is reported, not required (a 4-iteration CPU
        # run's loss need not fall on every data subset).
        assert rows and all(r["status"] in ("PASS", "SKIP")
                            or (r["status"] == "WARN" and "reported only" in r["note"])
                            for r in rows), rows
    assert report.nonfinite_paths(doc) == []
    assert all(math.isfinite(x) for x in _numbers(doc))
    # Only the TF32 comparison is skipped on the CPU; every other check ran.
    skipped = [r["check"] for r in doc["rows"] if r["status"] == "SKIP"]
    assert len(skipped) == 1 and "TF32" in skipped[0], skipped
    # The summary table: one line per check.
    table = res.stdout[res.stdout.index("check "):]
    assert all(r["check"] in table for r in doc["rows"])


def test_cpu_smoke_checks_the_device_paths(smoke) -> None:
    _, doc = smoke
    checks = {r["check"]: r for r in doc["rows"] if r["section"] == "device"}
    reads = [r for c, r in checks.items() if c.startswith("memory_read")]
    assert {("fp16" in r["check"], "bf16" in r["check"]) for r in reads} == {(True, False), (False, True)}
    assert all(r["numbers"]["nonfinite"] == 0 for r in reads)
    exact = [r for r in reads if "keys" not in r["check"]]
    assert all(r["numbers"]["err_over_bound"] <= 1 for r in exact)
    assert any(r["numbers"].get("chunks", 1) > 1 for r in reads)   # the chunked read ran
    seg = [r for c, r in checks.items() if c.startswith("segment_video") and r["status"] == "PASS"]
    assert len(seg) == 2 and all(r["numbers"]["max_abs_prob_diff"] <= 1e-3 for r in seg)
    inf = [r for r in doc["rows"] if r["section"] == "inference"]
    assert len(inf) == 8 and all(r["numbers"]["s_per_frame"] > 0 for r in inf)


def test_cpu_smoke_training_losses_are_finite_and_the_resume_continued(smoke) -> None:
    _, doc = smoke
    train = doc["sections"]["train"]
    for stage in ("pretrain", "main"):
        losses = train[stage]["losses"]
        assert losses and all(isinstance(x, float) and math.isfinite(x) for x in losses), stage
    resume = train["resume"]
    assert resume["problems"] == []
    kill, total = resume["kill_step"], resume["total"]
    assert resume["ckpt_step"] == kill
    assert resume["resumed_steps"] == list(range(kill + 1, total + 1))   # not restarted from 1
    assert resume["log_steps"] == list(range(1, total + 1))
    assert resume["adam_step_final"] == resume["adam_step_ckpt"] + (total - kill)
    assert resume["first_step_change"] <= resume["change_bound"] < resume["ckpt_vs_init"]
    assert all(math.isfinite(x) for x in resume["losses"])
    ddp = doc["sections"]["ddp"]
    assert ddp["returncode"] == 0 and len(ddp["ranks"]) == 2
    assert all(r["backend"] == "gloo" for r in ddp["ranks"].values())


def test_a_resume_that_restarts_is_caught(tmp_path: Path, data_root: Path) -> None:
    """The same run with the trainer told not to resume: the check fails and the exit status says so."""
    out = tmp_path / "broken.json"
    res = _run(out, "--sections", "train", "--break-resume")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert list(doc["sections"]) == ["train"]
    resume = doc["sections"]["train"]["resume"]
    assert resume["resumed_steps"][0] == 1 and resume["problems"]
    row = next(r for r in doc["rows"] if r["check"].startswith("main resume"))
    assert row["status"] == "FAIL"


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_without_out_the_committed_record_is_not_touched(tmp_path: Path, data_subset: Path) -> None:
    """No ``--out``: the JSON goes to the temporary folder, and benchmarks/gpu_check.json (the H200
    record) keeps its bytes. A 1 s watchdog makes the run short; it writes what was done and exits 3."""
    record = REPO_ROOT / "benchmarks" / "gpu_check.json"
    assert check.RECORD == record.resolve()
    assert check.parse_args([]).out == check.default_out() != check.RECORD
    before = _sha256(record)
    res = _run(None, "--sections", "device", "--timeout-s", "1", "--data-root", str(data_subset),
               env_extra={"TMPDIR": str(tmp_path)})
    assert _sha256(record) == before
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    written = tmp_path / "gpu_check.json"
    assert f"wrote {written.resolve()}" in res.stdout
    doc = json.loads(written.read_text())
    assert doc["mode"] == "cpu-smoke" and doc["aborted"].startswith("global timeout")


# --- gpucheck.verdicts -------------------------------------------------------------------------
def _resumed(**changes) -> dict:
    info = {"kill_step": 50, "total": 60, "ckpt_step": 50, "resumed_steps": list(range(51, 61)),
            "log_steps": list(range(1, 61)), "final_step": 60, "final_finished": True,
            "last_left": False, "adam_step_ckpt": 47, "adam_step_final": 57,
            "first_step_change": 1.2e-5, "change_bound": 1.7e-5, "ckpt_vs_init": 4e-4}
    info.update(changes)
    return info


def test_resume_verdict_accepts_a_continued_run_and_names_each_failure() -> None:
    assert verdicts.resume_verdict(_resumed()) == []
    assert verdicts.resume_verdict(_resumed(adam_step_final=55)) == []   # AMP may skip steps
    restarted = _resumed(resumed_steps=list(range(1, 61)), adam_step_final=57 - 47)
    why = " ".join(verdicts.resume_verdict(restarted))
    assert "resumed run did iterations" in why and "optimizer state not continued" in why
    assert "checkpoint left by the kill" in " ".join(verdicts.resume_verdict(_resumed(ckpt_step=40)))
    assert "weights moved" in " ".join(verdicts.resume_verdict(_resumed(first_step_change=4e-4)))
    assert "training log" in " ".join(verdicts.resume_verdict(_resumed(log_steps=[1, 2, 51])))
    assert ".last.pt" in " ".join(verdicts.resume_verdict(_resumed(last_left=True)))
    assert verdicts.resume_verdict(_resumed(first_step_change=float("nan")))   # NaN never passes


def test_adam_bound_holds_for_adversarial_gradients() -> None:
    import torch

    for t in (1, 5, 51):
        bound = verdicts.adam_step_bound(t, 1.0)
        # Gradients of growing size with one sign: the largest update Adam can make at step t.
        g = torch.tensor([0.001 * 1.11 ** i for i in range(t)], dtype=torch.float64)
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([p], lr=1.0, eps=0.0)
        before = 0.0
        for gi in g:
            before = float(p.detach())
            p.grad = gi.view(1)
            opt.step()
        assert abs(float(p.detach()) - before) <= bound * (1 + 1e-9)
    assert 1.0 <= verdicts.adam_step_bound(5, 1.0) < 1.02 and 1.6 < verdicts.adam_step_bound(51, 1.0) < 1.7


def test_loss_trend() -> None:
    assert verdicts.loss_trend([3.0, 2.0, 1.0, 1.0, 0.5])["decreasing"]
    assert not verdicts.loss_trend([1.0, 1.0, 2.0])["decreasing"]
    bad = verdicts.loss_trend([1.0, float("nan"), 0.5])
    assert not bad["finite"] and not bad["decreasing"]


# --- gpucheck.report ---------------------------------------------------------------------------
def test_json_sanitising() -> None:
    doc = report.to_jsonable({"a": float("nan"), "b": [1.0, float("inf")], "c": (1, 2)})
    json.dumps(doc, allow_nan=False)
    assert report.nonfinite_paths(doc) == [".a", ".b[1]"]


# --- benchmarks/gpu_data_subset.py -------------------------------------------------------------


def test_data_subset_holds_what_the_check_reads_and_nothing_a_user_made_is_replaced(
        data_subset: Path, data_root: Path, tmp_path: Path) -> None:
    from kmnlib.data import DAVISDataset
    davis = data_subset / "DAVIS-2016"
    train = DAVISDataset(davis, "2016", "train", "240p")
    assert len(train.names) == 2
    for name in train.names:   # whole sequences, byte-identical to the shared ones
        src = sorted((data_root / "DAVIS-2016" / "JPEGImages" / "240p" / name).iterdir())
        dst = sorted((davis / "JPEGImages" / "240p" / name).iterdir())
        assert [f.name for f in src] == [f.name for f in dst]
        assert src[-1].read_bytes() == dst[-1].read_bytes()
    val = DAVISDataset(davis, "2016", "val", "480p")
    shared_val = DAVISDataset(data_root / "DAVIS-2016", "2016", "val", "480p")
    assert val.names == shared_val.names[:3]            # gpu_check's default: the first 3 of the split
    assert len(val[val.names[0]]) == 4
    assert (data_subset / "SUBSET.md").is_file()
    # The CLI refuses a folder it did not make, and an earlier subset without --force.
    mine = tmp_path / "user_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, str(SUBSET_SCRIPT), "--data-root", str(data_root), "--train-sequences", "1",
           "--val-sequences", "1", "--val-frames", "1"]
    res = subprocess.run([*cmd, "--out", str(mine), "--force"], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "not made by this script" in res.stderr
    assert (mine / "notes.txt").read_text() == "mine"
    res = subprocess.run([*cmd, "--out", str(data_subset)], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "--force" in res.stderr
    res = subprocess.run([*cmd, "--out", str(tmp_path / "new"), "--data-root", str(tmp_path / "nope")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "train.txt: sequence list not found" in res.stderr
    assert not (tmp_path / "new").exists()
