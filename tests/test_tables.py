"""kmnlib.study.tables / runs: reading evaluation tables, labels and run names."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kmnlib.config import get_profile
from kmnlib.memory import sigma_label
from kmnlib.study import tables
from kmnlib.study.runs import run_name


def test_jf_from_global_reads_official_and_plain_columns() -> None:
    official = pd.DataFrame([{"J&F-Mean": 0.8, "J-Mean": 0.75, "J-Recall": 0.9, "F-Mean": 0.85}])
    assert tables.jf_from_global(official) == pytest.approx({"J&F": 80.0, "J": 75.0, "F": 85.0})
    plain = pd.DataFrame([{"J&F": 61.0, "J": 60.0, "F": 62.0}])
    assert tables.jf_from_global(plain) == {"J&F": 61.0, "J": 60.0, "F": 62.0}
    with pytest.raises(ValueError, match="my.csv: no column for F"):
        tables.jf_from_global(pd.DataFrame([{"J&F": 1, "J": 1}]), source="my.csv")
    with pytest.raises(ValueError, match="one row"):
        tables.jf_from_global(pd.concat([plain, plain]))


def test_inference_label_prefers_infer_height() -> None:
    prof = get_profile("paper")
    assert prof.inference.infer_height is None
    assert prof.inference_label() == prof.inference.davis_resolution == "480p"
    assert prof.with_overrides({"inference.infer_height": 240}).inference_label() == "240p"


def test_run_names_and_sigma_labels() -> None:
    assert run_name("has", 7.0) == "has_sigma7" and run_name("has", None) == "has_stm"
    assert run_name("nohas", 2.5) == "nohas_sigma2.5"
    assert sigma_label(None) == "STM read (σ=∞)" and sigma_label(7.0) == "σ=7"


def _replicate(folder: Path, profile: dict | None, *, commit: str | None = "new",
               dirty: list | None = None, changed: dict | None = None) -> Path:
    """A results folder as a finished study leaves it: profile.json and provenance.json."""
    import json

    folder.mkdir()
    if profile is not None:
        (folder / "profile.json").write_text(json.dumps(profile))
    if commit is not None:
        record = {"commit": commit, "dirty": dirty or [],
                  **({"changed_during_run": changed} if changed else {})}
        (folder / "provenance.json").write_text(json.dumps(record))
    return folder


def test_a_replicate_that_cannot_be_pooled_stops_pooling_naming_it(tmp_path, monkeypatch) -> None:
    import shutil
    from types import SimpleNamespace

    from kmnlib.study.tables import replicate_dirs

    # git, as the checkout would answer: commit "new" holds this code, "old" other code.
    monkeypatch.setattr(tables, "code_changed_since",
                        lambda c: {"new": [], "old": ["kmnlib/memory.py"]}.get(c))
    prof = {"seed": 0, "main": {"iterations": 700}, "inference": {"read_backend": "native"}}
    mine = _replicate(tmp_path / "mini", prof)
    study = SimpleNamespace(out_dir=mine, profile=SimpleNamespace(name="mini"))
    same = _replicate(tmp_path / "mini-seed1", {**prof, "seed": 1})
    _replicate(tmp_path / "mini-seedless", None)                       # not a replicate's name
    assert replicate_dirs(study) == [mine, same]
    cases = [({**prof, "seed": 2, "inference": {}}, {},
              "differs beyond the seed in inference.read_backend"),
             (None, {}, "has no profile.json"),
             ({**prof, "seed": 2}, {"commit": None}, "has no provenance.json"),
             ({**prof, "seed": 2}, {"dirty": ["kmnlib/memory.py"]},
              r"was made from uncommitted code \(kmnlib/memory.py\)"),
             ({**prof, "seed": 2}, {"changed": {"commit": "newer"}},
              r"its code changed while it ran"),
             ({**prof, "seed": 2}, {"commit": "old"},
              r"was made by other code: 1 file\(s\) .* \(e.g. kmnlib/memory.py\)")]
    for profile, extra, why in cases:
        bad = _replicate(tmp_path / "mini-seed2", profile, **extra)
        with pytest.raises(ValueError, match=rf"replicate {bad}: {why}.*--seed 2 --out-dir {bad}"):
            replicate_dirs(study)
        shutil.rmtree(bad)
    assert replicate_dirs(study) == [mine, same]


def test_code_changed_since_asks_git() -> None:
    import subprocess

    from kmnlib.config import REPO_ROOT
    from kmnlib.provenance import code_changed_since

    first = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-list", "--max-parents=0", "HEAD"],
                           capture_output=True, text=True).stdout.split()
    if not first:
        pytest.skip("not a git checkout")
    assert "kmnlib/memory.py" in code_changed_since(first[-1])   # written after the first commit
    assert code_changed_since("0" * 40) is None                   # a commit git does not know


def test_pooling_refuses_a_replicate_missing_the_table(tmp_path) -> None:
    from types import SimpleNamespace

    import pandas as pd

    from kmnlib.study.tables import pooled_per_sequence

    prof = {"seed": 0}
    mine = _replicate(tmp_path / "mini", prof)
    other = _replicate(tmp_path / "mini-seed1", {"seed": 1})
    for d, seed in ((mine, 0), (other, 1)):
        (d / "tables").mkdir()
        pd.DataFrame({"seed": [seed], "J&F": [50.0 + seed]}).to_csv(d / "tables" / "t.csv",
                                                                     index=False)
    study = SimpleNamespace(out_dir=mine, profile=SimpleNamespace(name="mini"))
    assert list(pooled_per_sequence(study, "t.csv")["seed"]) == [0, 1]
    (other / "tables" / "t.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"mini-seed1/tables/t.csv: table missing"):
        pooled_per_sequence(study, "t.csv")


def test_sequence_differences_pair_seed_and_sequence() -> None:
    from kmnlib.study.tables import Comparison, sequence_differences

    rows = [{"seed": s, "sequence": q, "pretraining": arm, "sigma": float("nan"), "J&F": v}
            for s, q, arm, v in [(0, "a", "HaS", 60.0), (0, "a", "no HaS", 55.0),
                                 (1, "a", "HaS", 58.0), (1, "a", "no HaS", 59.0),
                                 (0, "b", "HaS", 40.0)]]           # b has no partner: left out
    c = Comparison("HaS − no HaS", "s", "STM read", {"pretraining": "HaS", "sigma": None},
                   {"pretraining": "no HaS", "sigma": None})
    got = sequence_differences(pd.DataFrame(rows), c).sort_values("seed")
    assert got[["seed", "sequence", "diff"]].values.tolist() == [[0, "a", 5.0], [1, "a", -1.0]]


def test_training_lines_say_iterations_loss_and_time() -> None:
    from kmnlib.study.tables import training_lines

    summary = pd.DataFrame([{"run": "HaS", "iterations": 500, "wall_s": 766.6, "first_loss": 2.2756,
                             "final_loss": 0.4103, "clips_per_s": float("nan")}])
    assert training_lines(summary) == ["HaS: 500 iterations, loss 2.276 → 0.410 (means of the first "
                                       "and last tenth), wall 767 s, — clips/s"]
