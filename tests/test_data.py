"""Dataset readers on the real shared DAVIS-2016 copy and on tiny layouts built in tmp dirs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmnlib.data import (DAVISDataset, StaticImageFolder, VideoSequence, YouTubeVOSDataset,
                         frames_to_tensor, open_static_dataset, open_video_dataset, read_label_map,
                         write_label_map)

H, W = 24, 32


# ----------------------------------------------------------------------------- builders
def save_jpg(path: Path, value: int, size: tuple[int, int] = (H, W)) -> None:
    """A flat-colour JPEG whose grey level encodes ``value`` (so tests can tell frames apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, quality=95)


def three_objects(t: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """Label map with objects 1, 2, 3 (object 3 moves with ``t``) and a void (255) border."""
    m = np.zeros(size, np.uint8)
    m[2:8, 2:8] = 1
    m[10:16, 4:12] = 2
    m[4:10, 16 + t:22 + t] = 3
    m[0, :] = 255
    return m


def make_davis(root: Path, year: str = "2017", seqs: tuple[str, ...] = ("dance", "walk"),
               n: int = 5, res: str = "480p") -> Path:
    """DAVIS layout with palette masks (3 objects + void) on every frame."""
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "val.txt").write_text("\n".join(seqs) + "\n\n")
    for seq in seqs:
        for t in range(n):
            save_jpg(root / "JPEGImages" / res / seq / f"{t:05d}.jpg", 40 * t)
            write_label_map(root / "Annotations" / res / seq / f"{t:05d}.png", three_objects(t))
    return root


def make_youtube(root: Path, split: str = "train", n: int = 20) -> Path:
    """YouTube-VOS layout: object 1 from frame 0, object 3 appearing at frame 10.

    train: annotations every 5th frame; valid: only where each object first appears.
    """
    d = root / split
    every = range(0, n, 5) if split == "train" else (0, 10)
    for t in range(n):
        save_jpg(d / "JPEGImages" / "vid1" / f"{t:05d}.jpg", 10 * t)
    for t in every:
        m = np.zeros((H, W), np.uint8)
        m[2:8, 2:8] = 1 if (split == "train" or t == 0) else 0
        if t >= 10:
            m[12:20, 10:20] = 3
        write_label_map(d / "Annotations" / "vid1" / f"{t:05d}.png", m)
    frames1 = [f"{t:05d}" for t in range(0, n, 5)]
    meta = {"videos": {"vid1": {"objects": {
        "1": {"category": "person", "frames": frames1},
        "3": {"category": "dog", "frames": [f for f in frames1 if int(f) >= 10]}}}}}
    (d / "meta.json").write_text(json.dumps(meta))
    return root


def assert_names(exc: pytest.ExceptionInfo, path: Path) -> None:
    """Errors must start with the offending path."""
    assert str(exc.value).startswith(str(path)), str(exc.value)


# ----------------------------------------------------------------------------- real DAVIS-2016
def test_davis2016_val_real(davis_root: Path) -> None:
    ds = DAVISDataset(davis_root, year="2016", split="val", resolution="480p")
    listed = (davis_root / "ImageSets/2016/val.txt").read_text().split()
    assert ds.names == listed and len(ds) == 20
    seqs = list(ds)
    assert sum(len(s) for s in seqs) == 1376  # SOURCE.md: 1376 val frames
    for s in seqs:
        assert s.size == (480, 854) and s.object_ids == [1] and s.num_objects == 1
        assert len(s.frame_paths) == len(s.mask_paths) and None not in s.mask_paths
        assert [p.stem for p in s.frame_paths] == [p.stem for p in s.mask_paths]
    s = ds["blackswan"]
    assert ds[0] is s  # cached: one VideoSequence per name
    idx = [len(s) - 1, 0, 7]
    frames, masks = s.load_frames(idx), s.load_masks(idx)
    assert frames.shape == (3, 480, 854, 3) and frames.dtype == np.uint8
    assert masks.shape == (3, 480, 854) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 1}
    # The subset is exactly those frames: compare with decoding the files directly.
    direct = np.asarray(Image.open(s.frame_paths[7]).convert("RGB"))
    np.testing.assert_array_equal(frames[2], direct)
    raw = np.asarray(Image.open(s.mask_paths[idx[0]]))
    np.testing.assert_array_equal(masks[0], (raw > 127).astype(np.uint8))
    tensor = frames_to_tensor(frames)
    assert tuple(tensor.shape) == (3, 3, 480, 854) and tensor.dtype.is_floating_point
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    assert abs(float(tensor[2, 0, 5, 9]) - direct[5, 9, 0] / 255.0) < 1e-6


def test_davis2016_train_real_and_resolution_error(davis_root: Path) -> None:
    ds = open_video_dataset("DAVIS-2016:train", davis_root.parent, resolution="240p")
    assert len(ds) == 30 and ds.names == (davis_root / "ImageSets/2016/train.txt").read_text().split()
    assert sum(len(s) for s in ds) == 2079  # SOURCE.md: 2079 train frames
    s = ds[0]
    assert s.size == (240, 427) and s.num_objects == 1
    masks = s.load_masks([0, len(s) // 2])
    assert set(np.unique(masks).tolist()) == {0, 1}
    assert (masks[0] == 1).any()  # first frame holds the object
    # Train is only stored at 240p: asking for 480p names the missing folder and the fix.
    with pytest.raises(FileNotFoundError) as exc:
        DAVISDataset(davis_root, year="2016", split="train", resolution="480p")
    assert_names(exc, davis_root / "JPEGImages" / "480p" / ds.names[0])
    assert "240p" in str(exc.value)


# ----------------------------------------------------------------------------- DAVIS 2017 fixture
def test_davis2017_palette_void_three_objects(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "D17")
    ds = DAVISDataset(root, year=2017, split="val", resolution="480p")
    assert ds.names == ["dance", "walk"]
    s = ds["walk"]
    assert isinstance(s, VideoSequence) and len(s) == 5 and s.size == (H, W)
    assert s.object_ids == [1, 2, 3] and s.num_objects == 3 and s.first_frame == {1: 0, 2: 0, 3: 0}
    masks = s.load_masks([3, 1])
    np.testing.assert_array_equal(masks[0], three_objects(3))
    np.testing.assert_array_equal(masks[1], three_objects(1))
    assert 255 in masks  # void kept
    frames = s.load_frames([4, 0])
    assert frames.shape == (2, H, W, 3)
    assert abs(int(frames[0].mean()) - 160) <= 2 and int(frames[1].mean()) <= 2
    np.testing.assert_array_equal(s.load_frames()[[4, 0]], frames)
    with pytest.raises(IndexError):
        s.load_frames([5])


def test_year_2016_collapses_objects(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "D", year="2016", seqs=("dance",))
    s = DAVISDataset(root, year="2016", split="val", resolution="480p")[0]
    assert s.object_ids == [1]
    m = s.load_masks([2])[0]
    expected = np.where(three_objects(2) == 255, 255, (three_objects(2) > 0).astype(np.uint8))
    np.testing.assert_array_equal(m, expected)


# ----------------------------------------------------------------------------- YouTube-VOS fixture
def test_youtube_vos_train_every_fifth_and_mid_video_object(tmp_path: Path) -> None:
    ds = YouTubeVOSDataset(make_youtube(tmp_path / "YT", "train"), split="train")
    assert ds.names == ["vid1"] and len(ds) == 1
    s = ds["vid1"]
    assert len(s) == 20 and s.object_ids == [1, 3] and s.num_objects == 2
    assert s.first_frame == {1: 0, 3: 10}
    assert s.annotated == [0, 5, 10, 15]
    assert all((p is None) == (i % 5 != 0) for i, p in enumerate(s.mask_paths))
    masks = s.load_masks([10, 3])
    assert set(np.unique(masks[0]).tolist()) == {0, 1, 3}
    assert (masks[1] == 255).all()  # no annotation → all void, never background
    frames = s.load_frames([19])
    assert abs(int(frames.mean()) - 190) <= 2


def test_youtube_vos_valid_first_appearance_only(tmp_path: Path) -> None:
    ds = open_video_dataset("YouTube-VOS:valid", make_youtube(tmp_path / "YouTube-VOS", "valid").parent,
                            resolution="480p")
    s = ds[0]
    assert s.annotated == [0, 10] and s.first_frame == {1: 0, 3: 10}
    m = s.load_mask(10)
    assert (m == 3).any() and not (m == 1).any()


# ----------------------------------------------------------------------------- static layouts
def _pair(img_path: Path, mask_path: Path, labels: np.ndarray, mode: str = "L") -> None:
    save_jpg(img_path, 128, labels.shape)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        write_label_map(mask_path, labels)
    elif mode == "RGB":
        Image.fromarray(np.repeat(labels[..., None], 3, axis=2)).save(mask_path)
    else:
        Image.fromarray(labels).save(mask_path)


def test_static_layouts(tmp_path: Path) -> None:
    ids = np.zeros((H, W), np.uint8)
    ids[2:10, 2:10], ids[12:20, 12:30] = 1, 2
    binary255 = (ids > 0).astype(np.uint8) * 255
    grey = np.where(ids > 0, 200, 40).astype(np.uint8)  # JPEG-ish saliency: not exactly 0/255
    grey[0, 0], grey[0, 1] = 127, 128  # threshold 127: 127 → bg, 128 → object
    want_bin = (ids > 0).astype(np.uint8)
    want_grey = want_bin.copy()
    want_grey[0, 0], want_grey[0, 1] = 0, 1
    voc = ids.copy()
    voc[ids == 2] = 3
    voc[11, :] = 255

    # (a) images/ + masks/ with instance ids
    _pair(tmp_path / "a/images/x1.jpg", tmp_path / "a/masks/x1.png", ids)
    # (b) MSRA10K: side by side, 0/255
    _pair(tmp_path / "b/m1.jpg", tmp_path / "b/m1.png", binary255)
    _pair(tmp_path / "b/m2.jpg", tmp_path / "b/m2.png", binary255)
    # (c) ECSSD with grey saliency values
    _pair(tmp_path / "c/images/0001.jpg", tmp_path / "c/ground_truth_mask/0001.png", grey)
    # (d) DUTS with an RGB 0/255 mask
    _pair(tmp_path / "d/DUTS-TR-Image/s1.jpg", tmp_path / "d/DUTS-TR-Mask/s1.png", binary255, "RGB")
    # (e) PASCAL VOC: palette, 255 boundary; an image without a mask is not part of the set
    _pair(tmp_path / "e/JPEGImages/2007_1.jpg", tmp_path / "e/SegmentationObject/2007_1.png", voc, "P")
    save_jpg(tmp_path / "e/JPEGImages/2007_2.jpg", 0)

    cases = {"a": ("images-masks", ids), "b": ("msra", want_bin), "c": ("ecssd", want_grey),
             "d": ("duts", want_bin), "e": ("voc", voc)}
    for sub, (layout, want) in cases.items():
        ds = StaticImageFolder(tmp_path / sub)
        assert ds.layout == layout, sub
        assert len(ds) == (2 if sub == "b" else 1), sub
        image, labels, name = ds[0]
        assert image.shape == (H, W, 3) and image.dtype == np.uint8, sub
        assert labels.dtype == np.uint8, sub
        np.testing.assert_array_equal(labels, want, err_msg=sub)
        assert name == ds.names[0]
    assert StaticImageFolder(tmp_path / "b").names == ["m1", "m2"]


def test_static_real_sets(static_root: Path) -> None:
    horse = open_static_dataset("weizmann-horse", static_root.parent)
    assert horse.layout == "images-masks" and len(horse) == 328
    image, labels, name = horse[0]
    assert labels.shape == image.shape[:2] and set(np.unique(labels).tolist()) == {0, 1}
    coco = StaticImageFolder(static_root / "coco-panoptic-200")
    assert len(coco) == 198
    _, labels, _ = coco[0]
    assert labels.max() >= 1 and 255 not in labels  # instance ids, no void


# ----------------------------------------------------------------------------- mask I/O
def test_label_map_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, size=(H, W)).astype(np.uint8)
    labels[0] = 255
    path = tmp_path / "out" / "00000.png"
    write_label_map(path, labels)
    with Image.open(path) as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_label_map(path), labels)
    write_label_map(path, np.zeros((H, W), np.uint8))  # overwrite in place, atomically
    assert read_label_map(path).max() == 0
    assert [p.name for p in path.parent.iterdir()] == ["00000.png"]  # no temp files left behind
    with pytest.raises(ValueError) as exc:
        write_label_map(tmp_path / "bad.png", np.zeros((2, H, W)))
    assert_names(exc, tmp_path / "bad.png")
    # 0/255 grey (DAVIS 2016) → {0,1}; grey ids are kept as ids.
    Image.fromarray((labels == 1).astype(np.uint8) * 255).save(tmp_path / "bin.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "bin.png"), (labels == 1).astype(np.uint8))
    Image.fromarray(np.minimum(labels, 7)).save(tmp_path / "ids.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "ids.png"), np.minimum(labels, 7))


# ----------------------------------------------------------------------------- bad input
def test_davis_missing_frame_and_sequence(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "D17")
    (root / "JPEGImages/480p/dance/00003.jpg").unlink()
    ds = DAVISDataset(root, year="2017", split="val", resolution="480p")
    with pytest.raises(FileNotFoundError) as exc:
        ds["dance"]
    assert_names(exc, root / "JPEGImages/480p/dance/00003.jpg")
    assert ds["walk"].num_objects == 3  # other sequences still usable
    (root / "ImageSets/2017/val.txt").write_text("dance\nghost\n")
    with pytest.raises(FileNotFoundError) as exc:
        DAVISDataset(root, year="2017", split="val", resolution="480p")
    assert_names(exc, root / "JPEGImages/480p/ghost")
    with pytest.raises(FileNotFoundError) as exc:
        DAVISDataset(root, year="2017", split="test-dev", resolution="480p")
    assert_names(exc, root / "ImageSets/2017/test-dev.txt")


def test_davis_size_mismatch(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "D17")
    first = root / "Annotations/480p/dance/00000.png"
    write_label_map(first, three_objects(0, size=(H + 2, W)))
    later = root / "Annotations/480p/walk/00002.png"
    write_label_map(later, three_objects(0, size=(H, W - 4)))
    frame = root / "JPEGImages/480p/walk/00004.jpg"
    save_jpg(frame, 0, size=(H, W + 8))
    ds = DAVISDataset(root, year="2017", split="val", resolution="480p")
    with pytest.raises(ValueError) as exc:
        ds["dance"]  # caught from the headers when the sequence is opened
    assert_names(exc, first)
    walk = ds["walk"]
    with pytest.raises(ValueError) as exc:
        walk.load_masks([1, 2])
    assert_names(exc, later)
    with pytest.raises(ValueError) as exc:
        walk.load_frames([4])
    assert_names(exc, frame)


def test_corrupt_files(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "D17")
    bad_frame = root / "JPEGImages/480p/walk/00002.jpg"
    bad_frame.write_bytes(b"not a jpeg at all")
    truncated = root / "JPEGImages/480p/walk/00003.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    bad_mask = root / "Annotations/480p/walk/00001.png"
    bad_mask.write_bytes(b"\x89PNG garbage")
    bad_first = root / "JPEGImages/480p/dance/00000.jpg"
    bad_first.write_bytes(b"")
    ds = DAVISDataset(root, year="2017", split="val", resolution="480p")
    walk = ds["walk"]
    for path, call in ((bad_frame, lambda: walk.load_frames([2])),
                       (truncated, lambda: walk.load_frames([3])),
                       (bad_mask, lambda: walk.load_masks([1])),
                       (bad_first, lambda: ds["dance"])):
        with pytest.raises(ValueError) as exc:
            call()
        assert_names(exc, path)
        assert "cannot read" in str(exc.value)


def test_empty_first_mask_and_too_many_objects(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "D17")
    first = root / "Annotations/480p/dance/00000.png"
    write_label_map(first, np.where(three_objects(0) == 255, 255, 0).astype(np.uint8))  # void only
    ds = DAVISDataset(root, year="2017", split="val", resolution="480p")
    with pytest.raises(ValueError) as exc:
        ds["dance"]
    assert_names(exc, first)
    assert "no object" in str(exc.value)
    assert DAVISDataset(root, year="2017", split="val", resolution="480p")["walk"].num_objects == 3  # default cap 10
    with pytest.raises(ValueError) as exc:
        DAVISDataset(root, year="2017", split="val", resolution="480p", max_objects=2)["walk"]
    assert_names(exc, root / "Annotations/480p/walk/00000.png")
    assert "max_objects=2" in str(exc.value)


def test_youtube_vos_bad_input(tmp_path: Path) -> None:
    root = make_youtube(tmp_path / "YT", "train")
    d = root / "train"
    with pytest.raises(FileNotFoundError) as exc:
        YouTubeVOSDataset(root, split="valid")
    assert_names(exc, root / "valid/meta.json")
    with pytest.raises(ValueError) as exc:
        YouTubeVOSDataset(root, split="train", max_objects=1)["vid1"]
    assert_names(exc, d / "meta.json")
    # Object 3 declared from frame 5, but its frame-5 annotation does not hold it.
    meta = json.loads((d / "meta.json").read_text())
    meta["videos"]["vid1"]["objects"]["3"]["frames"].insert(0, "00005")
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as exc:
        YouTubeVOSDataset(root, split="train")["vid1"]
    assert_names(exc, d / "Annotations/vid1/00005.png")
    assert YouTubeVOSDataset(root, split="train", strict=False)["vid1"].first_frame[3] == 5
    (d / "JPEGImages/vid1/00015.jpg").unlink()  # annotation without its frame
    with pytest.raises(FileNotFoundError) as exc:
        YouTubeVOSDataset(root, split="train")["vid1"]
    assert_names(exc, d / "JPEGImages/vid1/00015.jpg")
    meta["videos"]["ghost"] = meta["videos"]["vid1"]
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError) as exc:
        YouTubeVOSDataset(root, split="train")
    assert_names(exc, d / "JPEGImages/ghost")
    (d / "meta.json").write_text("{not json")
    with pytest.raises(ValueError) as exc:
        YouTubeVOSDataset(root, split="train")
    assert_names(exc, d / "meta.json")


def test_static_bad_input(tmp_path: Path) -> None:
    ids = np.zeros((H, W), np.uint8)
    ids[4:12, 4:12] = 1
    root = tmp_path / "set"
    _pair(root / "images/a.jpg", root / "masks/a.png", ids)
    _pair(root / "images/b.jpg", root / "masks/b.png", ids)
    save_jpg(root / "images/c.jpg", 0)  # image without mask
    with pytest.raises(FileNotFoundError) as exc:
        StaticImageFolder(root)
    assert_names(exc, root / "masks/c.png")
    (root / "images/c.jpg").unlink()
    Image.fromarray(ids).save(root / "masks/d.png")  # mask without image
    with pytest.raises(FileNotFoundError) as exc:
        StaticImageFolder(root)
    assert_names(exc, root / "images/d.jpg")
    (root / "masks/d.png").unlink()
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(root / "masks/b.png")
    (root / "images/a.jpg").write_bytes(b"\xff\xd8 broken")
    ds = StaticImageFolder(root)
    with pytest.raises(ValueError) as exc:
        ds[0]
    assert_names(exc, root / "images/a.jpg")
    with pytest.raises(ValueError) as exc:
        ds[1]
    assert_names(exc, root / "masks/b.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as exc:
        StaticImageFolder(tmp_path / "empty")
    assert_names(exc, tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as exc:
        StaticImageFolder(tmp_path / "nowhere")
    assert_names(exc, tmp_path / "nowhere")
