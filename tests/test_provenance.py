"""kmnlib.provenance: what made a results folder."""
from __future__ import annotations

import json
import subprocess

import pytest

from kmnlib.config import REPO_ROOT
from kmnlib.provenance import read_provenance, write_provenance


def test_provenance_names_the_commit_the_command_and_the_machine(tmp_path):
    path = write_provenance(tmp_path, ["python", "-m", "kmnlib.study", "--seed", "3"])
    record = json.loads(path.read_text())
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert record["commit"] == head and len(head) == 40
    assert record["command"] == ["python", "-m", "kmnlib.study", "--seed", "3"]
    assert record["versions"]["torch"] and record["versions"]["python"]
    assert record["cpu"] and record["threads"] >= 1 and record["date_utc"].endswith("+00:00")
    assert isinstance(record["dirty"], list)
    assert read_provenance(tmp_path) == record


def test_dirty_lists_changed_code_only(tmp_path, monkeypatch):
    import kmnlib.provenance as prov
    calls = []

    def fake_git(*args):
        calls.append(args)
        return "abc" if args[0] == "rev-parse" else " M kmnlib/memory.py\n?? notebooks/x.ipynb"
    monkeypatch.setattr(prov, "_git", fake_git)
    record = json.loads(write_provenance(tmp_path, ["x"]).read_text())
    assert record["dirty"] == ["kmnlib/memory.py", "notebooks/x.ipynb"]
    status = next(a for a in calls if a[0] == "status")
    assert "kmnlib" in status and "notebooks" in status and "README.md" not in status


def test_missing_provenance_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no provenance.json"):
        read_provenance(tmp_path)


def test_the_record_is_the_code_the_run_started_with(tmp_path, monkeypatch):
    import kmnlib.provenance as prov
    head = {"commit": "abc"}
    answers = {"rev-parse": lambda: head["commit"], "status": lambda: "", "diff": lambda: None}
    monkeypatch.setattr(prov, "_git", lambda *a: answers[a[0]]())
    started = prov.provenance(["python", "-m", "kmnlib.study"])
    same = json.loads(write_provenance(tmp_path, started=started).read_text())
    assert same["commit"] == "abc" and "changed_during_run" not in same and same["date_utc_end"]
    head["commit"] = "def"          # a commit made while the run was going; git cannot diff
    moved = json.loads(write_provenance(tmp_path, started=started).read_text())
    assert moved["commit"] == "abc"
    assert moved["changed_during_run"] == {"commit": "def", "code": None}
    assert moved["command"] == ["python", "-m", "kmnlib.study"]


@pytest.mark.parametrize("diff, changed", [("", False), ("kmnlib/memory.py", True)])
def test_a_commit_during_the_run_counts_only_when_it_touched_code(tmp_path, monkeypatch, diff,
                                                                   changed):
    import kmnlib.provenance as prov
    head = {"commit": "abc"}
    calls = []

    def fake_git(*args):
        calls.append(args)
        return {"rev-parse": head["commit"], "status": "", "diff": diff}[args[0]]
    monkeypatch.setattr(prov, "_git", fake_git)
    started = prov.provenance(["python", "-m", "kmnlib.study"])
    head["commit"] = "def"          # e.g. a finished replicate's results committed meanwhile
    record = json.loads(write_provenance(tmp_path, started=started).read_text())
    diff_call = next(a for a in calls if a[0] == "diff")
    assert diff_call[2:4] == ("abc", "def") and "kmnlib" in diff_call and "notebooks" in diff_call
    if changed:
        assert record["changed_during_run"] == {"commit": "def", "code": ["kmnlib/memory.py"]}
    else:
        assert "changed_during_run" not in record and record["commit"] == "abc"
