"""kmnlib.analysis.leak (decoder-input swap, the read at the twin) and the oracle's strengths, on
real DAVIS frames with a small network: identical inputs reproduce the plain run exactly, swaps
move exactly what they swap, bad inputs are refused or give NaN, the hooks never change the run."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from kmnlib.analysis.leak import (DecoderSwap, ReadAtTwin, dilated_cells, mix, swap_summary,
                                  twin_leak, twin_video_inputs)
from kmnlib.analysis.oracle import ORACLE_STRENGTHS, OracleBlock
from kmnlib.config import TEST
from kmnlib.data import DAVISDataset, frames_to_tensor
from kmnlib.inference import segment_video
from kmnlib.model.network import KMN
from kmnlib.propagation import DecoderInputs

SIZE = (112, 200)


@pytest.fixture(scope="module")
def model() -> KMN:
    torch.manual_seed(0)
    return KMN(replace(TEST.model, pretrained=False)).eval()


@pytest.fixture(scope="module")
def video(davis_root):
    """Six frames of a real video, a mirrored copy as the 'twin' video and a box as the twin."""
    seq = DAVISDataset(davis_root, "2016", "val", "480p")["dog"]
    frames = F.interpolate(frames_to_tensor(seq.load_frames(range(6))), size=SIZE, mode="bilinear",
                           align_corners=False, antialias=True).clamp(0, 1)
    mask = F.interpolate(torch.from_numpy(seq.load_mask(0).astype(np.int64))[None, None].float(),
                         size=SIZE, mode="nearest")[0, 0].long()
    twins = torch.zeros(6, *SIZE, dtype=torch.bool)
    twins[:, 30:80, 20:70] = True
    return frames, mask, twins


def _plain(model, frames, mask, hooks=()):
    return segment_video(model, frames, mask, sigma=3.0, mem_every=5, hooks=hooks)


def test_identical_inputs_reproduce_the_plain_run(model, video):
    frames, mask, twins = video
    swap = DecoderSwap(model, frames, twins)
    probs, labels = _plain(model, frames, mask, [swap])
    plain_probs, plain_labels = _plain(model, frames, mask)
    assert torch.equal(probs, plain_probs) and torch.equal(labels, plain_labels)  # hook is inert
    assert len(swap.rows) == 5 * 2 * 4
    for row in swap.rows:
        assert row["leakage"] == twin_leak(plain_probs[row["frame"]], twins[row["frame"]])
        assert row["p_object"] == float(plain_probs[row["frame"], 1][twins[row["frame"]]].mean())


def test_clean_inputs_over_the_frame_give_the_clean_run(model, video):
    """With a different twin video, clean readout + clean query features over the whole frame is
    the clean run itself; twin/twin is not."""
    frames, mask, _ = video
    twins = mask.bool()[None].expand(6, -1, -1)   # where the object is: leakage there is not 0
    swap = DecoderSwap(model, frames.flip(-1), twins)
    plain_probs, _ = _plain(model, frames, mask, [swap])
    rows = [r for r in swap.rows if r["swap_over"] == "frame"]
    clean = [r for r in rows if r["readout_from"] == r["query_from"] == "clean"]
    assert [r["leakage"] for r in clean] == [twin_leak(plain_probs[r["frame"]], twins[r["frame"]])
                                            for r in clean]
    assert [r["p_object"] for r in clean] == [float(plain_probs[r["frame"], 1][twins[r["frame"]]]
                                                    .mean()) for r in clean]
    twin = [r["p_object"] for r in rows if r["readout_from"] == r["query_from"] == "twin"]
    assert all(abs(a - b) > 1e-6 for a, b in zip(twin, [r["p_object"] for r in clean]))


def test_mix_swaps_exactly_the_region_at_every_resolution():
    base = DecoderInputs(torch.zeros(1, 4, 7, 12), torch.zeros(1, 4, 7, 12),
                         torch.zeros(1, 3, 14, 24), torch.zeros(1, 2, 28, 48))
    other = DecoderInputs(*(torch.ones_like(t) for t in base))
    region = torch.zeros(1, 7, 12, dtype=torch.bool)
    region[0, 2:4, 5:9] = True
    out = mix(base, other, readout=True, query=False, region=region)
    assert torch.equal(out.readout[0, 0] > 0, region[0]) and not out.query_value.any()
    out = mix(base, other, readout=False, query=True, region=region)
    assert not out.readout.any()
    assert int(out.f8[0, 0].sum()) == 2 * 4 * 4 and bool(out.f8[0, :, 4:8, 10:18].all())
    assert int(out.f4[0, 0].sum()) == 2 * 4 * 16 and bool(out.f4[0, :, 8:16, 20:36].all())
    whole = mix(base, other, readout=True, query=True, region=None)
    assert all(bool(t.all()) for t in whole)


def test_dilated_cells():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[17, 17] = True                              # one pixel touches cell (1, 1)
    assert int(dilated_cells(mask, 0).sum()) == 1
    assert int(dilated_cells(mask, 2).sum()) == 16   # cells 0..3 × 0..3 (clipped at the border)


def test_empty_twin_gives_nan_and_a_short_twin_video_is_refused(model, video, davis_root):
    frames, mask, twins = video
    empty = twins.clone()
    empty[2] = False
    swap = DecoderSwap(model, frames, empty)
    _plain(model, frames, mask, [swap])
    assert all(np.isnan(r["leakage"]) for r in swap.rows if r["frame"] == 2)
    assert not any(np.isnan(r["leakage"]) for r in swap.rows if r["frame"] != 2)
    summary = swap_summary(__import__("pandas").DataFrame(swap.rows))
    assert set(summary["scope"]) == {"first_frame", "video"} and summary["leakage"].notna().all()
    ds = DAVISDataset(davis_root, "2016", "val", "480p")
    with pytest.raises(ValueError, match="twin video .* does not match its clean original"):
        twin_video_inputs(ds["blackswan"], ds["dog"], np.zeros((3, 480, 854), bool), 240)


def test_read_at_twin_is_inert_and_its_shares_add_up(model, video):
    frames, mask, twins = video
    hook = ReadAtTwin(3.0, mask.bool()[None].expand(6, -1, -1), twins)
    probs, _ = _plain(model, frames, mask, [hook])
    assert torch.equal(probs, _plain(model, frames, mask)[0])
    assert [r["frame"] for r in hook.rows] == [1, 2, 3, 4, 5]
    for r in hook.rows:
        assert 0.0 <= r["weight_on_object"] <= 1.0
        assert r["qhat_on_object"] + r["qhat_on_twin"] + r["qhat_elsewhere"] == pytest.approx(1.0)
    no_twin = ReadAtTwin(3.0, mask.bool()[None].expand(6, -1, -1), torch.zeros_like(twins))
    _plain(model, frames, mask, [no_twin])
    assert all(np.isnan(r["weight_on_object"]) and r["cells"] == 0 for r in no_twin.rows)


def test_oracle_strengths_nest(video):
    _, _, twins = video
    region = torch.zeros(*SIZE, dtype=torch.bool)
    region[30:80, 20:70] = True
    cells = {name: OracleBlock(lambda t: region, s).query_cells(0, torch.device("cpu"))
             for name, s in ORACLE_STRENGTHS.items()}
    half, anyc, dilated = cells["half"], cells["any"], cells["half, dilated 1"]
    assert bool((half <= anyc).all()) and bool((half <= dilated).all())
    assert int(anyc.sum()) > int(half.sum()) and int(dilated.sum()) > int(half.sum())


def _swap_rows(seeds, readout_adds, query_adds, noise=1.0):
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(model="m", read="STM", seed=s, swap_over="twin region", scope="video",
                              readout_from=ro, query_from=qf,
                              leakage=10 + query_adds * (qf == "twin") + readout_adds * (ro == "twin")
                              + rng.normal(0, noise))
                         for s in seeds for ro in ("twin", "clean") for qf in ("twin", "clean")])


def test_mechanism_effects_pool_seeds_as_the_unit():
    from kmnlib.study.leak import mechanism_effects
    oracle = pd.DataFrame([dict(model="m", read="STM", seed=s, oracle=o, leakage=v + s)
                           for s in range(4) for o, v in (("none", 50), ("half", 30), ("any", 20),
                                                          ("half, dilated 1", 25))])
    clean = pd.DataFrame([{"model": "m", "read": "STM", "seed": s, "J&F": 60 + s,
                           "J&F with twin": 50 + s, "mirrored_fp": 5.0, "leakage": 45.0}
                          for s in range(4)])
    eff = mechanism_effects(_swap_rows(range(4), 5.0, 40.0), oracle, clean).set_index("contrast")
    query = eff.loc["twin query features add (twin readout): tt − tc"]
    readout = eff.loc["twin readout adds (twin query): tt − ct"]
    assert query["seed_ci_low"] < 40 < query["seed_ci_high"] and query["seed_ci_low"] > 30
    assert readout["seed_ci_low"] < 5 < readout["seed_ci_high"] and query["seeds"] == "0 1 2 3"
    assert eff.loc["oracle any − none", "mean_diff"] == pytest.approx(-30)
    assert eff.loc["J&F with twin − J&F clean", "mean_diff"] == pytest.approx(-10)
    assert eff.loc["leakage − mirrored_fp (floor)", "mean_diff"] == pytest.approx(40)
    # No readout effect in the data: its interval holds 0. One seed: no seed-level interval.
    none = mechanism_effects(_swap_rows(range(4), 0.0, 40.0), oracle, clean).set_index("contrast")
    row = none.loc["twin readout adds (twin query): tt − ct"]
    assert row["seed_ci_low"] < 0 < row["seed_ci_high"]
    one = mechanism_effects(_swap_rows([0], 5.0, 40.0), oracle[oracle.seed == 0],
                            clean[clean.seed == 0])
    assert one["seed_ci_low"].isna().all() and one["mean_diff"].notna().all()
