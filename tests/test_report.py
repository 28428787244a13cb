"""kmnlib.report: the paper's numbers, table assembly, and that every plot helper writes a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kmnlib import report
from kmnlib.config import get_profile


def _row(df: pd.DataFrame, **match) -> pd.Series:
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, match
    return sel.iloc[0]


def test_table1_numbers_as_published() -> None:
    t1 = report.paper_table1()
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
    assert report.RUNTIME_S_PER_FRAME == {"KMN": 0.12, "STM": 0.16}
    assert set(t1["s/frame"]) == {0.12, 0.16}


def test_table2_and_table3_numbers_as_published() -> None:
    t2 = report.paper_table2()
    dev = t2[t2["dataset"] == "DAVIS17 test-dev"].set_index("method")
    assert tuple(dev.loc["KMN", ["J&F", "J", "F"]]) == (77.2, 74.1, 80.3)
    assert tuple(dev.loc["STM", ["J&F", "J", "F"]]) == (72.2, 69.3, 75.2)
    yt = t2[t2["dataset"] == "YouTube-VOS 2018 val"].set_index("method")
    cols = ["overall", "J_seen", "J_unseen", "F_seen", "F_unseen"]
    assert tuple(yt.loc["KMN", cols]) == (81.4, 81.4, 75.3, 85.6, 83.3)
    assert tuple(yt.loc["STM", cols]) == (79.4, 79.7, 72.8, 84.2, 80.9)

    t3 = report.paper_table3()
    got = {(r.method, r.HaS, r.KM): (r["DAVIS16 J&F"], r["DAVIS17 J&F"], r["YouTube-VOS overall"])
           for _, r in t3.iterrows()}
    assert got == {("KMN", False, False): (81.3, 72.6, 79.0), ("KMN", True, False): (87.1, 75.9, 79.5),
                   ("KMN", False, True): (87.2, 73.5, 81.0), ("KMN", True, True): (87.6, 76.0, 81.4),
                   ("STM", None, None): (86.5, 71.6, 79.4)}


def test_paper_numbers_are_internally_consistent() -> None:
    # J&F is the mean of J and F (rounded to one decimal) wherever all three are given.
    t1, t2 = report.paper_table1(), report.paper_table2()
    rows = pd.concat([t1[["J&F", "J", "F"]], t2[["J&F", "J", "F"]].dropna()])
    assert len(rows) == 12
    assert np.all(np.abs(rows["J&F"] - (rows["J"] + rows["F"]) / 2) <= 0.05 + 1e-9)
    # YouTube-VOS overall is the mean of its four parts.
    yt = t2.dropna(subset=["overall"])
    parts = yt[["J_seen", "J_unseen", "F_seen", "F_unseen"]].mean(axis=1)
    assert np.all(np.abs(yt["overall"] - parts) <= 0.05 + 1e-9)
    # Table 3's full model and STM rows repeat Tables 1 and 2.
    t3 = report.paper_table3()
    full = _row(t3, method="KMN", HaS=True, KM=True)
    stm = t3[t3["method"] == "STM"].iloc[0]
    for r, method in ((full, "KMN"), (stm, "STM")):
        for dataset, col in (("DAVIS16 val", "DAVIS16 J&F"), ("DAVIS17 val", "DAVIS17 J&F")):
            assert r[col] == _row(t1, method=method, training_data="static + DAVIS",
                                  dataset=dataset)["J&F"]
        assert r["YouTube-VOS overall"] == yt.set_index("method").loc[method, "overall"]


def test_jf_from_global_reads_official_and_plain_columns() -> None:
    official = pd.DataFrame([{"J&F-Mean": 0.8, "J-Mean": 0.75, "J-Recall": 0.9, "F-Mean": 0.85}])
    assert report.jf_from_global(official) == pytest.approx({"J&F": 80.0, "J": 75.0, "F": 85.0})
    plain = pd.DataFrame([{"J&F": 61.0, "J": 60.0, "F": 62.0}])
    assert report.jf_from_global(plain) == {"J&F": 61.0, "J": 60.0, "F": 62.0}
    with pytest.raises(ValueError, match="my.csv: no column for F"):
        report.jf_from_global(pd.DataFrame([{"J&F": 1, "J": 1}]), source="my.csv")
    with pytest.raises(ValueError, match="one row"):
        report.jf_from_global(pd.concat([plain, plain]))


def test_side_by_side_labels_every_row() -> None:
    prof = get_profile("mini")
    label = report.protocol_label(prof, training_data="static → DAVIS-2016 train")
    its = f"{prof.pretrain.iterations}+{prof.main.iterations} it"
    assert prof.model.backbone in label and report.inference_resolution(prof) in label
    assert its in label and str(prof.main.crop_size) in label
    ours = pd.DataFrame([{"method": "KMN", "training_data": "static → DAVIS-2016 train",
                          "dataset": "DAVIS16 val", "J&F": 55.5, "J": 54.0, "F": 57.0,
                          "s/frame": 0.3, "protocol": label}])
    table = report.side_by_side(report.paper_table1(), ours)
    assert len(table) == len(report.TABLE1) + 1
    assert list(table["source"]).count("ours") == 1
    assert table["protocol"].notna().all()
    last = table.iloc[-1]
    assert (last["source"], last["J&F"], last["protocol"]) == ("ours", 55.5, label)
    assert (table.iloc[0]["source"], table.iloc[0]["protocol"]) == (report.PAPER,
                                                                    report.PAPER_PROTOCOL)
    with pytest.raises(ValueError, match="protocol"):
        report.side_by_side(report.paper_table1(), ours.drop(columns="protocol"))
    with pytest.raises(ValueError, match="protocol"):
        report.side_by_side(report.paper_table1(), ours.assign(protocol=""))


def test_inference_resolution_prefers_infer_height() -> None:
    prof = get_profile("paper")
    assert report.inference_resolution(prof) == prof.inference.resolution
    inf = type(prof.inference)(resolution="480p", infer_height=240)
    assert report.inference_resolution(prof.with_overrides(inference=inf)) == "240p"


def test_run_names_and_sigma_labels() -> None:
    assert report.run_name("has", 7.0) == "has_sigma7" and report.run_name("has", None) == "has_stm"
    assert report.run_name("nohas", 2.5) == "nohas_sigma2.5"
    assert report.sigma_label(None) == "STM read (σ=∞)" and report.sigma_label(7.0) == "σ=7"


def test_save_csv_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    out = report.save_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "t" / "x.csv")
    assert pd.read_csv(out)["a"].tolist() == [1, 2]
    assert [p.name for p in out.parent.iterdir()] == ["x.csv"]
    assert out.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def _png(path: Path) -> tuple[int, int]:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_overlay_colours_only_foreground() -> None:
    img = np.full((4, 5, 3), 100, np.uint8)
    lab = np.zeros((4, 5), np.uint8)
    lab[1, 2] = 1
    out = report.overlay_labels(img, lab, alpha=1.0)
    assert (out[0, 0] == 100).all() and tuple(out[1, 2]) == (128, 0, 0)  # DAVIS colour of id 1
    with pytest.raises(ValueError, match="does not match"):
        report.overlay_labels(img, lab[:3])


def test_plot_helpers_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logs = {}
    for name in ("HaS", "no HaS"):
        p = tmp_path / f"{name}.csv"
        pd.DataFrame({"step": np.arange(1, 41), "loss": rng.random(40)}).to_csv(p, index=False)
        logs[name] = p
    _png(report.plot_loss_curves(logs, tmp_path / "f" / "loss.png"))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"step": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="bad.csv: training log lacks"):
        report.plot_loss_curves({"x": bad}, tmp_path / "f" / "never.png")
    assert not (tmp_path / "f" / "never.png").exists()

    per_seq = {r: pd.DataFrame({"sequence": ["a", "b", "c"], "J&F": rng.random(3) * 100})
               for r in ("σ=7", "STM read")}
    _png(report.plot_per_sequence(per_seq, tmp_path / "f" / "bars.png"))

    sweep = pd.DataFrame({"sigma": [1.0, 3.0, 7.0, None] * 2, "J&F": rng.random(8) * 100,
                          "model": ["HaS"] * 4 + ["no HaS"] * 4})
    _png(report.plot_sigma_curve(sweep, tmp_path / "f" / "sigma.png", group="model"))

    frames = rng.random((3, 3, 48, 48)).astype(np.float32)          # (T,3,H,W) float, as synthesis
    masks = (rng.random((3, 48, 48)) > 0.5).astype(np.uint8)
    hidden = rng.random((3, 6, 6)) > 0.7
    _png(report.plot_synthetic_clip(frames, masks, hidden, tmp_path / "f" / "clip.png"))
    _png(report.plot_loss_maps(frames, masks, hidden, rng.random((2, 48, 48)),
                               tmp_path / "f" / "lossmap.png"))
    rows = [("best", list(frames), list(masks)), ("worst", list(frames[:2]), list(masks[:2]))]
    _png(report.plot_overlays(rows, tmp_path / "f" / "overlay.png"))
    w = rng.random((3, 3))
    _png(report.plot_read_weights(frames[0], frames[1], (1, 1), {"STM": w / w.sum(), "KMN": w},
                                  tmp_path / "f" / "weights.png"))
    assert not list((tmp_path / "f").glob(".*"))  # no temp files left behind
