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


def test_replicates_that_differ_are_named_not_dropped_silently(tmp_path, capsys) -> None:
    import json
    from types import SimpleNamespace

    from kmnlib.study.tables import replicate_dirs

    def folder(name: str, profile: dict | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        if profile is not None:
            (d / "profile.json").write_text(json.dumps(profile))
        return d

    mine = folder("mini", {"seed": 0, "main": {"iterations": 700}, "inference": {"read_backend": "native"}})
    same = folder("mini-seed1", {"seed": 1, "main": {"iterations": 700}, "inference": {"read_backend": "native"}})
    other = folder("mini-seed2", {"seed": 2, "main": {"iterations": 700}, "inference": {}})
    folder("mini-seed3", None)
    assert replicate_dirs(SimpleNamespace(out_dir=mine)) == [mine, same]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"[pool] not pooled: {other} differs beyond the seed in inference.read_backend; "
                   f"re-run it with this code to pool it",
                   f"[pool] not pooled: {tmp_path / 'mini-seed3'} has no profile.json"]
