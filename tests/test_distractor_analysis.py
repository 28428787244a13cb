"""kmnlib.analysis.distractors: twin leakage of a run folder, the read probe, the kernel-flip count."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kmnlib.analysis.distractors import (kernel_can_flip, leakage_by_sequence, probe_frames,
                                         read_probe, twin_leakage)
from kmnlib.config import TEST
from kmnlib.data import DAVISDataset
from kmnlib.data.derived import build_twin_set, twin_masks
from kmnlib.data.masks import write_label_map
from kmnlib.model import build_model


@pytest.fixture
def twin_root(small_davis, tmp_path):
    return build_twin_set(small_davis, tmp_path / "cache")


def test_twin_leakage_of_a_run_folder(twin_root, tmp_path) -> None:
    ds = DAVISDataset(twin_root, "2016", "val", "480p")
    masks = tmp_path / "run" / "masks"
    for name in ds.names:
        twins = twin_masks(twin_root, name)
        gt = ds[name].load_masks()
        for t, path in enumerate(ds[name].frame_paths):
            pred = gt[t].copy()
            if t == 2:
                pred[twins[t]] = 1                 # frame 2 labels the whole twin as object
            write_label_map(masks / name / f"{path.stem}.png", pred)
    per_frame = twin_leakage(masks, twin_root, ds.names)
    assert set(per_frame["frame"]) == {"00001", "00002"}   # 4 frames: first and last excluded
    for name in ds.names:
        rows = per_frame[per_frame["sequence"] == name].set_index("frame")
        if rows.loc["00002", "twin_pixels"]:
            assert rows.loc["00002", "leakage"] == 1.0
        assert (rows.drop(index="00002")["leakage"].fillna(0) == 0).all()
    by_seq = leakage_by_sequence(per_frame)
    assert list(by_seq.columns) == ["sequence", "leakage"]


def test_kernel_can_flip_counts_against_the_penalty() -> None:
    gaps = pd.DataFrame({"object_gap": [1.0, 1.0, 5.0, -2.0], "distance": [2.0, 10.0, 10.0, 3.0],
                         "top_gap": [0.5] * 4})
    out = kernel_can_flip(gaps, [1.0, 10.0]).set_index("sigma")
    # σ=1: penalties 2, 50, 50 for the three cells the object wins → all three exceed their gap.
    assert out.loc[1.0, "share_kernel_can_flip"] == 1.0 and out.loc[1.0, "object_wins"] == 3
    # σ=10: penalties 0.02, 0.5, 0.5 → none exceeds its gap.
    assert out.loc[10.0, "share_kernel_can_flip"] == 0.0
    assert out.loc[1.0, "median_object_gap"] == 1.0


def test_read_probe_tables(twin_root) -> None:
    torch.manual_seed(0)
    model = build_model(TEST.model).eval()
    ds = DAVISDataset(twin_root, "2016", "val", "480p")
    seq = ds["blackswan"]
    out = read_probe(model, seq, twin_masks(twin_root, "blackswan"), frames=[2, 3],
                     sigmas=(None, 3.5), infer_height=96)
    w = out["weights"]
    assert set(w["cells"]) <= {"object", "twin", "background"} and set(w["read"]) == {
        "STM read (σ=∞)", "σ=3.5"}
    valid = w["weight_on_object"].dropna()
    assert ((valid >= 0) & (valid <= 1 + 1e-6)).all()
    g = out["gaps"]
    assert (g["top_gap"] >= 0).all() and (g["distance"] >= 0).all()
    q = out["qhat"]
    assert np.allclose(q[["on_object", "on_twin", "elsewhere"]].sum(axis=1), 1.0)


def test_short_videos_get_a_probe_frame_and_empty_probes_keep_their_columns(twin_root) -> None:
    """Videos of 8-12 frames once crashed notebook 07 (no probe frame: tables without columns)."""
    assert probe_frames(30) == [10, 20] and probe_frames(12) == [10]
    assert probe_frames(9) == [4] and probe_frames(8) == [4] and probe_frames(2) == []
    torch.manual_seed(0)
    model = build_model(TEST.model).eval()
    seq = DAVISDataset(twin_root, "2016", "val", "480p")["blackswan"]   # 4 frames here
    twins = twin_masks(twin_root, "blackswan")
    out = read_probe(model, seq, twins, frames=probe_frames(len(seq)), sigmas=(None,),
                     infer_height=96)
    assert not out["weights"].empty and set(out["weights"]["frame"]) == {2}
    empty = read_probe(model, seq, twins, frames=[], sigmas=(None,), infer_height=96)
    summary = (empty["weights"].groupby(["cells", "read"]).agg(w=("weight_on_object", "mean")))
    assert summary.empty
    flip = kernel_can_flip(empty["gaps"], [3.5])
    assert flip["object_wins"].tolist() == [0] and np.isnan(flip["share_kernel_can_flip"][0])
