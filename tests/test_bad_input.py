"""Bad input, surface by surface: every command and public function refuses it at the boundary with
one line naming the culprit (file or argument) and the fix, exits non-zero without a traceback, and
changes no file outside its output folder (inputs are hashed before and after)."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import copy_davis
from kmnlib import baselines, evaluate, train
from kmnlib.checkpoints import load_checkpoint, load_model, save_checkpoint
from kmnlib.config import MINI, TEST
from kmnlib.data import DAVISDataset, StaticImageFolder, YouTubeVOSDataset
from kmnlib.data.masks import read_label_map, write_label_map
from kmnlib.inference import segment_video
from kmnlib.model import build_model, load_stm_checkpoint
from kmnlib.study import runner
from kmnlib.synthesis import hide_and_seek, synthesize_clip

FILL = (0.5, 0.5, 0.5)
AUG = MINI.pretrain.augment


def _digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (symlinks followed)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Unchanged:
    """``with Unchanged(a, b):`` asserts no file under a, b was added, removed or changed."""

    def __init__(self, *roots: Path) -> None:
        self.roots = roots

    def __enter__(self) -> "Unchanged":
        self.before = _digest(*self.roots)
        return self

    def __exit__(self, *exc) -> None:
        assert _digest(*self.roots) == self.before, "an input file changed"


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def davis(tmp_path, davis_root) -> Path:
    """A DAVIS-2016 val layout with two real sequences cut to 5 frames (a copy: tests may break it)."""
    return copy_davis(davis_root, tmp_path / "DAVIS-2016", ["blackswan", "car-shadow"], 5)


@pytest.fixture
def results(tmp_path, davis) -> Path:
    """Perfect results (the ground truth as palette ids) for the small DAVIS copy."""
    res = tmp_path / "res"
    for p in (davis / "Annotations" / "480p").rglob("*.png"):
        write_label_map(res / p.parent.name / p.name, read_label_map(p, binary=True))
    return res


def _evaluate(capsys, davis: Path, res: Path, *extra: str) -> int:
    return evaluate.main(["--davis", str(davis), "--results", str(res), *extra])


# --------------------------------------------------------------------------- python -m kmnlib.evaluate
def test_evaluate_accepts_good_results(capsys, davis, results, tmp_path) -> None:
    with Unchanged(davis, results):
        assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 0
    assert (tmp_path / "ev" / "global_results.csv").is_file()


def test_evaluate_refuses_interpolated_grey_masks(capsys, davis, results, tmp_path) -> None:
    # A 0/255 mask resized with bilinear interpolation: grey levels on its edges.
    path = results / "blackswan" / "00002.png"
    gt = read_label_map(path)
    small = Image.fromarray((gt * 255).astype(np.uint8)).resize((427, 240), Image.BILINEAR)
    small.resize((854, 480), Image.BILINEAR).save(path)
    with Unchanged(davis, results):
        assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(path), "nearest-neighbour")
    assert not (tmp_path / "ev" / "global_results.csv").exists()


def test_evaluate_refuses_an_id_the_sequence_does_not_have(capsys, davis, results, tmp_path) -> None:
    path = results / "car-shadow" / "00003.png"
    lab = read_label_map(path)
    lab[:10, :10] = 3
    write_label_map(path, lab)
    with Unchanged(davis, results):
        assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(path), "id(s) 3", "1 object")


def test_evaluate_out_is_an_existing_file(capsys, davis, results, tmp_path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("mine")
    with Unchanged(davis, results, target):
        assert _evaluate(capsys, davis, results, "--out", str(target)) == 2
    _one_line_error(capsys, "--out", str(target), "is a file")


def test_evaluate_out_not_writable(capsys, davis, results) -> None:
    with Unchanged(davis, results):
        assert _evaluate(capsys, davis, results, "--out", "/sys/kmn-eval-out") == 2
    _one_line_error(capsys, "--out /sys/kmn-eval-out", "cannot write")


def test_evaluate_out_inside_the_ground_truth(capsys, davis, results) -> None:
    with Unchanged(davis, results):
        assert _evaluate(capsys, davis, results, "--out",
                         str(davis / "Annotations" / "480p")) == 2
    _one_line_error(capsys, "--out", "inside the input")


def test_evaluate_missing_results_folder(capsys, davis, tmp_path) -> None:
    assert _evaluate(capsys, davis, tmp_path / "nope", "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(tmp_path / "nope"), "results folder not found")


def test_evaluate_missing_davis_root(capsys, results, tmp_path) -> None:
    assert _evaluate(capsys, tmp_path / "no-davis", results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(tmp_path / "no-davis"), "sequence list not found")


def test_evaluate_unknown_sequence(capsys, davis, results, tmp_path) -> None:
    assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev"),
                     "--sequences", "bear") == 2
    _one_line_error(capsys, "val.txt", "'bear'")


def test_evaluate_zero_workers(capsys, davis, results) -> None:
    with pytest.raises(SystemExit) as exc:
        _evaluate(capsys, davis, results, "--workers", "0")
    assert exc.value.code == 2
    assert "--workers: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_evaluate_wrong_result_size(capsys, davis, results, tmp_path) -> None:
    path = results / "blackswan" / "00001.png"
    write_label_map(path, read_label_map(path)[::2, ::2])
    assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(path), "--resize-results")


def test_evaluate_missing_result_frame(capsys, davis, results, tmp_path) -> None:
    (results / "blackswan" / "00002.png").unlink()
    assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, "blackswan/00002.png", "result mask missing")


def test_evaluate_16_bit_result_with_large_ids(capsys, davis, results, tmp_path) -> None:
    path = results / "blackswan" / "00001.png"
    Image.fromarray((read_label_map(path).astype(np.uint16) * 300)).save(path)  # 16-bit, ids 0/300
    assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(path))


def test_evaluate_rgb_result(capsys, davis, results, tmp_path) -> None:
    path = results / "blackswan" / "00001.png"
    Image.fromarray(np.repeat(read_label_map(path)[..., None] * 128, 3, axis=2)).save(path)
    assert _evaluate(capsys, davis, results, "--out", str(tmp_path / "ev")) == 2
    _one_line_error(capsys, str(path), "unsupported mask mode 'RGB'")


def test_evaluate_debug_shows_the_traceback(capsys, davis, tmp_path) -> None:
    assert _evaluate(capsys, davis, tmp_path / "nope", "--debug") == 2
    assert "Traceback" in capsys.readouterr().err


# -------------------------------------------------------------------------- python -m kmnlib.baselines
def test_baselines_refuse_to_write_into_the_ground_truth(capsys, davis) -> None:
    with Unchanged(davis):
        assert baselines.main(["--davis", str(davis), "--out",
                               str(davis / "Annotations" / "480p")]) == 2
    _one_line_error(capsys, "--out", "inside the input", str(davis))


def test_baselines_missing_davis(capsys, tmp_path) -> None:
    assert baselines.main(["--davis", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, str(tmp_path / "none"))


def test_baselines_out_is_a_file(capsys, davis, tmp_path) -> None:
    target = tmp_path / "masks"
    target.write_text("mine")
    with Unchanged(davis, target):
        assert baselines.main(["--davis", str(davis), "--out", str(target)]) == 2
    _one_line_error(capsys, "--out", "is a file")


# ------------------------------------------------------------------------------ python -m kmnlib.train
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    torch.set_num_threads(1)
    assert train.main(["--profile", "test", "--stage", "pretrain", "--iterations", "2", "--out",
                       str(out), "--data-root", str(data_root), "--quiet", "--threads", "1"]) == 0
    return out


def test_train_zero_iterations(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        train.main(["--profile", "test", "--stage", "pretrain", "--iterations", "0"])
    assert exc.value.code == 2
    assert "--iterations: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_train_missing_data_root(capsys, tmp_path) -> None:
    assert train.main(["--profile", "test", "--stage", "pretrain", "--data-root",
                       str(tmp_path / "nodata"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    _one_line_error(capsys, str(tmp_path / "nodata"), "data root not found", "--data-root")


def test_train_missing_init(capsys, tmp_path, data_root) -> None:
    assert train.main(["--profile", "test", "--stage", "main", "--init", str(tmp_path / "no.pt"),
                       "--data-root", str(data_root), "--out", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "--init", str(tmp_path / "no.pt"))


def test_train_init_is_not_a_checkpoint(capsys, tmp_path, data_root) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with Unchanged(junk):
        assert train.main(["--profile", "test", "--stage", "main", "--init", str(junk),
                           "--data-root", str(data_root), "--out", str(tmp_path / "o"),
                           "--quiet"]) == 1
    _one_line_error(capsys, str(junk), "cannot read checkpoint")


def test_train_force_without_data_keeps_the_finished_run(capsys, finished_run, tmp_path) -> None:
    with Unchanged(finished_run):
        assert train.main(["--profile", "test", "--stage", "pretrain", "--iterations", "2",
                           "--out", str(finished_run), "--data-root", str(tmp_path / "gone"),
                           "--force", "--quiet"]) == 1
    _one_line_error(capsys, str(tmp_path / "gone"))


def test_train_bogus_device(capsys, tmp_path, data_root) -> None:
    assert train.main(["--profile", "test", "--stage", "pretrain", "--device", "gpu0",
                       "--data-root", str(data_root), "--out", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "device 'gpu0'")


def test_train_out_is_a_file(capsys, tmp_path, data_root) -> None:
    target = tmp_path / "ckpts"
    target.write_text("mine")
    with Unchanged(target):
        assert train.main(["--profile", "test", "--stage", "pretrain", "--out", str(target),
                           "--data-root", str(data_root)]) == 1
    _one_line_error(capsys, "--out", "is a file")


def test_train_unknown_profile(capsys, tmp_path) -> None:
    assert train.main(["--profile", "huge", "--stage", "pretrain", "--out", str(tmp_path)]) == 1
    _one_line_error(capsys, "unknown profile 'huge'")


def test_train_finished_run_with_other_settings(capsys, finished_run, data_root) -> None:
    with Unchanged(finished_run):
        assert train.main(["--profile", "test", "--stage", "pretrain", "--iterations", "3",
                           "--out", str(finished_run), "--data-root", str(data_root),
                           "--quiet"]) == 1
    _one_line_error(capsys, "pretrain.pt", "iterations", "--force")


# ------------------------------------------------------------------------------ python -m kmnlib.study
@pytest.fixture
def earlier_study(tmp_path) -> Path:
    out = tmp_path / "study"
    (out / "notebooks").mkdir(parents=True)
    (out / "stage_times.csv").write_text("notebook,seconds,status,finished_utc\n"
                                         "01_pretrain_static,608,ok,2026-01-01T00:00:00+00:00\n")
    (out / "index.html").write_text("<html>earlier</html>")
    (out / "notebooks" / "01_pretrain_static.html").write_text("<html>report</html>")
    return out


def _study(earlier: Path, *args: str) -> int:
    return runner.main(["--profile", "test", "--out-dir", str(earlier), *args])


def test_study_missing_data_root_touches_nothing(capsys, earlier_study, tmp_path) -> None:
    with Unchanged(earlier_study):
        assert _study(earlier_study, "--params-json",
                      json.dumps({"data_root": str(tmp_path / "nodata")})) == 2
    _one_line_error(capsys, str(tmp_path / "nodata" / "DAVIS-2016"), "KMN_DATA")


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"pretrain.iteratons": 3}', "unknown setting 'iteratons'"),
    ('{"sequences": "blackswan"}', "'sequences': expected a list"),
    ('{"main.iterations": 0}', "main.iterations must be >= 1"),
    ('{"main.iterations": "20"}', "expected int"),
    ('{"inference.sigma": -2}', "inference.sigma must be > 0"),
    ('{"eval_workers": 0}', "'eval_workers': must be >= 1"),
    ('{"seed": 1.5}', "'seed': expected int"),
    ('{"pretrain.has_grid": 4}', "override 'pretrain.has_grid': renamed to 'pretrain.hide_grid'"),
    ('{"eval_sets": ["DAVIS-2016:val", "DAVIS-2017:test"]}', "eval_sets names unknown set(s)"),
])
def test_study_bad_overrides_touch_nothing(capsys, earlier_study, data_root, text, needle) -> None:
    if text.startswith("{") and not text.startswith("{not"):
        text = json.dumps({**json.loads(text), "data_root": str(data_root)})
    with Unchanged(earlier_study):
        assert _study(earlier_study, "--params-json", text) == 2
    _one_line_error(capsys, needle)


def test_study_out_dir_is_a_file(capsys, tmp_path, data_root) -> None:
    target = tmp_path / "results.txt"
    target.write_text("mine")
    with Unchanged(target):
        assert runner.main(["--profile", "test", "--out-dir", str(target), "--params-json",
                            json.dumps({"data_root": str(data_root)})]) == 2
    _one_line_error(capsys, "out_dir", "is a file")


def test_study_out_dir_inside_the_data(capsys, tmp_path) -> None:
    data = tmp_path / "data"
    (data / "DAVIS-2016").mkdir(parents=True)
    with Unchanged(data):
        assert runner.main(["--profile", "test", "--out-dir", str(data / "DAVIS-2016" / "x"),
                            "--params-json", json.dumps({"data_root": str(data)})]) == 2
    _one_line_error(capsys, "inside the data root")


def test_study_zero_threads(capsys, earlier_study, data_root) -> None:
    with Unchanged(earlier_study):
        assert _study(earlier_study, "--threads", "0", "--params-json",
                      json.dumps({"data_root": str(data_root)})) == 2
    _one_line_error(capsys, "'threads': must be >= 1")


# ---------------------------------------------------------------------------- public API: inference
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TEST.model).eval()


def _clip(davis_root: Path):
    seq = DAVISDataset(davis_root, "2016", "val", "480p")["blackswan"]
    frames = torch.from_numpy(seq.load_frames(range(3))).permute(0, 3, 1, 2)[:, :, ::4, ::4]
    return frames.float().div(255).contiguous(), torch.from_numpy(seq.load_mask(0))[::4, ::4].long()


def test_segment_video_nan_frame(tiny_model, davis_root) -> None:
    frames, mask = _clip(davis_root)
    frames[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"frame\(s\) \[2\] hold NaN"):
        segment_video(tiny_model, frames, mask, sigma=3.5, mem_every=5)


def test_segment_video_integer_frames_other_than_uint8(tiny_model, davis_root) -> None:
    frames, mask = _clip(davis_root)
    with pytest.raises(ValueError, match="float tensor in \\[0,1\\] or a uint8 tensor"):
        segment_video(tiny_model, (frames * 65535).to(torch.int32), mask, sigma=3.5, mem_every=5)


def test_segment_video_uint8_frames_equal_float_frames(tiny_model, davis_root) -> None:
    frames, mask = _clip(davis_root)
    as_bytes = (frames * 255).round().to(torch.uint8)
    a, _ = segment_video(tiny_model, as_bytes, mask, sigma=3.5, mem_every=5)
    b, _ = segment_video(tiny_model, as_bytes.float() / 255, mask, sigma=3.5, mem_every=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw,match", [({"sigma": 0.0, "mem_every": 5}, "sigma must be a positive"),
                                      ({"sigma": float("nan"), "mem_every": 5}, "sigma"),
                                      ({"sigma": 3.5, "mem_every": 0}, "mem_every must be")])
def test_segment_video_bad_read_settings(tiny_model, davis_root, kw, match) -> None:
    frames, mask = _clip(davis_root)
    with pytest.raises(ValueError, match=match):
        segment_video(tiny_model, frames, mask, **kw)


# ---------------------------------------------------------------------------- public API: synthesis
def _image():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 10:40] = 1
    return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mask


def test_hide_and_seek_nan_image() -> None:
    image, mask = _image()
    bad = image.astype(np.float32) / 255
    bad[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="image holds NaN"):
        hide_and_seek(bad, mask, grid=4, p=0.3, rng=np.random.default_rng(0), fill=FILL)


def test_hide_and_seek_float_image_not_in_unit_range() -> None:
    image, mask = _image()
    with pytest.raises(ValueError, match="not in \\[0,1\\].*divide by 255"):
        hide_and_seek(image.astype(np.float32), mask, grid=4, p=0.3,
                      rng=np.random.default_rng(0), fill=FILL)


def test_hide_and_seek_bad_fill_and_probability() -> None:
    image, mask = _image()
    with pytest.raises(ValueError, match="fill must be an RGB triple"):
        hide_and_seek(image, mask, grid=4, p=0.3, rng=np.random.default_rng(0), fill=(0, 0, 128))
    with pytest.raises(ValueError, match="hiding probability"):
        hide_and_seek(image, mask, grid=4, p=1.5, rng=np.random.default_rng(0), fill=FILL)


def test_synthesize_clip_16_bit_image() -> None:
    image, mask = _image()
    with pytest.raises(ValueError, match="dtype uint16"):
        synthesize_clip(image.astype(np.uint16) * 256, mask, size=32, n_frames=3, hide_p=0.0,
                        rng=np.random.default_rng(0), grid=4, max_objects=3, aug=AUG, fill=FILL)


@pytest.mark.parametrize("kw,name", [({"size": 0}, "size"), ({"max_objects": 0}, "max_objects"),
                                     ({"n_frames": 0}, "n_frames")])
def test_synthesize_clip_zero_counts(kw, name) -> None:
    image, mask = _image()
    args = dict(size=32, n_frames=3, hide_p=0.0, rng=np.random.default_rng(0), grid=4,
                max_objects=3, aug=AUG, fill=FILL)
    args.update(kw)
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        synthesize_clip(image, mask, **args)


def test_synthesize_clip_float_mask() -> None:
    image, mask = _image()
    with pytest.raises(ValueError, match="integer label map"):
        synthesize_clip(image, mask.astype(np.float32), size=32, n_frames=3, hide_p=0.0,
                        rng=np.random.default_rng(0), grid=4, max_objects=3, aug=AUG, fill=FILL)


# ------------------------------------------------------------------------------ dataset readers
def test_davis_reader_missing_root_and_split(tmp_path, davis) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        DAVISDataset(tmp_path / "none", "2016", "val", "480p")
    with pytest.raises(FileNotFoundError, match="ImageSets/2016/test.txt"):
        DAVISDataset(davis, "2016", "test", "480p")


def test_davis_reader_mask_size_mismatch(davis) -> None:
    path = davis / "Annotations" / "480p" / "blackswan" / "00000.png"
    Image.open(path).resize((100, 50)).save(path)
    with pytest.raises(ValueError, match=f"{path}: mask size 50x100 differs"):
        DAVISDataset(davis, "2016", "val", "480p")["blackswan"]


def test_youtube_vos_corrupt_meta(tmp_path) -> None:
    root = tmp_path / "YT" / "valid"
    root.mkdir(parents=True)
    (root / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match=f"{root / 'meta.json'}: not a YouTube-VOS meta file"):
        YouTubeVOSDataset(tmp_path / "YT", "valid")


def test_static_folder_unknown_layout(tmp_path) -> None:
    (tmp_path / "set" / "pictures").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{tmp_path / 'set'}: unrecognised static-image layout"):
        StaticImageFolder(tmp_path / "set")


def test_16_bit_mask_with_ids_over_255(tmp_path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.full((4, 4), 700, np.uint16)).save(path)
    with pytest.raises(ValueError, match=f"{path}: mask ids exceed 255"):
        read_label_map(path)


# ---------------------------------------------------------------------------- checkpoint loaders
def test_checkpoint_junk_and_wrong_content(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=f"{junk}: cannot read checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=f"{other}: not a kmn-study training checkpoint"):
        load_checkpoint(other)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_checkpoint_with_code_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Evil()}, fh)
    with pytest.raises(ValueError, match=f"{path}: cannot read checkpoint"):
        load_checkpoint(path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_checkpoint_of_an_unknown_network(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "odd.pt", {"model": {}, "profile": {"model": {
        "backbone": "vgg16"}}})
    with pytest.raises(ValueError, match=f"{path}: cannot build its network.*vgg16"):
        load_model(path)


def test_stm_checkpoint_with_wrong_keys(tmp_path) -> None:
    path = tmp_path / "STM_weights.pth"
    torch.save({"module.Encoder_M.conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=f"{path}: not an official STM"):
        load_stm_checkpoint(path)
