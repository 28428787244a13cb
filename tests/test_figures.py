"""kmnlib.study.figures (every plot helper writes a PNG) and the atomic CSV writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kmnlib.files import save_csv
from kmnlib.study import figures


def test_save_csv_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    out = save_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "t" / "x.csv")
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
    out = figures.overlay_labels(img, lab, alpha=1.0)
    assert (out[0, 0] == 100).all() and tuple(out[1, 2]) == (128, 0, 0)  # DAVIS colour of id 1
    with pytest.raises(ValueError, match="does not match"):
        figures.overlay_labels(img, lab[:3])


def test_plot_helpers_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logs = {}
    for name in ("HaS", "no HaS"):
        p = tmp_path / f"{name}.csv"
        pd.DataFrame({"step": np.arange(1, 41), "loss": rng.random(40)}).to_csv(p, index=False)
        logs[name] = p
    _png(figures.plot_loss_curves(logs, tmp_path / "f" / "loss.png"))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"step": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="bad.csv: training log lacks"):
        figures.plot_loss_curves({"x": bad}, tmp_path / "f" / "never.png")
    assert not (tmp_path / "f" / "never.png").exists()


    frames = rng.random((3, 3, 48, 48)).astype(np.float32)          # (T,3,H,W) float, as synthesis
    masks = (rng.random((3, 48, 48)) > 0.5).astype(np.uint8)
    hidden = rng.random((3, 6, 6)) > 0.7
    _png(figures.plot_synthetic_clip(frames, masks, hidden, tmp_path / "f" / "clip.png"))
    _png(figures.plot_loss_maps(frames, masks, hidden, rng.random((2, 48, 48)),
                               tmp_path / "f" / "lossmap.png"))
    rows = [("best", list(frames), list(masks)), ("worst", list(frames[:2]), list(masks[:2]))]
    _png(figures.plot_overlays(rows, tmp_path / "f" / "overlay.png"))
    w = rng.random((3, 3))
    rows = [("on the twin", (1, 1), {"STM": w / w.sum(), "KMN": w}),
            ("on the background", (0, 2), {"STM": w / w.sum(), "KMN": w})]
    _png(figures.plot_read_weights(frames[0], frames[1], rows, tmp_path / "f" / "weights.png",
                                   query_outlines={"twin": masks[1] > 0}))
    assert not list((tmp_path / "f").glob(".*"))  # no temp files left behind


# --- readable figures: size limits, shared colour scales, error colours ------------------------
MAX_WIDTH, MAX_ASPECT = 2400, 3.5


def _within_limits(path: Path) -> tuple[int, int]:
    w, h = _png(path)
    assert w <= MAX_WIDTH and w / h <= MAX_ASPECT, (path.name, w, h)
    return w, h


def test_per_sequence_dot_plot_fits_a_page_for_20_sequences_by_5_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    seqs = [f"sequence-{i:02d}" for i in range(20)]
    diffs = pd.DataFrame([{"seed": s, "sequence": q, "diff": rng.normal()} for s in range(5)
                          for q in seqs])
    panels = {"KM − STM read": diffs, "HaS − no HaS": diffs.assign(diff=diffs["diff"] * 3)}
    w, h = _within_limits(figures.plot_paired_differences(panels, tmp_path / "seq.png",
                                                          xlabel="Δ J&F"))
    assert h > 0.5 * w  # one row per sequence, not a 3313×482 strip
    one = {"one": diffs[diffs["seed"] == 0]}
    _within_limits(figures.plot_paired_differences(one, tmp_path / "one.png", xlabel="Δ J&F"))
    # sorted: the sequence with the largest mean difference is drawn at the top
    order = figures._sequence_order(diffs)
    assert order[-1] == diffs.groupby("sequence")["diff"].mean().idxmax()


def test_sigma_effects_keep_an_honest_range_and_limits(tmp_path: Path) -> None:
    eff = pd.DataFrame({"model": ["HaS model"] * 2, "sigma": [3.5, 7.0], "mean_diff": [0.1, -0.2],
                        "low": [-0.1, -0.3], "high": [0.3, -0.1], "interval": ["seed-level"] * 2})
    _within_limits(figures.plot_sigma_effects(eff, tmp_path / "s.png", headline=3.5,
                                              headline_label="σ = 3.5"))


def test_loss_maps_of_one_clip_share_one_colour_limit(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    frames = rng.random((3, 3, 32, 32)).astype(np.float32)
    masks = (rng.random((3, 32, 32)) > 0.5).astype(np.uint8)
    hidden = rng.random((3, 4, 4)) > 0.7
    plain, hid = rng.random((2, 32, 32)), 4 * rng.random((2, 32, 32))
    limit = figures.loss_limit(plain, hid)
    assert np.isclose(limit, np.percentile(np.r_[plain.ravel(), hid.ravel()], 99.5))
    seen = []
    real = figures.plt.Axes.imshow

    def spy(self, x, *a, **kw):  # record the colour limits of every loss panel
        if kw.get("cmap") == "magma":
            seen.append((kw["vmin"], kw["vmax"]))
        return real(self, x, *a, **kw)

    monkeypatch.setattr(figures.plt.Axes, "imshow", spy)
    for name, loss in (("plain", plain), ("hidden", hid)):
        _within_limits(figures.plot_loss_maps(frames, masks, hidden, loss,
                                              tmp_path / f"{name}.png", vmax=limit))
    assert seen == [(0.0, limit)] * 4


def test_error_overlay_colours_true_false_positives_and_negatives(tmp_path: Path) -> None:
    img = np.zeros((2, 3, 3), np.uint8)
    truth = np.array([[1, 1, 0], [0, 255, 0]], np.uint8)
    pred = np.array([[1, 0, 1], [0, 1, 0]], np.uint8)
    out = figures.error_overlay(img, pred, truth, alpha=1.0)
    colours = figures.ERROR_COLOURS
    assert tuple(out[0, 0]) == colours["true positive"]
    assert tuple(out[0, 1]) == colours["false negative"]
    assert tuple(out[0, 2]) == colours["false positive"]
    assert tuple(out[1, 0]) == (0, 0, 0) and tuple(out[1, 1]) == (0, 0, 0)  # background, void
    row = {"title": "best", "frames": [img] * 4, "preds": [pred] * 4, "truths": [truth] * 4,
           "numbers": [0, 13, 26, 39]}
    _within_limits(figures.plot_error_overlays([row, row], tmp_path / "err.png"))


def test_read_weights_and_stress_sets_are_readable(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    mem, qry = rng.random((3, 48, 80)), rng.random((3, 48, 80))
    obj = np.zeros((48, 80), bool)
    obj[10:30, 10:30] = True
    twin = obj[:, ::-1]
    w = rng.random((3, 5))
    rows = [(n, (1, 1), {"STM": w / w.sum(), "KM σ=3.5": w}) for n in ("twin", "background")]
    _within_limits(figures.plot_read_weights(mem, qry, rows, tmp_path / "w.png",
                                             memory_outlines={"object": obj, "twin": twin},
                                             query_outlines={"twin": twin[::2, ::2]}))
    examples = [("twin: a", qry, {"object": obj, "twin": twin}),
                ("pair: b", mem, {"object": obj, "pasted object": twin})]
    w_, h_ = _within_limits(figures.plot_stress_sets(examples, tmp_path / "st.png"))
    assert w_ >= 600  # not a 278-px sliver
