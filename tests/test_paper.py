"""kmnlib.study.paper: the paper's numbers as published, and paper-beside-ours tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kmnlib.study import paper


def _row(df: pd.DataFrame, **match) -> pd.Series:
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, match
    return sel.iloc[0]


def test_table1_numbers_as_published() -> None:
    t1 = paper.paper_table1()
    expected = {
        ("KMN", "static images only"): ((74.8, 74.7, 74.8), (68.9, 67.1, 70.8)),
        ("KMN", "static + DAVIS"): ((87.6, 87.1, 88.1), (76.0, 74.2, 77.8)),
        ("STM", "static + DAVIS"): ((86.5, 84.8, 88.1), (71.6, 69.2, 74.0)),
        ("KMN", "static + DAVIS + YouTube-VOS"): ((90.5, 89.5, 91.5), (82.8, 80.0, 85.6)),
        ("STM", "static + DAVIS + YouTube-VOS"): ((89.3, 88.7, 89.9), (81.8, 79.2, 84.3)),
    }
    assert len(t1) == 2 * len(expected)
    for (method, data), (d16, d17) in expected.items():
        for dataset, vals in (("DAVIS16 val", d16), ("DAVIS17 val", d17)):
            r = _row(t1, method=method, training_data=data, dataset=dataset)
            assert (r["J&F"], r["J"], r["F"]) == vals
    assert paper.RUNTIME_S_PER_FRAME == {"KMN": 0.12, "STM": 0.16}
    assert set(t1["s/frame"]) == {0.12, 0.16}


def test_table2_and_table3_numbers_as_published() -> None:
    t2 = paper.paper_table2()
    dev = t2[t2["dataset"] == "DAVIS17 test-dev"].set_index("method")
    assert tuple(dev.loc["KMN", ["J&F", "J", "F"]]) == (77.2, 74.1, 80.3)
    assert tuple(dev.loc["STM", ["J&F", "J", "F"]]) == (72.2, 69.3, 75.2)
    yt = t2[t2["dataset"] == "YouTube-VOS 2018 val"].set_index("method")
    cols = ["overall", "J_seen", "J_unseen", "F_seen", "F_unseen"]
    assert tuple(yt.loc["KMN", cols]) == (81.4, 81.4, 75.3, 85.6, 83.3)
    assert tuple(yt.loc["STM", cols]) == (79.4, 79.7, 72.8, 84.2, 80.9)

    t3 = paper.paper_table3()
    got = {(r.method, r.HaS, r.KM): (r["DAVIS16 J&F"], r["DAVIS17 J&F"], r["YouTube-VOS overall"])
           for _, r in t3.iterrows()}
    assert got == {("KMN", False, False): (81.3, 72.6, 79.0), ("KMN", True, False): (87.1, 75.9, 79.5),
                   ("KMN", False, True): (87.2, 73.5, 81.0), ("KMN", True, True): (87.6, 76.0, 81.4),
                   ("STM", None, None): (86.5, 71.6, 79.4)}


def test_paper_numbers_are_internally_consistent() -> None:
    # J&F is the mean of J and F (rounded to one decimal) wherever all three are given.
    t1, t2 = paper.paper_table1(), paper.paper_table2()
    rows = pd.concat([t1[["J&F", "J", "F"]], t2[["J&F", "J", "F"]].dropna()])
    assert len(rows) == 12
    assert np.all(np.abs(rows["J&F"] - (rows["J"] + rows["F"]) / 2) <= 0.05 + 1e-9)
    # YouTube-VOS overall is the mean of its four parts.
    yt = t2.dropna(subset=["overall"])
    parts = yt[["J_seen", "J_unseen", "F_seen", "F_unseen"]].mean(axis=1)
    assert np.all(np.abs(yt["overall"] - parts) <= 0.05 + 1e-9)
    # Table 3's full model and STM rows repeat Tables 1 and 2.
    t3 = paper.paper_table3()
    full = _row(t3, method="KMN", HaS=True, KM=True)
    stm = t3[t3["method"] == "STM"].iloc[0]
    for r, method in ((full, "KMN"), (stm, "STM")):
        for dataset, col in (("DAVIS16 val", "DAVIS16 J&F"), ("DAVIS17 val", "DAVIS17 J&F")):
            assert r[col] == _row(t1, method=method, training_data="static + DAVIS",
                                  dataset=dataset)["J&F"]
        assert r["YouTube-VOS overall"] == yt.set_index("method").loc[method, "overall"]


def test_side_by_side_labels_every_row() -> None:
    label = "ours (mini): efficientnet_lite0, 192² crops, 240p, static → DAVIS-2016 train"
    ours = pd.DataFrame([{"method": "KMN", "training_data": "static → DAVIS-2016 train",
                          "dataset": "DAVIS16 val", "J&F": 55.5, "J": 54.0, "F": 57.0,
                          "s/frame": 0.3, "protocol": label}])
    table = paper.side_by_side(paper.paper_table1(), ours)
    assert len(table) == len(paper.TABLE1) + 1
    assert list(table["source"]).count("ours") == 1
    assert table["protocol"].notna().all()
    last = table.iloc[-1]
    assert (last["source"], last["J&F"], last["protocol"]) == ("ours", 55.5, label)
    assert (table.iloc[0]["source"], table.iloc[0]["protocol"]) == (paper.PAPER,
                                                                    paper.PAPER_PROTOCOL)
    with pytest.raises(ValueError, match="protocol"):
        paper.side_by_side(paper.paper_table1(), ours.drop(columns="protocol"))
    with pytest.raises(ValueError, match="protocol"):
        paper.side_by_side(paper.paper_table1(), ours.assign(protocol=""))


def _effect(comparison: str, read: str, seeds: str, **numbers: float) -> dict:
    base = {"comparison": comparison, "stage": "static + video", "read": read, "seeds": seeds,
            "mean_diff": 0.1, "ci_low": -0.2, "ci_high": 0.4, "mde80": 0.5,
            "seed_ci_low": -1.0, "seed_ci_high": 1.2, "seed_mde80": 2.0}
    return {**base, **numbers}


def test_claims_table_reads_the_seed_level_interval_and_says_when_it_cannot() -> None:
    from kmnlib.config import get_profile

    mini = get_profile("mini")
    effects = pd.DataFrame([
        _effect("KM − STM read, HaS model", "KM σ=3.5 vs STM", "0 1 2"),
        _effect("KM − STM read, no HaS model", "KM σ=3.5 vs STM", "0", seed_ci_low=float("nan"),
                seed_ci_high=float("nan")),
        _effect("HaS − no HaS", "STM read", "0 1 2", mean_diff=-1.0),
        _effect("HaS − no HaS", "KM σ=7", "0 1 2")])       # not the profile's σ: no match
    claims = paper.claims_table(effects, mini).set_index("claim")
    assert list(claims.index) == list(paper.table3_effects()["comparison"])
    assert claims["paper Δ"].tolist() == [0.5, 5.9, 5.8, 0.4]
    has_km = claims.loc["KM − STM read, HaS model"]
    assert (has_km["ours Δ low"], has_km["ours Δ high"], has_km["smallest detectable Δ"]) == \
        (-1.0, 1.2, 2.0) and has_km["interval"].startswith("seed-level")
    one_seed = claims.loc["KM − STM read, no HaS model"]
    assert (one_seed["ours Δ low"], one_seed["ours Δ high"]) == (-0.2, 0.4)
    assert "one seed" in one_seed["interval"]
    assert claims.loc["HaS − no HaS, STM read", "ours Δ"] == -1.0
    assert pd.isna(claims.loc["HaS − no HaS, KM read", "ours Δ"])
    assert "efficientnet_lite0" in has_km["protocol difference"]
    assert "resnet50" in has_km["protocol difference"] and "240p" in has_km["protocol difference"]


def test_headline_sigma_is_said_in_the_papers_terms() -> None:
    from kmnlib.config import get_profile

    assert paper.headline_sigma_label(get_profile("mini")) == \
        "σ = 3.5 (paper's 7 at our 1/2 inference resolution)"
    assert "the paper's" in paper.headline_sigma_label(get_profile("paper"))


def test_runtime_is_labelled_by_its_hardware() -> None:
    ours = pd.DataFrame([{"method": "ours", "J&F": 50.0, "s/frame": 0.1, "protocol": "x"}])
    t1 = paper.runtime_labelled(paper.side_by_side(paper.paper_table1(), ours), "CPU (test)")
    labels = t1.set_index("source")["s/frame measured on"]
    assert set(labels[paper.PAPER]) == {paper.RUNTIME_GPU} and labels["ours"] == "CPU (test)"
    assert list(t1.columns).index("s/frame measured on") == list(t1.columns).index("s/frame") + 1
