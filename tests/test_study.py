"""kmnlib.study: the papermill runner (failure handling, kernel) and a smoke run of every notebook."""
from __future__ import annotations

import json

import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from kmnlib import report, study
from kmnlib.config import get_profile

PARAMS = ('profile = "mini"\ndata_root = None\nout_dir = None\nseed = None\ndevice = "cpu"\n'
          'force = False')


def _notebook(path: Path, body: str) -> None:
    params = new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def _outputs_text(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return "".join(o.get("text", "") + str(o.get("evalue", "")) for c in nb.cells
                   if c.cell_type == "code" for o in c.get("outputs", []))


def test_runner_stops_at_a_failing_notebook_and_keeps_earlier_outputs(tmp_path, monkeypatch,
                                                                      capsys) -> None:
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    nbs.mkdir()
    _notebook(nbs / "01_pretrain_static.ipynb",
              "import sys, pathlib\nprint('KERNEL', sys.executable)\n"
              "pathlib.Path(out_dir, 'ran_01').write_text(str(extra))")
    _notebook(nbs / "02_train_video.ipynb", "raise RuntimeError('boom in 02')")
    _notebook(nbs / "03_evaluate.ipynb", "import pathlib\npathlib.Path(out_dir, 'ran_03').touch()")
    # Outputs of an earlier, successful run of 02 must survive the failing run.
    old = out / "notebooks" / "02_train_video.html"
    old.parent.mkdir(parents=True)
    old.write_text("earlier report")
    monkeypatch.setattr(study, "NOTEBOOK_DIR", nbs)

    rc = study.main(["--profile", "test", "--out-dir", str(out), "--only", "01_pretrain_static",
                     "02_train_video", "03_evaluate", "--params-json", '{"extra": 41}'])
    assert rc == 1
    assert "boom in 02" in capsys.readouterr().err
    assert (out / "ran_01").read_text() == "41"  # --params-json reached the notebook
    assert not (out / "ran_03").exists()          # the chain stopped
    nb_dir = out / "notebooks"
    assert (nb_dir / "01_pretrain_static.html").is_file()
    # The kernel is this interpreter (the venv's), not some global python3.
    assert f"KERNEL {sys.executable}" in _outputs_text(nb_dir / "01_pretrain_static.ipynb")
    assert old.read_text() == "earlier report"
    assert not (nb_dir / "02_train_video.ipynb").exists()
    assert "boom in 02" in _outputs_text(nb_dir / "02_train_video.failed.ipynb")
    times = pd.read_csv(out / "stage_times.csv").set_index("notebook")
    assert times.loc["01_pretrain_static", "status"] == "ok"
    assert times.loc["02_train_video", "status"] == "failed"
    assert "03_evaluate" not in times.index
    index = (out / "index.html").read_text()
    assert 'href="notebooks/01_pretrain_static.html"' in index and "failed run" in index
    assert not list(nb_dir.glob(".*running*"))


def test_relative_paths_mean_the_same_to_runner_and_notebooks(tmp_path, monkeypatch) -> None:
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_pretrain_static.ipynb",
              "import pathlib\npathlib.Path(out_dir, 'from_notebook').write_text(data_root)")
    monkeypatch.setattr(study, "NOTEBOOK_DIR", nbs)
    monkeypatch.chdir(tmp_path)  # notebooks execute in nbs/, the study starts from tmp_path
    (tmp_path / "mydata").mkdir()
    rc = study.main(["--profile", "test", "--out-dir", "rel/out", "--only", "01_pretrain_static",
                     "--params-json", '{"data_root": "mydata"}'])
    assert rc == 0
    out = tmp_path / "rel" / "out"
    assert (out / "from_notebook").read_text() == str(tmp_path / "mydata")
    assert (out / "notebooks" / "01_pretrain_static.html").is_file()
    assert not (nbs / "rel").exists()


def test_runner_rejects_bad_arguments(tmp_path, capsys) -> None:
    assert study.main(["--profile", "test", "--out-dir", str(tmp_path), "--only", "07_x"]) == 2
    assert "unknown notebook" in capsys.readouterr().err
    assert study.main(["--profile", "nope", "--out-dir", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        study.main(["--profile", "test", "--params-json", "[1, 2]"])


def test_open_study_checks_its_parameters(tmp_path, davis_root) -> None:
    with pytest.raises(ValueError, match="'big'"):
        study.resolution_height("big")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "DAVIS-2016")):
        study.open_study("test", data_root=tmp_path, out_dir=tmp_path / "o")
    s = study.open_study("test", data_root=davis_root.parent, out_dir=tmp_path / "o",
                         resolution="120p", iterations=3)
    assert s.iterations_of("main") == 3 and study.resolution_height(s.resolution) == 120
    assert "3+3 it" in s.protocol("main") and "120p" in s.protocol("main")


def test_train_arms_side_by_side_equals_one_after_the_other(tmp_path, davis_root, static_root
                                                            ) -> None:
    import torch

    from kmnlib.train import load_checkpoint

    if davis_root.parent != static_root.parent:
        pytest.skip("DAVIS-2016 and static sets must share one data root")
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting, so the two runs compute identically
    try:
        for workers in (1, 2):
            s = study.open_study("test", data_root=davis_root.parent, out_dir=tmp_path / str(workers),
                                 iterations=2, progress=False)
            runs[workers] = study.train_arms(s, "pretrain", workers=workers)
    finally:
        torch.set_num_threads(threads)
    assert list(runs[2]) == list(study.ARMS) == ["HaS", "no HaS"]
    for arm in study.ARMS:
        a, b = (load_checkpoint(runs[w][arm])["model"] for w in (1, 2))
        assert runs[2][arm].parent == tmp_path / "2" / "checkpoints"
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), arm
    # The arms differ (HaS hides cells, no-HaS does not), so the comparison above is not vacuous.
    has, nohas = (load_checkpoint(runs[1][arm])["model"] for arm in study.ARMS)
    assert any(not torch.equal(has[k], nohas[k]) for k in has)
    with pytest.raises(ValueError, match="stage"):
        study.train_arms(s, "finetune")


def test_predict_youtube_vos_writes_a_server_submission(youtube_valid, davis_root, static_root,
                                                        monkeypatch) -> None:
    import zipfile

    from kmnlib.train import train_stage

    yt_root, _ = youtube_valid
    data = yt_root.parent
    (data / "DAVIS-2016").symlink_to(davis_root)
    (data / "static").symlink_to(static_root)
    monkeypatch.setenv("KMN_DATA", str(data))  # open_study exports it; restored after the test
    s = study.open_study("test", data_root=data, out_dir=data.parent / "out", iterations=1,
                         progress=False)
    assert study.youtube_vos_splits(s) == ["valid"]
    ckpt = train_stage(s.profile, "pretrain", s.checkpoints, iterations=1, progress=False)
    res = study.predict_youtube_vos(s, ckpt, "has", sigma=7.0)
    assert not res["cached"] and res["videos"] == 1 and res["s_per_frame"] > 0
    assert res["run_dir"] == s.out_dir / "has_sigma7_youtube-vos-valid"
    with zipfile.ZipFile(res["submission"]) as z:
        names = sorted(n for n in z.namelist() if not n.endswith("/"))  # files, not folder entries
    # The server's layout: Annotations/<video>/<frame>.png for every frame of the split.
    assert names == [f"Annotations/vid/{5 * t:05d}.png" for t in range(9)]
    again = study.predict_youtube_vos(s, ckpt, "has", sigma=7.0)
    assert again["cached"] and again["submission"] == res["submission"]
    assert study.predict_youtube_vos(s, ckpt, "has", sigma=None)["run"] == "has_stm_youtube-vos-valid"


# ----------------------------------------------------------------------------- notebook smoke run
SMOKE_SEQUENCES = ["car-shadow", "motocross-jump"]  # the two shortest val videos (40 frames)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, davis_root, static_root) -> Path:
    if davis_root.parent != static_root.parent:
        pytest.skip("DAVIS-2016 and static sets must share one data root for the notebooks")
    out = tmp_path_factory.mktemp("study") / "test"
    # Inference at the test profile's tiny infer_height; evaluation at the stored 480p.
    # One torch thread: with other jobs on the CPU, two threads per process are far slower.
    params = {"data_root": str(davis_root.parent), "sequences": SMOKE_SEQUENCES, "threads": 1}
    study.run_study("test", out_dir=out, params=params, log=lambda _: None)
    return out


@pytest.mark.slow
def test_every_notebook_runs_and_writes_its_outputs(smoke_run: Path, davis_root: Path) -> None:
    out = smoke_run
    for name in study.NOTEBOOKS:
        assert (out / "notebooks" / f"{name}.ipynb").is_file(), name
        html = (out / "notebooks" / f"{name}.html").read_text()
        assert "<html" in html and "data:image/png;base64" in html, name
        assert not (out / "notebooks" / f"{name}.failed.ipynb").exists()
    times = pd.read_csv(out / "stage_times.csv")
    assert list(times["notebook"]) == list(study.NOTEBOOKS)
    assert (times["status"] == "ok").all() and (times["seconds"] > 0).all()
    index = (out / "index.html").read_text()
    assert all(f'href="notebooks/{n}.html"' in index for n in study.NOTEBOOKS)
    for fig in ("01_pretrain_loss", "01_synthetic_clip_0", "02_main_loss", "03_per_sequence",
                "03_overlays_best_worst", "04_sigma_curve", "05_loss_map_0_hidden",
                "06_fig1_read_weights"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    for log in ("pretrain.csv", "pretrain_nohas.csv", "main_from_pretrain.csv"):
        assert len(pd.read_csv(out / "training" / log)) == 4, log  # one row per iteration
    env = _outputs_text(out / "notebooks" / "01_pretrain_static.ipynb")
    assert repr(sys.executable) in env  # environment_summary printed by the venv kernel
    # Result masks: one PNG per frame of every smoke sequence, at the stored (480p) size.
    for seq in SMOKE_SEQUENCES:
        masks = sorted((out / "has_sigma7" / "masks" / seq).glob("*.png"))
        jpgs = sorted((davis_root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        assert [m.stem for m in masks] == [j.stem for j in jpgs], seq
        with Image.open(masks[-1]) as im, Image.open(jpgs[-1]) as frame:
            assert im.size == frame.size


@pytest.mark.slow
def test_evaluation_tables_agree_with_the_evaluation_csvs(smoke_run: Path) -> None:
    out = smoke_run
    t03 = pd.read_csv(out / "tables" / "03_davis16_val.csv").set_index("folder")
    for folder, row in t03.iterrows():
        g = pd.read_csv(out / folder / "global_results.csv").iloc[0]
        assert row["J&F"] == pytest.approx(100 * g["J&F-Mean"])
        assert row["J"] == pytest.approx(100 * g["J-Mean"]) and 0 <= row["J"] <= 100
        assert row["s/frame"] > 0 and "ours (test)" in row["protocol"]
    ablation = pd.read_csv(out / "tables" / "04_table3_ablation.csv")
    assert sorted(zip(ablation["HaS"], ablation["KM"])) == [(False, False), (False, True),
                                                             (True, False), (True, True)]
    sweep = pd.read_csv(out / "tables" / "04_sigma_sweep.csv")
    sigmas = get_profile("test").inference.sigma_sweep
    assert len(sweep) == len(sigmas) and (sweep["model"] == "HaS").all()
    # Every sweep run was computed up front (03 / evaluate_many in 04) and read back, not rerun.
    assert sweep["cached"].all()
    assert (out / "has_sigma3" / "run.json").is_file()
    assert json.loads((out / "has_sigma3" / "run.json").read_text())["sigma"] == 3.0
    has = sweep[sweep["model"] == "HaS"].set_index("run")["J&F"]
    assert has["has_sigma7"] == pytest.approx(t03.loc["has_sigma7", "J&F"])


@pytest.mark.slow
def test_tables_notebook_shows_the_papers_numbers(smoke_run: Path) -> None:
    out = smoke_run
    t1 = pd.read_csv(out / "tables" / "06_table1.csv")
    paper = t1[t1["source"] == report.PAPER].reset_index(drop=True)
    expect = report.paper_table1()
    for col in ("method", "training_data", "dataset", "J&F", "J", "F", "s/frame"):
        assert paper[col].tolist() == expect[col].tolist(), col
    ours = t1[t1["source"] == "ours"]
    assert len(ours) == 3 and ours["protocol"].str.contains("efficientnet_lite0").all()
    assert np.allclose(ours["J&F"], (ours["J"] + ours["F"]) / 2, atol=0.06)
    t3 = pd.read_csv(out / "tables" / "06_table3.csv")
    p3 = t3[t3["source"] == report.PAPER]
    assert p3["DAVIS16 J&F"].tolist() == [81.3, 87.1, 87.2, 87.6, 86.5]
    assert p3["YouTube-VOS overall"].tolist() == [79.0, 79.5, 81.0, 81.4, 79.4]
    assert (t3["source"] == "ours").sum() == 4
    t2 = pd.read_csv(out / "tables" / "06_table2.csv")
    assert t2["J&F"].dropna().tolist() == [77.2, 72.2] and t2["overall"].dropna().tolist() == [81.4,
                                                                                                79.4]
    regions = pd.read_csv(out / "tables" / "05_loss_by_region.csv")
    means = regions[regions["clip"] == "mean"].set_index("kind")
    assert set(means.index) == {"plain", "hidden"}
    assert np.isnan(means.loc["plain", "hidden_edge_loss"])  # no hidden cells without hiding
    assert np.isfinite(means.loc["hidden", "gt_boundary_loss"])
