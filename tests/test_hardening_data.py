"""Hardening round 2, data side: every valid mask encoding reads right (DAVIS-2016 0/1, 0/255,
palette, 8/16-bit; DAVIS-2017 palette and 8/16-bit label ids), ``--resize-results`` refuses another
aspect ratio, and unclear messages name the culprit and the fix (split-list BOM / stray characters,
an unreadable ground-truth folder, JPEG content in a ``.png``, a missing study folder, float64/half
frames, ``hide_and_seek(grid=-3)``, a full disk while writing results). As in test_bad_input.py:
exit status or exception, the message naming the culprit, and inputs hashed before and after."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import copy_davis
from kmnlib import baselines, evaluate
from kmnlib.data import DAVISDataset
from kmnlib.data.masks import read_davis2016_mask, read_label_map, write_label_map
from kmnlib.inference import segment_video
from kmnlib.study import summary
from kmnlib.synthesis import hide_and_seek
from test_bad_input import (FILL, Unchanged, _clip, _digest, _image, _one_line_error,  # noqa: F401
                            tiny_model)

SEQ = "blackswan"
N_FRAMES = 4  # frames 1 and 2 are scored


@pytest.fixture
def d16(tmp_path, davis_root) -> Path:
    """DAVIS-2016 val with one real sequence cut to 4 frames (official 0/255 grey masks)."""
    return copy_davis(davis_root, tmp_path / "DAVIS-2016", [SEQ], N_FRAMES)


def _gt_dir(root: Path) -> Path:
    return root / "Annotations" / "480p" / SEQ


def _objects(root: Path) -> dict[str, np.ndarray]:
    """The swan of every frame as {frame stem: bool (H,W)}, from the official 0/255 masks."""
    return {p.stem: np.asarray(Image.open(p)) > 0 for p in sorted(_gt_dir(root).glob("*.png"))}


def _save_2016(path: Path, obj: np.ndarray, encoding: str) -> None:
    """Write a binary mask in one DAVIS-2016 encoding."""
    if encoding == "grey-0/255":
        Image.fromarray(obj.astype(np.uint8) * 255).save(path)
    elif encoding == "grey-0/1":
        Image.fromarray(obj.astype(np.uint8)).save(path)
    elif encoding == "16bit-0/1":
        Image.fromarray(obj.astype(np.uint16)).save(path)
    elif encoding == "16bit-0/255":
        Image.fromarray(obj.astype(np.uint16) * 255).save(path)
    elif encoding == "16bit-0/65535":
        Image.fromarray(obj.astype(np.uint16) * 65535).save(path)
    elif encoding == "1-bit":
        Image.fromarray(obj.astype(bool)).save(path)
    elif encoding == "palette-ids":
        write_label_map(path, obj.astype(np.uint8))
    elif encoding == "palette-grey-0/255":  # Image.convert("P") of a 0/255 grey mask
        Image.fromarray(obj.astype(np.uint8) * 255).convert("P").save(path)
    else:
        raise AssertionError(encoding)
    with Image.open(path) as im:
        assert im.format == "PNG"


ENCODINGS_2016 = ["grey-0/255", "grey-0/1", "16bit-0/1", "16bit-0/255", "16bit-0/65535", "1-bit",
                  "palette-ids", "palette-grey-0/255"]


def _scores(out: Path) -> tuple[list[str], list[str]]:
    return ((out / "global_results.csv").read_text().splitlines(),
            (out / "per-sequence_results.csv").read_text().splitlines())


# ------------------------------------------------------------- 1. valid encodings read right (2016)
@pytest.mark.parametrize("encoding", ENCODINGS_2016)
def test_davis2016_every_binary_encoding_scores_perfect_results_one(
        capsys, tmp_path, d16, encoding) -> None:
    objects = _objects(d16)
    # The baseline on the official encoding: the reference a re-encoded copy must reproduce.
    assert baselines.main(["--davis", str(d16), "--out", str(tmp_path / "ref" / "masks")]) == 0
    reference = _scores(tmp_path / "ref")
    for stem, obj in objects.items():
        _save_2016(_gt_dir(d16) / f"{stem}.png", obj, encoding)
        _save_2016(_mkdir(tmp_path / "res" / SEQ) / f"{stem}.png", obj, encoding)
    # The dataset reader: object 1 where the swan is, whatever the encoding.
    seq = DAVISDataset(d16, "2016", "val", "480p")[SEQ]
    assert seq.object_ids == [1]
    np.testing.assert_array_equal(seq.load_masks(),
                                  np.stack(list(objects.values())).astype(np.uint8))
    capsys.readouterr()
    with Unchanged(d16, tmp_path / "res"):
        assert evaluate.main(["--davis", str(d16), "--results", str(tmp_path / "res"),
                              "--out", str(tmp_path / "ev")]) == 0
        assert baselines.main(["--davis", str(d16), "--out", str(tmp_path / "bl" / "masks")]) == 0
    glob_lines, seq_lines = _scores(tmp_path / "ev")
    assert glob_lines[1].split(",") == ["1.000", "1.000", "1.000", "0.000", "1.000", "1.000",
                                        "0.000"]
    assert seq_lines[1] == f"{SEQ}_1,1.000,1.000"
    assert _scores(tmp_path / "bl") == reference  # the baseline reads the same first mask
    assert "0.000   0.000" not in capsys.readouterr().out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("values", [(0, 1, 255), (0, 128), (0, 2)])
def test_davis2016_ambiguous_grey_values_are_refused(capsys, tmp_path, d16, values) -> None:
    path = _gt_dir(d16) / "00001.png"
    obj = _objects(d16)["00001"]
    grey = np.where(obj, values[1], 0).astype(np.uint8)
    if len(values) == 3:
        grey[:4] = values[2]
    Image.fromarray(grey).save(path)
    res = tmp_path / "res"
    for p in _gt_dir(d16).glob("*.png"):
        write_label_map(_mkdir(res / SEQ) / p.name, np.zeros_like(obj, np.uint8))
    with Unchanged(d16, res):
        assert evaluate.main(["--davis", str(d16), "--results", str(res),
                              "--out", str(tmp_path / "ev")]) == 2
    line = _one_line_error(capsys, str(path), "values " + ", ".join(map(str, values)),
                           "0/255 grey")
    assert "palette" in line
    assert not (tmp_path / "ev" / "global_results.csv").exists()
    with pytest.raises(ValueError, match="values " + ", ".join(map(str, values))):
        read_davis2016_mask(path)


def test_davis2016_palette_void_stays_void_and_2017_objects_collapse(tmp_path) -> None:
    # A DAVIS-palette mask: ids 1, 2 and void 255 → object 1, void kept; only 0/255 in the DAVIS
    # palette is background + void (255 is drawn in the void colour), not an object.
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 1:3], labels[3:5, 4:6], labels[0] = 1, 2, 255
    write_label_map(tmp_path / "ids.png", labels)
    np.testing.assert_array_equal(read_davis2016_mask(tmp_path / "ids.png"),
                                  np.where(labels == 255, 255, labels > 0).astype(np.uint8))
    void_only = np.where(np.arange(8) < 4, 255, 0).astype(np.uint8)[None].repeat(6, 0)
    write_label_map(tmp_path / "void.png", void_only)
    np.testing.assert_array_equal(read_davis2016_mask(tmp_path / "void.png"), void_only)


# ------------------------------------------------------------- 1. valid encodings read right (2017)
def _make_d17(root: Path, davis_root: Path, encoding: str) -> dict[str, np.ndarray]:
    """DAVIS-2017 val from blackswan: object 1 the swan, object 2 a box, a void border; masks
    written in ``encoding``. Returns {stem: label map}."""
    src = copy_davis(davis_root, root.parent / "src16", [SEQ], N_FRAMES)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{SEQ}\n")
    shutil.copytree(src / "JPEGImages", root / "JPEGImages")
    out = {}
    for t, (stem, obj) in enumerate(_objects(src).items()):
        lab = obj.astype(np.uint8)
        lab[20:80, 30 + 10 * t:120 + 10 * t] = 2
        lab[:3] = 255
        path = _mkdir(root / "Annotations" / "480p" / SEQ) / f"{stem}.png"
        if encoding == "palette":
            write_label_map(path, lab)
        elif encoding == "grey-ids":
            Image.fromarray(lab).save(path)
        elif encoding == "16bit-ids":
            Image.fromarray(lab.astype(np.uint16)).save(path)
        out[stem] = lab
    return out


@pytest.mark.parametrize("encoding", ["palette", "grey-ids", "16bit-ids"])
def test_davis2017_label_encodings_score_perfect_results_one(
        capsys, tmp_path, davis_root, encoding) -> None:
    root = tmp_path / "DAVIS-2017"
    labels = _make_d17(root, davis_root, encoding)
    res = tmp_path / "res"
    for stem, lab in labels.items():
        write_label_map(_mkdir(res / SEQ) / f"{stem}.png", np.where(lab == 255, 0, lab))
    ds = DAVISDataset(root, "2017", "val", "480p")
    assert ds[SEQ].object_ids == [1, 2]
    np.testing.assert_array_equal(ds[SEQ].load_masks(), np.stack(list(labels.values())))
    with Unchanged(root, res):
        assert evaluate.main(["--davis", str(root), "--year", "2017", "--results", str(res),
                              "--out", str(tmp_path / "ev")]) == 0
        assert baselines.main(["--davis", str(root), "--year", "2017",
                               "--out", str(tmp_path / "bl" / "masks")]) == 0
    _, seq_lines = _scores(tmp_path / "ev")
    assert seq_lines[1:] == [f"{SEQ}_1,1.000,1.000", f"{SEQ}_2,1.000,1.000"]
    per = pd.read_csv(tmp_path / "bl" / "per-sequence_results.csv")
    assert per["Sequence"].tolist() == [f"{SEQ}_1", f"{SEQ}_2"] and (per["J-Mean"] > 0.3).all()


# --------------------------------------------------------------------- 2. --resize-results aspect
@pytest.fixture
def perfect(tmp_path, d16) -> Path:
    res = tmp_path / "res"
    for p in _gt_dir(d16).glob("*.png"):
        write_label_map(_mkdir(res / SEQ) / p.name, read_davis2016_mask(p))
    return res


@pytest.mark.parametrize("flag", [["--resize-results"], []])
@pytest.mark.parametrize("shape", ["transposed", "100x100"])
def test_resize_results_refuses_another_aspect_ratio(capsys, tmp_path, d16, perfect, shape,
                                                     flag) -> None:
    # Without the flag too: the size error must not suggest --resize-results, which cannot help.
    path = perfect / SEQ / "00001.png"
    lab = read_label_map(path)
    small = lab.T.copy() if shape == "transposed" else lab[:100, :100]
    write_label_map(path, small)
    with Unchanged(d16, perfect):
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect), *flag,
                              "--out", str(tmp_path / "ev")]) == 2
    size = f"{small.shape[1]}x{small.shape[0]}"
    _one_line_error(capsys, str(path), size, "854x480", "aspect ratio", "ground-truth size")
    assert not (tmp_path / "ev" / "global_results.csv").exists()


def test_resize_results_still_rescales_a_uniform_half(capsys, tmp_path, d16, perfect) -> None:
    for p in (perfect / SEQ).glob("*.png"):
        write_label_map(p, read_label_map(p)[::2, ::2])   # 427x240: half of 854x480
    assert evaluate.main(["--davis", str(d16), "--results", str(perfect), "--resize-results",
                          "--out", str(tmp_path / "ev")]) == 0
    assert float(_scores(tmp_path / "ev")[1][1].split(",")[1]) > 0.9


# -------------------------------------------------------------------------- 3. unclear messages
def test_split_list_bom_and_spaces_are_stripped(capsys, tmp_path, davis_root) -> None:
    root = copy_davis(davis_root, tmp_path / "DAVIS-2016", ["blackswan", "car-shadow"], N_FRAMES)
    val = root / "ImageSets" / "2016" / "val.txt"
    val.write_bytes("\ufeffblackswan\r\n  car-shadow \t\n\n".encode("utf-8"))
    assert DAVISDataset(root, "2016", "val", "480p").names == ["blackswan", "car-shadow"]
    with Unchanged(root):
        assert evaluate.main(["--davis", str(root), "--results", str(root / "Annotations" / "480p"),
                              "--out", str(tmp_path / "ev")]) == 0
    assert _scores(tmp_path / "ev")[1][1:] == ["blackswan_1,1.000,1.000",
                                               "car-shadow_1,1.000,1.000"]


@pytest.mark.parametrize("name", ["black\u200bswan", "black swan"])
def test_split_list_name_not_found_is_shown_with_repr(capsys, tmp_path, d16, perfect, name) -> None:
    (d16 / "ImageSets" / "2016" / "val.txt").write_text(f"{name}\n")
    with Unchanged(d16, perfect):
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect),
                              "--out", str(tmp_path / "ev")]) == 2
    _one_line_error(capsys, repr(name), "not found")
    with pytest.raises(FileNotFoundError, match=repr(name).replace("\\", "\\\\")):
        DAVISDataset(d16, "2016", "val", "480p")


def test_unreadable_ground_truth_folder_says_so(capsys, tmp_path, d16, perfect,
                                                monkeypatch) -> None:
    # Tests run as root, whom chmod does not stop: the folder listing raises as it would for a user.
    folder = _gt_dir(d16)
    real_scandir = os.scandir

    def scandir(path=".", *a):
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path, *a)

    monkeypatch.setattr(os, "scandir", scandir)
    with Unchanged(d16, perfect):
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect),
                              "--out", str(tmp_path / "ev")]) == 2
    line = _one_line_error(capsys, str(folder), "cannot be read", "chmod")
    assert "no ground-truth annotations" not in line
    with Unchanged(d16):
        assert baselines.main(["--davis", str(d16), "--out", str(tmp_path / "bl" / "masks")]) == 2
    _one_line_error(capsys, str(folder), "cannot be read")


def test_unreadable_annotation_folder_in_the_dataset_reader(d16, monkeypatch) -> None:
    folder = _gt_dir(d16)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(PermissionError, match=f"{folder}: annotation folder cannot be read"):
        DAVISDataset(d16, "2016", "val", "480p")[SEQ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder: chmod cannot make one "
                                              "unreadable (the monkeypatched test covers root)")
def test_unreadable_ground_truth_folder_for_real(capsys, tmp_path, d16, perfect) -> None:
    folder = _gt_dir(d16)
    folder.chmod(0)
    try:
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect),
                              "--out", str(tmp_path / "ev")]) == 2
    finally:
        folder.chmod(0o755)
    _one_line_error(capsys, str(folder), "cannot be read")


def _as_jpeg(path: Path) -> None:
    lab = np.asarray(Image.open(path).convert("L"))
    Image.fromarray((lab > 0).astype(np.uint8) * 255).save(path, format="JPEG", quality=90)


def test_jpeg_saved_as_png_result_is_named(capsys, tmp_path, d16, perfect) -> None:
    path = perfect / SEQ / "00002.png"
    _as_jpeg(path)
    with Unchanged(d16, perfect):
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect),
                              "--out", str(tmp_path / "ev")]) == 2
    line = _one_line_error(capsys, str(path), "content is JPEG although named .png",
                           "save masks as PNG")
    assert "interpolation" not in line   # not blamed on a resize


def test_jpeg_saved_as_png_ground_truth_is_named(capsys, tmp_path, d16, perfect) -> None:
    path = _gt_dir(d16) / "00001.png"
    _as_jpeg(path)
    with Unchanged(d16, perfect):
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect),
                              "--out", str(tmp_path / "ev")]) == 2
    _one_line_error(capsys, str(path), "content is JPEG")
    with pytest.raises(ValueError, match="content is JPEG"):
        DAVISDataset(d16, "2016", "val", "480p")[SEQ].load_masks()


def test_summary_missing_or_empty_folder(capsys, tmp_path) -> None:
    assert summary.main([str(tmp_path / "nope")]) == 2
    _one_line_error(capsys, str(tmp_path / "nope"), "results folder not found", "make study")
    empty = _mkdir(tmp_path / "empty")
    (empty / "notes.txt").write_text("mine")
    with Unchanged(tmp_path):
        assert summary.main([str(empty)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(empty) in lines[0] and "holds no study tables" in lines[0]
    assert "No objects to concatenate" not in captured.err
    _mkdir(empty / "tables")
    assert summary.main([str(empty)]) == 2
    _one_line_error(capsys, str(empty), "03_davis16_val.csv", "make study")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_segment_video_converts_float64_and_half_frames(tiny_model, davis_root, dtype) -> None:
    frames, mask = _clip(davis_root)
    ref_probs, ref = segment_video(tiny_model, frames, mask, sigma=3.5, mem_every=5)
    probs, labels = segment_video(tiny_model, frames.to(dtype), mask, sigma=3.5, mem_every=5)
    assert probs.dtype == torch.float32
    if dtype == torch.float64:   # float32(float64(x)) == x: the same frames, the same result
        assert torch.equal(labels, ref)
    else:                        # half rounds the frames: nearly all pixels agree
        assert (labels == ref).float().mean() > 0.99


@pytest.mark.parametrize("grid", [-3, 0, 2.5, True])
def test_hide_and_seek_bad_grid_names_grid(grid) -> None:
    image, mask = _image()
    with pytest.raises(ValueError, match=r"hide_and_seek: grid must be an integer >= 1.*got"):
        hide_and_seek(image, mask, grid=grid, p=0.3, rng=np.random.default_rng(0), fill=FILL)


def test_hide_and_seek_grid_larger_than_the_image() -> None:
    image, mask = _image()   # 64x64
    with pytest.raises(ValueError, match=r"grid=65 .*\(64 pixels\)"):
        hide_and_seek(image, mask, grid=65, p=0.3, rng=np.random.default_rng(0), fill=FILL)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_evaluate_disk_full_is_one_line_and_keeps_earlier_tables(
        capsys, tmp_path, d16, perfect, monkeypatch) -> None:
    out = _mkdir(tmp_path / "ev")
    (out / "global_results.csv").write_text("an earlier run's table\n")
    monkeypatch.setattr(pd.DataFrame, "to_csv", _enospc)
    with Unchanged(d16, perfect, out):
        assert evaluate.main(["--davis", str(d16), "--results", str(perfect),
                              "--out", str(out)]) == 2
    _one_line_error(capsys, str(out), "disk is full", "another output folder")
    assert sorted(p.name for p in out.iterdir()) == ["global_results.csv"]  # no temp files left


def test_baselines_disk_full_is_one_line(capsys, tmp_path, d16, monkeypatch) -> None:
    out = tmp_path / "bl" / "masks"
    monkeypatch.setattr(Image.Image, "save", _enospc)
    with Unchanged(d16):
        assert baselines.main(["--davis", str(d16), "--out", str(out)]) == 2
    _one_line_error(capsys, str(out), "disk is full")
    assert not [p for p in out.rglob("*") if p.is_file()]   # no partial masks or temp files
    assert _digest(tmp_path / "bl") == {}
