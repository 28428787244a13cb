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

    per_seq = {r: pd.DataFrame({"sequence": ["a", "b", "c"], "J&F": rng.random(3) * 100})
               for r in ("σ=7", "STM read")}
    _png(figures.plot_per_sequence(per_seq, tmp_path / "f" / "bars.png"))

    sweep = pd.DataFrame({"sigma": [1.0, 3.0, 7.0, None] * 2, "J&F": rng.random(8) * 100,
                          "model": ["HaS"] * 4 + ["no HaS"] * 4})
    _png(figures.plot_sigma_curve(sweep, tmp_path / "f" / "sigma.png", group="model"))

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
                                   outline=masks[1] > 0))
    assert not list((tmp_path / "f").glob(".*"))  # no temp files left behind
