"""The distractor stress sets: twins (mirrored copy of the object) and pairs (two objects)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmnlib.data import DAVISDataset
from kmnlib.data.derived import (CLEAN, TWIN, build_clean_set, build_pair_set, build_twin_set,
                                 pair_frame, pairing, twin_frame, twin_masks)
from kmnlib.data.masks import davis_palette, read_label_map


@pytest.fixture(scope="module")
def blackswan(davis_root):
    seq = DAVISDataset(davis_root, "2016", "val", "480p")["blackswan"]
    return seq.load_frames([10])[0], seq.load_mask(10)


def test_twin_on_a_real_frame(blackswan) -> None:
    frame, gt = blackswan
    out, twin = twin_frame(frame, gt)
    obj = gt == 1
    mirrored = frame[:, ::-1]
    assert twin.any() and not (twin & obj).any()
    assert np.array_equal(out[twin], mirrored[twin])           # copy pixels = mirrored source
    assert np.array_equal(out[obj], frame[obj])                 # the original stays on top
    untouched = ~twin
    assert np.array_equal(out[untouched], frame[untouched])     # nothing else changes
    # No copy where the mirrored pixel is not object: the twin is exactly mirror(obj) minus obj.
    assert np.array_equal(twin, obj[:, ::-1] & ~obj)
    h, w = gt.shape
    ys, xs = np.nonzero(twin)
    assert (obj[ys, w - 1 - xs]).all()


def test_pair_ids_and_occlusion_order() -> None:
    host = np.full((6, 8, 3), 10, np.uint8)
    guest = np.full((6, 8, 3), 200, np.uint8)
    hg = np.zeros((6, 8), np.uint8)
    gg = np.zeros((6, 8), np.uint8)
    hg[1:4, 1:5] = 1                         # as the DAVIS-2016 reader loads them
    gg[2:5, 3:7] = 1
    frame, labels = pair_frame(host, hg, guest, gg)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[2, 3] == 2 and frame[2, 3, 0] == 200       # the overlap goes to the pasted object
    assert labels[1, 1] == 1 and frame[1, 1, 0] == 10
    assert labels[5, 0] == 0 and frame[5, 0, 0] == 10


def test_pairing_is_fixed_and_skips_covered_hosts() -> None:
    m = {n: np.zeros((4, 4), np.uint8) for n in "abcdef"}
    m["a"][:2] = 1
    m["b"][2:] = 1
    m["c"][3, 0] = 1
    m["d"][:2] = 1           # would cover a's whole object: a takes the next guest in order
    m["e"][3, 3] = 1
    m["f"][1, 1] = 1
    pairs = pairing(list("abcdef"), m)
    assert pairs == [("a", "e"), ("b", "f"), ("c", "d")]
    assert pairs == pairing(list("abcdef"), m)  # deterministic


def test_built_sets_read_as_davis(small_davis, tmp_path) -> None:
    cache = tmp_path / "cache"
    twin_root = build_twin_set(small_davis, cache)
    assert twin_root.parent == cache / TWIN   # <cache>/<set>/v<version>-<source content>
    ds = DAVISDataset(twin_root, "2016", "val", "480p")
    orig = DAVISDataset(small_davis, "2016", "val", "480p")
    assert ds.names == ["blackswan", "car-shadow"]
    for name in ds.names:
        assert np.array_equal(ds[name].load_masks(), orig[name].load_masks())  # GT unchanged
        twins = twin_masks(twin_root, name)
        expect = np.stack([twin_frame(f, g)[1] for f, g in
                           zip(orig[name].load_frames(), orig[name].load_masks())])
        assert np.array_equal(twins, expect)
    mtime = (twin_root / "build.json").stat().st_mtime_ns
    assert build_twin_set(small_davis, cache) == twin_root               # built once
    assert (twin_root / "build.json").stat().st_mtime_ns == mtime

    pair_root = build_pair_set(small_davis, cache)
    pairs = DAVISDataset(pair_root, "2017", "val", "480p")
    assert pairs.names == ["blackswan+car-shadow"]
    seq = pairs["blackswan+car-shadow"]
    assert len(seq) == 4 and seq.object_ids == [1, 2]
    with Image.open(seq.mask_paths[0]) as im:                       # DAVIS-2017 palette format
        assert im.mode == "P" and im.getpalette()[:9] == davis_palette()[:9]
    labels = read_label_map(seq.mask_paths[0])
    host, guest = orig["blackswan"].load_mask(0), orig["car-shadow"].load_mask(0)
    assert np.array_equal(labels == 2, guest > 0)
    assert np.array_equal(labels == 1, (host > 0) & (guest == 0))
    assert not list(cache.glob(".*")) and not list(cache.glob("*/.*"))  # no temp folders left


def test_clean_control_holds_the_twin_sets_frames_without_the_twin(small_davis, tmp_path) -> None:
    cache = tmp_path / "cache"
    twin_root, clean_root = build_twin_set(small_davis, cache), build_clean_set(small_davis, cache)
    assert clean_root.parent == cache / CLEAN and clean_root != twin_root
    clean, twin = (DAVISDataset(r, "2016", "val", "480p") for r in (clean_root, twin_root))
    orig = DAVISDataset(small_davis, "2016", "val", "480p")
    assert clean.names == twin.names
    for name in clean.names:
        assert len(clean[name]) == len(twin[name])
        for ours, theirs in zip(clean[name].frame_paths, orig[name].frame_paths):
            assert Path(ours).read_bytes() == Path(theirs).read_bytes()   # the frames as they are
        assert np.array_equal(clean[name].load_masks(), twin[name].load_masks())
        assert np.array_equal(twin_masks(clean_root, name), twin_masks(twin_root, name))
        assert not np.array_equal(clean[name].load_frames(), twin[name].load_frames())
