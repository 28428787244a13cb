"""The DAVIS evaluation command and the first-frame-copy baseline, end to end.

Real DAVIS-2016 val restricted to two short sequences (40 frames each), plus a small DAVIS-2017-style
tree built here for multi-object, void and missing-object cases.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kmnlib.baselines import first_frame_copy
from kmnlib.data.masks import read_label_map, write_label_map
from kmnlib.evaluate import (GLOBAL_COLUMNS, GLOBAL_CSV, SEQUENCE_COLUMNS, SEQUENCE_CSV,
                             evaluate_davis, evaluate_sequence, main)
from kmnlib.metrics import boundary_f, jaccard

SEQS = ["car-shadow", "motocross-jump"]  # the two shortest val sequences, in val.txt order


def _gt_paths(davis_root: Path, seq: str) -> list[Path]:
    return sorted((davis_root / "Annotations" / "480p" / seq).glob("*.png"))


def _write_results(davis_root: Path, out: Path, seq: str, transform=lambda t, m: m) -> list[Path]:
    """Write GT-derived palette results for one sequence; ``transform(t, labels)`` perturbs them."""
    paths = _gt_paths(davis_root, seq)
    for t, p in enumerate(paths):
        write_label_map(out / seq / p.name, transform(t, read_label_map(p)))
    return paths


# -------------------------------------------------------------------------- real DAVIS-2016
def test_ground_truth_as_results_scores_one_and_csv_format(davis_root, tmp_path):
    # The GT folder itself is a valid result folder (L-mode 0/255 = object 1).
    g, s = evaluate_davis(davis_root, davis_root / "Annotations" / "480p", "2016", "val",
                          out_dir=tmp_path, sequences=SEQS[::-1])
    assert list(g.columns) == GLOBAL_COLUMNS and len(g) == 1
    assert list(s.columns) == SEQUENCE_COLUMNS
    assert s["Sequence"].tolist() == [f"{q}_1" for q in SEQS]   # split order, not argument order
    assert np.allclose(g.to_numpy(dtype=float), [1, 1, 1, 0, 1, 1, 0])
    lines = (tmp_path / GLOBAL_CSV).read_text().splitlines()
    assert lines[0] == ",".join(GLOBAL_COLUMNS)
    assert lines[1].split(",") == ["1.000", "1.000", "1.000", "0.000", "1.000", "1.000", "0.000"]
    lines = (tmp_path / SEQUENCE_CSV).read_text().splitlines()
    assert lines == ["Sequence,J-Mean,F-Mean", "car-shadow_1,1.000,1.000",
                     "motocross-jump_1,1.000,1.000"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_perturbed_results_score_below_one(davis_root, tmp_path):
    res = tmp_path / "res"
    # car-shadow: shift the object 15 px right on every frame; motocross-jump: exact except the
    # first and last frame, which the protocol does not score (so they may be anything).
    _write_results(davis_root, res, SEQS[0], lambda t, m: np.roll(m, 15, axis=1))
    n = len(_write_results(davis_root, res, SEQS[1],
                           lambda t, m: m if 0 < t < 39 else np.zeros_like(m)))
    g, s = evaluate_davis(davis_root, res, "2016", "val", sequences=SEQS)
    per = s.set_index("Sequence")
    assert per.loc["motocross-jump_1"].tolist() == [1.0, 1.0]
    assert 0 < per.loc["car-shadow_1", "J-Mean"] < 1 and 0 < per.loc["car-shadow_1", "F-Mean"] < 1
    # Global = mean over objects; J&F = mean of J-Mean and F-Mean.
    assert g.loc[0, "J-Mean"] == pytest.approx(s["J-Mean"].mean())
    assert g.loc[0, "J&F-Mean"] == pytest.approx((g.loc[0, "J-Mean"] + g.loc[0, "F-Mean"]) / 2)

    # Per-frame scores: frames 1..n-2 only, each equal to the metric on that frame.
    (obj,) = evaluate_sequence(davis_root, res, SEQS[0], "2016")
    gts = _gt_paths(davis_root, SEQS[0])
    assert obj.frames == [p.stem for p in gts[1:-1]] and len(obj.j) == n - 2
    gt5 = read_label_map(gts[5]) == 1
    res5 = read_label_map(res / SEQS[0] / gts[5].name) == 1
    assert obj.j[4] == jaccard(gt5, res5) and obj.f[4] == boundary_f(gt5, res5)



def test_blocks_of_frames_give_the_whole_sequence_scores(davis_root, tmp_path, monkeypatch):
    # evaluate_sequence reads a block of frames at a time (memory); J and F are per frame, so the
    # scores must not depend on the block size — frame-varying results, blocks of 3, 16 and all.
    import kmnlib.evaluate as ev

    res = tmp_path / "res"
    _write_results(davis_root, res, SEQS[0], lambda t, m: np.roll(m, 3 * t - 40, axis=1))
    scores = {}
    for block in (3, 16, 10**6):
        monkeypatch.setattr(ev, "_FRAMES_PER_BLOCK", block)
        (scores[block],) = evaluate_sequence(davis_root, res, SEQS[0], "2016")
    for block in (3, 16):
        assert scores[block].frames == scores[10**6].frames
        assert np.array_equal(scores[block].j, scores[10**6].j)
        assert np.array_equal(scores[block].f, scores[10**6].f)
    assert len(set(np.round(scores[16].j, 6))) > 10   # the scores do vary frame to frame

def test_missing_frame_is_named(davis_root, tmp_path, capsys):
    res = tmp_path / "res"
    paths = _write_results(davis_root, res, SEQS[0])
    (res / SEQS[0] / paths[0].name).unlink()   # the first frame is not scored: not needed
    (res / SEQS[0] / paths[-1].name).unlink()  # nor the last
    g, _ = evaluate_davis(davis_root, res, "2016", "val", sequences=SEQS[:1])
    assert g.loc[0, "J-Mean"] == 1.0
    missing = res / SEQS[0] / paths[7].name
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        evaluate_davis(davis_root, res, "2016", "val", sequences=SEQS[:1])
    rc = main(["--davis", str(davis_root), "--results", str(res), "--sequences", SEQS[0],
               "--out", str(tmp_path / "ev")])
    assert rc == 2 and str(missing) in capsys.readouterr().err
    assert not (tmp_path / "ev" / GLOBAL_CSV).exists()


def test_size_mismatch_refused_unless_resize(davis_root, tmp_path, capsys):
    res = tmp_path / "res"
    # Predictions at 240p (427x240) as the mini study makes them: every other pixel of the GT.
    _write_results(davis_root, res, SEQS[0], lambda t, m: m[::2, ::2])
    with pytest.raises(ValueError, match=r"427x240 differs .* 854x480.*--resize-results"):
        evaluate_davis(davis_root, res, "2016", "val", sequences=SEQS[:1])
    g, _ = evaluate_davis(davis_root, res, "2016", "val", sequences=SEQS[:1], resize_results=True)
    assert 0.9 < g.loc[0, "J-Mean"] < 1.0   # nearest upsampling loses only edge detail
    rc = main(["--davis", str(davis_root), "--results", str(res), "--sequences", SEQS[0],
               "--out", str(tmp_path / "ev"), "--resize-results"])
    out = capsys.readouterr().out
    assert rc == 0 and "J&F-Mean" in out and "car-shadow_1" in out
    assert pd.read_csv(tmp_path / "ev" / GLOBAL_CSV).columns.tolist() == GLOBAL_COLUMNS


def test_result_ids_beyond_the_objects_are_refused(davis_root, tmp_path):
    # As the official DAVIS-2017 evaluation ("an index higher than the number of objects"):
    # a DAVIS-2016 result holding id 2 or 3 is refused, naming the file and the id.
    res = tmp_path / "res"

    def add_blob(t, m):
        m = m.copy()
        m[:20, :20][m[:20, :20] == 0] = 3  # id 3 where the GT is background
        return m

    _write_results(davis_root, res, SEQS[1], add_blob)
    with pytest.raises(ValueError, match=rf"{SEQS[1]}/\d+\.png: holds id\(s\) 3 but the "
                                         rf"sequence has 1 object"):
        evaluate_davis(davis_root, res, "2016", "val", sequences=SEQS[1:])


def test_bad_arguments(davis_root, tmp_path):
    with pytest.raises(ValueError, match=r"val.txt: sequences \[.bear.\] are not in it"):
        evaluate_davis(davis_root, tmp_path, "2016", "val", sequences=["bear"])  # a train sequence
    with pytest.raises(ValueError, match="year"):
        evaluate_davis(davis_root, tmp_path, "2018", "val")
    with pytest.raises(FileNotFoundError, match="results folder"):
        evaluate_davis(davis_root, tmp_path / "nope", "2016", "val")


# ------------------------------------------------------------- small DAVIS-2017-style tree
def _make_davis2017(root: Path, n_frames: int = 6) -> np.ndarray:
    """One sequence 'seqa', 30x40, objects 1 and 2 moving right by one pixel a frame, a void band."""
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("seqa\n")
    labels = np.zeros((n_frames, 30, 40), np.uint8)
    for t in range(n_frames):
        labels[t, 5:15, 3 + t:13 + t] = 1
        labels[t, 18:26, 20 + t:30 + t] = 2
        labels[t, :, 37:] = 255  # void strip
        write_label_map(root / "Annotations" / "480p" / "seqa" / f"{t:05d}.png", labels[t])
        jpg = root / "JPEGImages" / "480p" / "seqa" / f"{t:05d}.jpg"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(jpg)
    return labels


def test_multi_object_void_and_missing_object(tmp_path):
    root, res = tmp_path / "DAVIS", tmp_path / "res"
    labels = _make_davis2017(root)
    for t, lab in enumerate(labels):
        pred = np.where(lab == 2, 0, lab)      # object 2 never predicted
        pred[pred == 255] = 0                  # a prediction never claims void
        write_label_map(res / "seqa" / f"{t:05d}.png", pred)
    g, s = evaluate_davis(root, res, "2017", "val", out_dir=tmp_path / "ev")
    assert s["Sequence"].tolist() == ["seqa_1", "seqa_2"]
    assert s["J-Mean"].tolist() == [1.0, 0.0] and s["F-Mean"].tolist() == [1.0, 0.0]
    assert g.loc[0, "J&F-Mean"] == 0.5 and g.loc[0, "J-Recall"] == 0.5
    # A prediction that also claims the void strip for object 1 is not penalised.
    for t, lab in enumerate(labels):
        write_label_map(res / "seqa" / f"{t:05d}.png", np.where(lab == 255, 1, lab))
    _, s = evaluate_davis(root, res, "2017", "val")
    assert s["J-Mean"].tolist() == [1.0, 1.0] and s["F-Mean"].tolist() == [1.0, 1.0]


def test_first_frame_copy_baseline(tmp_path):
    root, out = tmp_path / "DAVIS", tmp_path / "ffc" / "masks"
    labels = _make_davis2017(root)
    assert first_frame_copy(root, out, year="2017", split="val") == ["seqa"]
    written = sorted((out / "seqa").glob("*.png"))
    assert [p.name for p in written] == [f"{t:05d}.png" for t in range(len(labels))]
    first = np.where(labels[0] == 255, 0, labels[0])
    for p in written:
        im = Image.open(p)
        assert im.mode == "P" and np.array_equal(np.array(im), first)
    (obj1, obj2) = evaluate_sequence(root, out, "seqa", "2017")
    # Objects move one pixel a frame: overlap shrinks frame by frame, so J decreases strictly.
    assert np.all(np.diff(obj1.j) < 0) and np.all(obj1.j < 1) and np.all(obj1.j > 0)
    assert obj1.j[0] == pytest.approx(jaccard(labels[1] == 1, first == 1))
    shutil.rmtree(out)
    with pytest.raises(FileNotFoundError, match="sequence list"):
        first_frame_copy(root, out, year="2016")
