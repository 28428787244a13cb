"""kmnlib.analysis.loss_maps: the loss-by-region measure of Fig. 7 on a case built by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd

from kmnlib.analysis import loss_maps


def _clip() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 40×40 frame: an object square (rows/cols 8..27); one hidden cell (cols 20..39, rows
    0..19) cuts the object's top-right quarter; a second one (rows 32..39, cols 0..7) lies in the
    background. Returns (mask after hiding, mask before hiding, hidden pixels)."""
    full = np.zeros((40, 40), np.uint8)
    full[8:28, 8:28] = 1
    hidden = np.zeros((40, 40), bool)
    hidden[0:20, 20:40] = True
    hidden[32:40, 0:8] = True
    return np.where(hidden, 0, full).astype(np.uint8), full, hidden


def test_regions_separate_the_cut_made_by_hiding_from_the_objects_own_outline() -> None:
    mask, full, hidden = _clip()
    regions = loss_maps.loss_regions(mask, full, band=1)
    # The cut through the object is the hidden edge, away from the outline; the background cell's
    # edges (no label change there) are not, and the object's own outline is not either.
    assert regions["hidden_edge"][12, 19] and regions["hidden_edge"][19, 24]
    assert not regions["hidden_edge"][31, 4] and not regions["hidden_edge"][32, 4]
    assert regions["gt_boundary"][8, 12] and not regions["gt_boundary"][12, 19]
    assert not (regions["hidden_edge"] & regions["gt_boundary"]).any()
    assert (regions["hidden_edge"] | regions["gt_boundary"] | regions["elsewhere"]).all()


def test_mean_loss_by_region_reads_the_loss_each_region_was_given() -> None:
    mask, full, hidden = _clip()
    regions = loss_maps.loss_regions(mask, full, band=2)
    loss = np.where(regions["hidden_edge"], 5.0, np.where(regions["gt_boundary"], 1.0, 0.25))
    masks, fulls, hid = (np.stack([x] * 2) for x in (mask, full, hidden))
    got = loss_maps.boundary_loss_stats(loss[None], masks, hid, band=2, object_masks=fulls)
    row = got.iloc[0]
    assert (row["hidden_edge_loss"], row["gt_boundary_loss"], row["elsewhere_loss"]) == (5.0, 1.0,
                                                                                         0.25)
    # Taking every label boundary of the hidden mask as ground truth (no mask before hiding) puts
    # the cut into gt_boundary, and no hidden edge is left to measure.
    blind = loss_maps.boundary_loss_stats(loss[None], masks, hid, band=2).iloc[0]
    assert np.isnan(blind["hidden_edge_loss"]) and blind["gt_boundary_loss"] > 1.0


def test_verdict_is_read_from_the_numbers() -> None:
    table = pd.DataFrame({"clip": ["a", "a", "mean", "mean"], "kind": ["plain", "hidden"] * 2,
                          "frame": [1, 1, None, None],
                          "gt_boundary_loss": [1.0, 0.8, 1.0, 0.8],
                          "hidden_edge_loss": [np.nan, 0.2, np.nan, 0.2],
                          "elsewhere_loss": [0.1, 0.1, 0.1, 0.1]})
    text = loss_maps.region_verdict(table)
    assert "0.200" in text and "lower" in text and "0.800" in text and "ratio 0.25" in text
    table.loc[table["kind"] == "hidden", "hidden_edge_loss"] = 2.0
    assert "higher" in loss_maps.region_verdict(table)
