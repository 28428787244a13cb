"""The scale axis: the trend fit on data with a known slope, the read-scale measures on
constructed logits, the checkpoints along training, and notebook 08's table on the smoke study."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kmnlib.analysis.leak import margin_over_penalty, read_scale
from kmnlib.analysis.trend import fit_trend
from kmnlib.study import scale, session


def test_trend_recovers_a_known_slope_and_its_prediction():
    rng = np.random.default_rng(0)
    x = np.linspace(40, 65, 30)
    y = 3.0 + 0.5 * x + rng.normal(0, 0.5, x.size)
    fit = fit_trend(x, y, at=(81.0, 88.0))
    assert fit.slope_ci[0] < 0.5 < fit.slope_ci[1] and fit.slope_sign_known
    assert abs(fit.slope - 0.5) < 0.05 and fit.r2 > 0.95 and fit.n == 30
    far = fit.predictions[1]
    assert far.pi[0] < 3.0 + 0.5 * 88 < far.pi[1]
    assert far.pi[1] - far.pi[0] > far.ci[1] - far.ci[0] > 0   # a new point varies more
    assert fit.extrapolation == pytest.approx(88 - 65)


def test_trend_without_a_slope_says_so_and_needs_three_points():
    rng = np.random.default_rng(1)
    x = np.linspace(40, 65, 30)
    fit = fit_trend(x, 7.0 + rng.normal(0, 1.0, x.size))
    assert fit.slope_ci[0] < 0 < fit.slope_ci[1] and not fit.slope_sign_known
    with pytest.raises(ValueError, match=">= 3 points"):
        fit_trend([1.0, 2.0, math.nan, 3.0], [1.0, 2.0, 3.0, math.nan])
    with pytest.raises(ValueError, match="distinct x"):
        fit_trend([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])


def test_margin_over_penalty_on_constructed_logits():
    # Query grid 1 x 5 (cells 0..4); memory: 3 cells, cell 0 and 1 object, cell 2 not.
    c = torch.full((3, 5), -10.0)
    c[0, 0] = 9.0     # object cell 0 matches query cell 0 best: q̂(0) = 0
    c[0, 3] = 5.0     # ... and query cell 3 with 5.0
    c[2, 3] = 3.0     # the non-object cell reaches query cell 3 with 3.0
    c[1, 4] = 8.0     # object cell 1: q̂(1) = 4, and it is query cell 4's best
    obj = torch.tensor([True, True, False])
    cells = torch.tensor([False, False, False, True, True])
    ratio = margin_over_penalty(c, obj, cells, query_width=5, sigma=1.0)
    # cell 3: margin 5 − 3 = 2, p* = 0, q̂ = 0 at distance 3 → penalty 9/2 → ratio 4/9.
    # cell 4: p* = 1 with q̂ = 4 itself: no penalty → inf.
    assert ratio.tolist() == pytest.approx([2.0 / 4.5, math.inf])
    c[2, 3] = 6.0     # now the non-object cell wins at cell 3: no margin there, left out
    assert margin_over_penalty(c, obj, cells, 5, 1.0).tolist() == [math.inf]


def test_read_scale_measures_the_logits():
    torch.manual_seed(0)
    mk, qk = torch.randn(16, 2, 3, 4), torch.randn(16, 3, 4)
    got = read_scale(mk, qk)
    c = torch.einsum("cp,cq->pq", mk.reshape(16, -1).double(), qk.reshape(16, -1).double()) / 4.0
    top = c.topk(2, dim=0).values
    assert got["logit_std"] == pytest.approx(float(c.std(unbiased=False)), rel=1e-5)
    assert got["top_gap"] == pytest.approx(float((top[0] - top[1]).median()), rel=1e-5)


def test_scale_subset_is_fixed_and_a_smoke_study_keeps_its_own(tmp_path, data_root):
    full = session.resolve_study("test", {"data_root": str(data_root), "out_dir": str(tmp_path)})
    names = scale.scale_sequences(full)
    assert names[0] == "blackswan" and len(names) == 5 and list(names) == sorted(names)
    smoke = session.resolve_study("test", {"data_root": str(data_root), "out_dir": str(tmp_path),
                                           "sequences": ["dog"]})
    assert scale.scale_sequences(smoke) == ("dog",)
    assert scale.subset_study(smoke).out_dir == tmp_path / "scale"


def test_trend_sentences_name_an_impossible_extrapolation():
    table = pd.DataFrame({"J&F": [40.0, 45.0, 50.0, 55.0], "leakage": [10.0, 30.0, 50.0, 70.0],
                          "km_minus_stm": [0.1, -0.1, 0.2, 0.0]})
    text = " ".join(scale.trend_sentences(scale.trends(table)))
    assert "leakage rises with J&F" in text and "cannot hold there" in text
    assert "km_minus_stm has no direction the data can tell" in text


def test_the_long_run_command_writes_its_tables_and_their_provenance(tmp_path, monkeypatch,
                                                                      capsys):
    import json
    from types import SimpleNamespace

    from kmnlib.study import long_run
    long = SimpleNamespace(out_dir=tmp_path)
    val = pd.DataFrame({"read": ["STM read"], "J&F": [61.1]})
    points = pd.DataFrame({"iterations": [1200, 4800], "J&F": [43.8, 67.5]})
    monkeypatch.setattr(long_run, "resolve_study", lambda profile, overrides: "base")
    monkeypatch.setattr(scale, "long_run_study", lambda base: long)
    monkeypatch.setattr(scale, "long_run_val", lambda study: val)
    monkeypatch.setattr(scale, "long_run_points", lambda study: ["it1200", "it4800"])
    monkeypatch.setattr(scale, "measure", lambda study, pts: points)
    assert long_run.main([]) == 0
    assert pd.read_csv(tmp_path / "tables" / "long_run_val.csv")["J&F"].tolist() == [61.1]
    assert pd.read_csv(tmp_path / "tables" / "scale_points.csv")["iterations"].tolist() == [1200, 4800]
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert len(record["commit"]) == 40 and record["date_utc_end"]
    assert "written:" in capsys.readouterr().out
