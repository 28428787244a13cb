"""Hide-and-Seek, static clip synthesis, video clip sampling and the training Datasets."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kmnlib.config import AugmentConfig, StageConfig, resolve_data_root
from kmnlib.synthesis import (StaticClipDataset, VideoClipDataset, cell_edges,
                              collate_clips, has_probability, hidden_pixels, hide_and_seek,
                              max_gap, sample_frame_indices, sample_video_clip, synthesize_clip)

FILL = (0.25, 0.5, 0.75)  # any colour: the fill is the caller's (the backbone's input mean)
MEAN = np.array(FILL, dtype=np.float32)
AUG = AugmentConfig()
NO_JITTER = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
CLIP = dict(n_frames=3, fill=FILL)  # the paper's 3-frame clips
# Pure colours painted on a background whose channels stay in [40, 215]: a pixel within 0.01 of
# one of these can only come from the painted instance (or bilinear blending at its edge).
COLOURS = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)


def painted_scene(rng: np.random.Generator, h: int = 160, w: int = 200, n: int = 5,
                  shift: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with ``n`` instances painted in unique pure colours, and their id map."""
    image = rng.integers(40, 216, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    dx, dy = shift
    shapes = [lambda m, v: cv2.circle(m, (50 + dx, 50 + dy), 30, v, -1),
              lambda m, v: cv2.rectangle(m, (110 + dx, 20 + dy), (180 + dx, 70 + dy), v, -1),
              lambda m, v: cv2.fillPoly(m, [np.array([[20, 150], [90, 90], [100, 150]]) +
                                            [dx, dy]], v),
              lambda m, v: cv2.ellipse(m, (150 + dx, 120 + dy), (35, 20), 30, 0, 360, v, -1),
              lambda m, v: cv2.rectangle(m, (95 + dx, 95 + dy), (125 + dx, 125 + dy), v, -1)]
    for k in range(n):
        shapes[k](mask, k + 1)  # later shapes occlude earlier ones, like real instance maps
    for k in range(n):
        image[mask == k + 1] = (COLOURS[k] * 255).astype(np.uint8)
    return image, mask


def edge_band(region: np.ndarray, px: int = 2) -> np.ndarray:
    """Pixels within ``px`` of the region's boundary or of the crop's border (where bilinear
    blending with the neighbours / the out-of-image fill is allowed)."""
    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    r = region.astype(np.uint8)
    inner = cv2.erode(r, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(r, k).astype(bool) & ~inner.astype(bool)


def colour_of(pixels: np.ndarray) -> int:
    """Index of the COLOURS entry all given pixels show (asserts they agree)."""
    d = np.abs(pixels[:, None, :] - COLOURS[None]).max(axis=2) < 0.01  # (N, colours)
    votes = d.sum(0)
    assert votes.max() == len(pixels), "an object's interior shows mixed colours"
    return int(votes.argmax())


# ----------------------------------------------------------------------------------- schedules
def test_schedules_end_points_and_monotone() -> None:
    assert has_probability(0, 1000, 0.0, 0.5, 1.0) == 0.0
    assert has_probability(1000, 1000, 0.0, 0.5, 1.0) == pytest.approx(0.5)
    assert has_probability(400, 1000, 0.0, 0.5, ramp_fraction=0.4) == pytest.approx(0.5)
    assert has_probability(900, 1000, 0.0, 0.5, ramp_fraction=0.4) == pytest.approx(0.5)  # held
    assert has_probability(250, 1000, 0.0, 0.5, 1.0) == pytest.approx(0.125)
    assert max_gap(0, 1000, 0, 25, 1.0) == 0 and max_gap(1000, 1000, 0, 25, 1.0) == 25
    assert max_gap(500, 1000, start=5, end=25, ramp_fraction=1.0) == 15
    p = [has_probability(s, 777, 0.0, 0.5, 0.8) for s in range(800)]
    g = [max_gap(s, 777, 0, 25, 0.8) for s in range(800)]
    assert all(b >= a for a, b in zip(p, p[1:])) and all(b >= a for a, b in zip(g, g[1:]))
    assert set(g) == set(range(26)) and all(isinstance(x, int) for x in g)
    with pytest.raises(ValueError):
        max_gap(0, 0, 0, 25, 1.0)
    with pytest.raises(ValueError):
        has_probability(-1, 10, 0.0, 0.5, 1.0)


# ------------------------------------------------------------------------------ Hide-and-Seek
def test_cell_edges_follow_array_split() -> None:
    e = cell_edges(100, 7)
    assert e[0] == 0 and e[-1] == 100 and len(e) == 8
    assert np.diff(e).tolist() == [len(a) for a in np.array_split(np.arange(100), 7)]
    with pytest.raises(ValueError):
        cell_edges(5, 7)


def test_hide_and_seek_hides_cells_with_mean_and_background() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (100, 90)).astype(np.uint8)
    orig_image, orig_mask = image.copy(), mask.copy()
    out, m, hidden = hide_and_seek(image, mask, grid=7, p=0.4, rng=np.random.default_rng(1), fill=FILL)
    assert hidden.shape == (7, 7) and hidden.dtype == bool and 0 < hidden.sum() < 49
    assert out.dtype == np.float32 and out.shape == (100, 90, 3)
    assert np.array_equal(image, orig_image) and np.array_equal(mask, orig_mask)  # not mutated
    rows, cols = cell_edges(100, 7), cell_edges(90, 7)
    for i in range(7):
        for j in range(7):
            cell = (slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
            if hidden[i, j]:
                assert np.allclose(out[cell], MEAN) and (m[cell] == 0).all()
            else:
                assert np.allclose(out[cell], orig_image[cell] / 255.0)
                assert np.array_equal(m[cell], orig_mask[cell])
    assert np.array_equal(hidden_pixels(hidden, 100, 90),
                          np.repeat(np.repeat(hidden, np.diff(rows), 0), np.diff(cols), 1))


@pytest.mark.parametrize("p,expected", [(0.0, 0), (1.0, 64)])
def test_hide_and_seek_probability_extremes(p: float, expected: int) -> None:
    image = np.random.default_rng(2).random((64, 48, 3)).astype(np.float32)
    mask = np.ones((64, 48), dtype=np.uint8)
    out, m, hidden = hide_and_seek(image, mask, grid=8, p=p, rng=np.random.default_rng(3), fill=FILL)
    assert hidden.sum() == expected
    assert (m.sum() == 0) == (p == 1.0)
    assert np.allclose(out, MEAN) if p == 1.0 else np.array_equal(out, image)


# ---------------------------------------------------------------------------- static clips
def test_static_clip_mask_follows_image_and_ids_are_consistent() -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        image, mask = painted_scene(rng)
        frames, masks, hidden = synthesize_clip(image, mask, size=96, hide_p=0.3, rng=rng,
                                                grid=6, max_objects=3, aug=NO_JITTER, **CLIP)
        assert frames.shape == (3, 96, 96, 3) and frames.dtype == np.float32
        assert masks.shape == (3, 96, 96) and hidden.shape == (3, 6, 6)
        k = int(masks.max())
        assert 1 <= k <= 3
        colour_for_id: dict[int, int] = {}
        for t in range(3):
            hid = hidden_pixels(hidden[t], 96, 96)
            assert np.allclose(frames[t][hid], MEAN) and (masks[t][hid] == 0).all()
            for obj in range(1, k + 1):
                region = masks[t] == obj
                inner = region & ~edge_band(region)
                if t == 0:
                    assert region.any(), f"object {obj} missing from the reference frame"
                if not inner.any():
                    continue
                c = colour_of(frames[t][inner])
                assert colour_for_id.setdefault(obj, c) == c, "id changed object across frames"
                painted = np.abs(frames[t] - COLOURS[c]).max(axis=2) < 0.01
                valid = ~edge_band(region) & ~edge_band(painted) & ~hid
                assert np.array_equal(painted[valid], region[valid]), (seed, t, obj)
        assert len(set(colour_for_id.values())) == len(colour_for_id)  # distinct instances


def test_static_clip_object_selection() -> None:
    seen_k = set()
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        image, mask = painted_scene(rng)
        _, masks, _ = synthesize_clip(image, mask, size=64, hide_p=0.5, rng=rng, grid=8,
                                      max_objects=3, aug=AUG, **CLIP)
        ids = np.unique(masks[0])
        k = int(masks.max())
        seen_k.add(k)
        assert ids.tolist() == list(range(k + 1))  # consecutive, all present in frame 0
        assert set(np.unique(masks).tolist()) <= set(range(k + 1))
        _, m1, _ = synthesize_clip(image, mask, size=64, hide_p=0.0, rng=rng, grid=8,
                                   max_objects=1, aug=AUG, **CLIP)
        assert m1.max() == 1
    assert 3 in seen_k  # five large instances: three are usually visible


def test_static_clip_full_hiding_keeps_reference_unhidden() -> None:
    rng = np.random.default_rng(5)
    image, mask = painted_scene(rng, n=1)
    frames, masks, hidden = synthesize_clip(image, mask, size=64, hide_p=1.0, rng=rng, grid=8,
                                            max_objects=3, aug=AUG, **CLIP)
    assert not hidden[0].any() and masks[0].max() == 1  # fallback documented in the module
    assert hidden[1:].all() and (masks[1:] == 0).all() and np.allclose(frames[1:], MEAN)


def test_hiding_only_changes_hidden_cells() -> None:
    image, mask = painted_scene(np.random.default_rng(9))
    kw = dict(size=64, grid=8, max_objects=3, aug=AUG, **CLIP)
    f0, m0, h0 = synthesize_clip(image, mask, hide_p=0.0, rng=np.random.default_rng(4), **kw)
    f1, m1, h1 = synthesize_clip(image, mask, hide_p=0.4, rng=np.random.default_rng(4), **kw)
    assert not h0.any() and h1.any()
    for t in range(3):
        keep = ~hidden_pixels(h1[t], 64, 64)
        assert np.array_equal(f0[t][keep], f1[t][keep]) and np.array_equal(m0[t][keep], m1[t][keep])


def test_static_clip_without_object_raises() -> None:
    image = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(ValueError, match="no object"):
        synthesize_clip(image, np.zeros((50, 60), np.uint8), size=32, hide_p=0.0,
                        rng=np.random.default_rng(0), grid=4, max_objects=3, aug=AUG, **CLIP)
    with pytest.raises(ValueError, match="does not match"):
        synthesize_clip(image, np.zeros((40, 60), np.uint8), size=32, hide_p=0.0,
                        rng=np.random.default_rng(0), grid=4, max_objects=3, aug=AUG, **CLIP)


@pytest.fixture(scope="module")
def coco():
    from kmnlib.data import StaticImageFolder
    root = resolve_data_root() / "static" / "coco-panoptic-200"
    if not root.is_dir():
        pytest.skip(f"{root}: shared static data not linked")
    return StaticImageFolder(root)


def test_static_dataset_items_deterministic_and_ramped(coco) -> None:
    stage = StageConfig(iterations=10, batch_size=2, crop_size=96, hide_grid=6, max_objects=3)
    ds = StaticClipDataset([coco], stage, hide=True, seed=0, fill=FILL)
    assert len(ds) == 20 and ds.hide_p(0) == 0.0 and ds.hide_p(19) == pytest.approx(0.45)
    item = ds[15]
    assert item["frames"].shape == (3, 3, 96, 96) and item["frames"].dtype == torch.float32
    assert 0.0 <= item["frames"].min() and item["frames"].max() <= 1.0
    assert item["masks"].dtype == torch.long and item["hidden"].shape == (3, 6, 6)
    assert 1 <= item["num_objects"] <= 3 and item["masks"].max() == item["num_objects"]
    assert item["hidden"].any()  # p = 0.35 at step 7
    again = StaticClipDataset([coco], stage, hide=True, seed=0, fill=FILL)[15]
    for key in ("frames", "masks", "hidden"):
        assert torch.equal(item[key], again[key])
    other = StaticClipDataset([coco], stage, hide=True, seed=1, fill=FILL)[15]
    assert not torch.equal(item["frames"], other["frames"])
    assert not torch.equal(item["frames"], ds[14]["frames"])
    assert not ds[0]["hidden"].any()  # p = 0 at step 0
    no_hide = StaticClipDataset([coco], replace(stage, batch_size=1), hide=False, seed=0,
                                fill=FILL)
    assert not no_hide[9]["hidden"].any()


def test_static_dataset_names_the_image_without_objects(tmp_path: Path) -> None:
    class Folder:
        root = tmp_path / "empty-set"

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int):
            return np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8), "blank"

    with pytest.raises(ValueError, match="empty-set/blank"):
        StaticClipDataset([Folder()], StageConfig(iterations=1, batch_size=1, crop_size=32,
                                                  hide_grid=4), hide=True, seed=0, fill=FILL)[0]


# ------------------------------------------------------------------------------- video clips
def test_sample_frame_indices_gaps_and_clamping() -> None:
    rng = np.random.default_rng(0)
    for length, gap in [(80, 0), (80, 1), (80, 7), (80, 25), (12, 25), (3, 25)]:
        for _ in range(50):
            idx = sample_frame_indices(length, 3, gap, rng)
            d = np.diff(idx)
            assert idx[0] >= 0 and idx[-1] < length
            assert (d >= 1).all() and (d <= max(1, gap)).all()
    assert sample_frame_indices(3, 3, 25, rng) == [0, 1, 2]
    big = [np.diff(sample_frame_indices(80, 3, 25, rng)).max() for _ in range(200)]
    assert max(big) > 15  # gaps really spread up to the maximum
    with pytest.raises(ValueError):
        sample_frame_indices(2, 3, 5, rng)


class FakeVideo:
    """A painted object moving right 2 px per frame; minimal VideoSequence-like."""

    def __init__(self, name: str = "fake", n: int = 30, empty: bool = False) -> None:
        self.name, self.n, self.empty = name, n, empty

    def __len__(self) -> int:
        return self.n

    def _scene(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = painted_scene(np.random.default_rng(i), n=3, shift=(2 * i % 20, 0))
        return image, (mask * 0 if self.empty else mask)

    def load_frames(self, idx):
        return np.stack([self._scene(i)[0] for i in idx])

    def load_masks(self, idx):
        return np.stack([self._scene(i)[1] for i in idx])


def test_video_clip_alignment_on_moving_object() -> None:
    rng = np.random.default_rng(3)
    for _ in range(4):
        frames, masks, idx = sample_video_clip(FakeVideo(), size=96, gap=5, rng=rng,
                                               aug=NO_JITTER, max_objects=3, **CLIP)
        assert idx == sorted(idx) and masks[0].max() >= 1
        for t in range(3):
            for obj in range(1, int(masks.max()) + 1):
                region = masks[t] == obj
                if not (region & ~edge_band(region)).any():
                    continue
                c = colour_of(frames[t][region & ~edge_band(region)])
                painted = np.abs(frames[t] - COLOURS[c]).max(axis=2) < 0.01
                valid = ~edge_band(region) & ~edge_band(painted)
                assert np.array_equal(painted[valid], region[valid])


def test_video_clip_without_object_names_sequence() -> None:
    with pytest.raises(ValueError, match="blank-video"):
        sample_video_clip(FakeVideo("blank-video", empty=True), size=64, gap=3,
                          rng=np.random.default_rng(0), aug=replace(AugmentConfig(), clip_tries=3),
                          max_objects=3, **CLIP)
    with pytest.raises(ValueError, match="short-video"):
        sample_video_clip(FakeVideo("short-video", n=2), size=64, gap=3,
                          rng=np.random.default_rng(0), max_objects=3, aug=AUG, **CLIP)


@pytest.fixture(scope="module")
def davis_train():
    from kmnlib.data import DAVISDataset
    root = resolve_data_root() / "DAVIS-2016"
    if not root.is_dir():
        pytest.skip(f"{root}: shared DAVIS data not linked")
    return DAVISDataset(root, year="2016", split="train", resolution="240p")


def test_video_dataset_on_davis_train(davis_train) -> None:
    seqs = [davis_train[i] for i in range(len(davis_train))]
    stage = StageConfig(iterations=6, batch_size=2, crop_size=96, hide_grid=6, max_objects=3,
                        gap_start=0, gap_end=25)
    ds = VideoClipDataset(seqs, stage, seed=0, fill=FILL)
    assert ds.max_gap(0) == 0 and ds.max_gap(11) == 21
    names = set()
    for index in (0, 1, 6, 11):
        item = ds[index]
        f = item["frame_indices"].tolist()
        gap = max(1, ds.max_gap(index))
        assert f == sorted(f) and all(1 <= b - a <= gap for a, b in zip(f, f[1:]))
        assert item["num_objects"] == 1 and (item["masks"][0] == 1).any()
        assert item["frames"].shape == (3, 3, 96, 96) and not item["hidden"].any()
        names.add(item["name"])
    assert len(names) > 1  # the per-pass permutation visits different videos
    assert torch.equal(ds[6]["frames"], VideoClipDataset(seqs, stage, seed=0, fill=FILL)[6]["frames"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=range(4, 8), num_workers=1,
                                         collate_fn=collate_clips)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["frames"].shape == (2, 3, 3, 96, 96)
    assert torch.equal(batches[1]["masks"][0], ds[6]["masks"])  # workers reproduce indexing


# ---------------------------------------------------------------------------------- collate
def test_collate_pads_objects() -> None:
    def item(k: int) -> dict:
        masks = torch.zeros(3, 8, 8, dtype=torch.long)
        for obj in range(1, k + 1):
            masks[:, obj, :] = obj
        return dict(frames=torch.rand(3, 3, 8, 8), masks=masks, num_objects=k,
                    hidden=torch.zeros(3, 2, 2, dtype=torch.bool), name=f"k{k}")

    b = collate_clips([item(1), item(3)])
    assert b["frames"].shape == (2, 3, 3, 8, 8) and b["num_objects"].tolist() == [1, 3]
    assert b["obj_valid"].tolist() == [[True, False, False], [True, True, True]]
    assert b["obj_masks"].shape == (2, 3, 3, 8, 8)
    assert b["obj_masks"][0, :, 1:].sum() == 0  # padded objects are empty
    assert torch.equal(b["obj_masks"][1, :, 2], (b["masks"][1] == 3).float())
