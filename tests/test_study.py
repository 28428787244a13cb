"""The study layer: the papermill runner (failure handling, kernel), settings, training of the arms,
YouTube-VOS packaging, and a smoke run of every notebook."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from kmnlib.checkpoints import load_checkpoint
from kmnlib.config import get_profile
from kmnlib.study import paper, runner, runs, session, training

PARAMS = 'profile = "mini"\noverrides = {}'


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
                                                                      capsys, data_root) -> None:
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    nbs.mkdir()
    _notebook(nbs / "01_pretrain_static.ipynb",
              "import sys, pathlib\nprint('KERNEL', sys.executable)\n"
              "pathlib.Path(overrides['out_dir'], 'ran_01').write_text(str(overrides.get('seed')))")
    _notebook(nbs / "02_train_video.ipynb", "raise RuntimeError('boom in 02')")
    _notebook(nbs / "03_evaluate.ipynb",
              "import pathlib\npathlib.Path(overrides['out_dir'], 'ran_03').touch()")
    # Outputs of an earlier, successful run must survive the failing run: 02's report, the
    # stage times and the index.
    old = out / "notebooks" / "02_train_video.html"
    old.parent.mkdir(parents=True)
    old.write_text("earlier report")
    (out / "stage_times.csv").write_text("notebook,seconds,status,finished_utc\n"
                                         "02_train_video,608.0,ok,2026-01-01T00:00:00+00:00\n")
    (out / "index.html").write_text("earlier index")
    before = {p: p.read_bytes() for p in (old, out / "stage_times.csv", out / "index.html")}
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbs)

    rc = runner.main(["--profile", "test", "--out-dir", str(out), "--only", "01_pretrain_static",
                      "02_train_video", "03_evaluate", "--params-json",
                      json.dumps({"seed": 41, "data_root": str(data_root)})])
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
    assert all(p.read_bytes() == b for p, b in before.items())  # untouched by the failure
    times = pd.read_csv(out / "stage_times.failed.csv").set_index("notebook")
    assert times.loc["01_pretrain_static", "status"] == "ok"
    assert times.loc["02_train_video", "status"] == "failed"
    assert "03_evaluate" not in times.index
    assert not list(nb_dir.glob(".*running*"))
    # The next successful run records its times, links the reports and clears the failure record.
    _notebook(nbs / "02_train_video.ipynb", "print('fixed')")
    assert runner.main(["--profile", "test", "--out-dir", str(out), "--only", "01_pretrain_static",
                        "02_train_video", "--params-json",
                        json.dumps({"data_root": str(data_root)})]) == 0
    times = pd.read_csv(out / "stage_times.csv").set_index("notebook")
    assert (times["status"] == "ok").all() and times.loc["02_train_video", "seconds"] < 608
    index = (out / "index.html").read_text()
    assert 'href="notebooks/02_train_video.html"' in index
    assert not (out / "stage_times.failed.csv").exists()
    assert not (nb_dir / "02_train_video.failed.ipynb").exists()


def test_relative_paths_mean_the_same_to_runner_and_notebooks(tmp_path, monkeypatch,
                                                              data_root) -> None:
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_pretrain_static.ipynb",
              "import pathlib\npathlib.Path(overrides['out_dir'], 'from_notebook')"
              ".write_text(overrides['data_root'])")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbs)
    monkeypatch.chdir(tmp_path)  # notebooks execute in nbs/, the study starts from tmp_path
    (tmp_path / "mydata").mkdir()
    for name in ("DAVIS-2016", "static"):   # the study checks its data before any work
        (tmp_path / "mydata" / name).symlink_to(data_root / name)
    rc = runner.main(["--profile", "test", "--out-dir", "rel/out", "--only", "01_pretrain_static",
                      "--params-json", '{"data_root": "mydata"}'])
    assert rc == 0
    out = tmp_path / "rel" / "out"
    assert (out / "from_notebook").read_text() == str(tmp_path / "mydata")
    assert (out / "notebooks" / "01_pretrain_static.html").is_file()
    assert not (nbs / "rel").exists()


def test_runner_rejects_bad_arguments(tmp_path, capsys, data_root) -> None:
    common = ["--out-dir", str(tmp_path / "o"), "--params-json", json.dumps({"data_root": str(data_root)})]
    assert runner.main(["--profile", "test", "--only", "07_x", *common]) == 2
    assert "unknown notebook" in capsys.readouterr().err
    assert runner.main(["--profile", "nope", *common]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert runner.main(["--profile", "test", "--out-dir", str(tmp_path), "--params-json", "[1, 2]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert runner.main(["--profile", "test", "--out-dir", str(tmp_path / "o"),
                        "--params-json", '{"data_root": "/nonexistent/place"}']) == 2
    assert "/nonexistent/place/DAVIS-2016" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_overrides_are_checked_and_applied(tmp_path, data_root) -> None:
    with pytest.raises(ValueError, match=str(tmp_path / "DAVIS-2016")):
        session.resolve_study("test", {"data_root": str(tmp_path)})
    with pytest.raises(ValueError, match="'pretrain.iterationz'.*unknown setting 'iterationz'"):
        session.resolve_study("test", {"pretrain.iterationz": 3})
    with pytest.raises(ValueError, match="'main.iterations'.*expected int.*'3'"):
        session.resolve_study("test", {"main.iterations": "3"})
    with pytest.raises(ValueError, match="'sequences'.*expected a list"):
        session.resolve_study("test", {"sequences": "blackswan"})
    s = session.resolve_study("test", {"data_root": str(data_root), "out_dir": str(tmp_path / "o"),
                                       "inference.infer_height": 120, "main.iterations": 3,
                                       "pretrain.iterations": 3, "sequences": ["blackswan"]})
    assert s.profile.main.iterations == 3 and s.profile.inference.infer_height == 120
    assert s.sequences == ["blackswan"] and s.out_dir == tmp_path / "o"
    label = runs.protocol(s, "main")
    assert "3+3 it" in label and "120p" in label and "1 val sequence(s) only" in label
    assert not (tmp_path / "o").exists()  # resolving touches nothing


def test_train_arms_side_by_side_equals_one_after_the_other(tmp_path, data_root) -> None:
    trained = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting, so the two runs compute identically
    try:
        for workers in (1, 2):
            s = session.open_study("test", {"data_root": str(data_root),
                                            "out_dir": str(tmp_path / str(workers)),
                                            "pretrain.iterations": 2, "train_workers": workers})
            trained[workers] = training.train_arms(s, "pretrain")
    finally:
        torch.set_num_threads(threads)
    assert list(trained[2]) == list(training.ARMS) == ["HaS", "no HaS"]
    for arm in training.ARMS:
        a, b = (load_checkpoint(trained[w][arm])["model"] for w in (1, 2))
        assert trained[2][arm].parent == tmp_path / "2" / "checkpoints"
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), arm
    # The arms differ (HaS hides cells, no-HaS does not), so the comparison above is not vacuous.
    has, nohas = (load_checkpoint(trained[1][arm])["model"] for arm in training.ARMS)
    assert any(not torch.equal(has[k], nohas[k]) for k in has)
    with pytest.raises(ValueError, match="stage"):
        training.train_arms(s, "finetune")


def test_predict_youtube_vos_writes_a_server_submission(youtube_valid, davis_root, static_root
                                                        ) -> None:
    import zipfile

    yt_root, _ = youtube_valid
    data = yt_root.parent
    (data / "DAVIS-2016").symlink_to(davis_root)
    (data / "static").symlink_to(static_root)
    s = session.open_study("test", {"data_root": str(data), "out_dir": str(data.parent / "out"),
                                    "pretrain.iterations": 1,
                                    "eval_sets": ["DAVIS-2016:val", "YouTube-VOS:valid"]})
    assert runs.youtube_vos_splits(s) == ["valid"] and runs.extra_eval_sets(s) == []
    ckpt = training.pretrained(s, hide=True)
    res = runs.predict_youtube_vos(s, ckpt, "has", sigma=7.0, split="valid")
    assert not res["cached"] and res["videos"] == 1 and res["s_per_frame"] > 0
    assert res["run_dir"] == s.out_dir / "has_sigma7_youtube-vos-valid"
    with zipfile.ZipFile(res["submission"]) as z:
        names = sorted(n for n in z.namelist() if not n.endswith("/"))  # files, not folder entries
    # The server's layout: Annotations/<video>/<frame>.png for every frame of the split.
    assert names == [f"Annotations/vid/{5 * t:05d}.png" for t in range(9)]
    again = runs.predict_youtube_vos(s, ckpt, "has", sigma=7.0, split="valid")
    assert again["cached"] and again["submission"] == res["submission"]
    assert runs.predict_youtube_vos(s, ckpt, "has", sigma=None, split="valid")["run"] == \
        "has_stm_youtube-vos-valid"


# ----------------------------------------------------------------------------- notebook smoke run
SMOKE_SEQUENCES = ["car-shadow", "motocross-jump"]  # the two shortest val videos (40 frames)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("study") / "test"
    # Inference at the test profile's tiny infer_height; evaluation at the stored 480p.
    # One torch thread: with other jobs on the CPU, two threads per process are far slower.
    overrides = {"data_root": str(data_root), "out_dir": str(out), "sequences": SMOKE_SEQUENCES,
                 "threads": 1}
    runner.run_study("test", overrides, log=lambda _: None)
    return out


@pytest.mark.slow
def test_every_notebook_runs_and_writes_its_outputs(smoke_run: Path, davis_root: Path) -> None:
    out = smoke_run
    for name in runner.NOTEBOOKS:
        assert (out / "notebooks" / f"{name}.ipynb").is_file(), name
        html = (out / "notebooks" / f"{name}.html").read_text()
        assert "<html" in html and "data:image/png;base64" in html, name
        assert not (out / "notebooks" / f"{name}.failed.ipynb").exists()
    times = pd.read_csv(out / "stage_times.csv")
    assert list(times["notebook"]) == list(runner.NOTEBOOKS)
    assert (times["status"] == "ok").all() and (times["seconds"] > 0).all()
    index = (out / "index.html").read_text()
    assert all(f'href="notebooks/{n}.html"' in index for n in runner.NOTEBOOKS)
    for fig in ("01_pretrain_loss", "01_synthetic_clip_0", "02_main_loss", "03_per_sequence",
                "03_overlays_best_worst", "04_sigma_curve", "05_loss_map_0_hidden",
                "07_stress_sets", "07_read_weights", "07_logit_gaps", "07_decoder_swap",
                "07_leak_onset"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    # The leak-mechanism tables: every combination and scope, every oracle, the clean control.
    swap = pd.read_csv(out / "tables" / "07_decoder_swap.csv")
    assert len(swap) == 2 * 2 * 2 * 4 * 2 and swap["leakage"].between(0, 100).all()
    assert set(zip(swap["readout_from"], swap["query_from"])) == {
        (r, q) for r in ("twin", "clean") for q in ("twin", "clean")}
    strength = pd.read_csv(out / "tables" / "07_oracle_strength.csv")
    assert set(strength["oracle"]) == {"none", "half", "any", "half, dilated 1"}
    clean = pd.read_csv(out / "tables" / "07_clean_control.csv")
    assert len(clean) == 4 and clean["mirrored_fp"].between(0, 100).all()
    onset = pd.read_csv(out / "tables" / "07_leak_onset.csv")
    assert set(onset["frame"]) == set(range(1, 30)) and (provenance_commit(out) is not None)
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
    t03 = pd.read_csv(out / "tables" / "03_davis16_val.csv").set_index("run")
    for run, row in t03.iterrows():
        g = pd.read_csv(out / run / "global_results.csv").iloc[0]
        assert row["J&F"] == pytest.approx(100 * g["J&F-Mean"])
        assert row["J"] == pytest.approx(100 * g["J-Mean"]) and 0 <= row["J"] <= 100
        assert row["s/frame"] > 0 and "ours (test)" in row["protocol"]
    ablation = pd.read_csv(out / "tables" / "04_table3_ablation.csv")
    inference = get_profile("test").inference
    kernel_sigmas = sorted(s for s in inference.sigma_sweep if s is not None)
    # Table 3's four cells; the KM cells once per finite σ of the sweep, each row naming its σ.
    assert sorted(set(zip(ablation["HaS"], ablation["KM"]))) == [(False, False), (False, True),
                                                                  (True, False), (True, True)]
    for has in (False, True):
        km = ablation[(ablation["HaS"] == has) & ablation["KM"]]
        assert sorted(km["sigma"]) == kernel_sigmas
    sweep = pd.read_csv(out / "tables" / "04_sigma_sweep.csv")
    assert len(sweep) == len(inference.sigma_sweep) and (sweep["model"] == "static + video, HaS").all()
    # Runs made by notebook 03 were reused by 04, not recomputed: their run.json predates 04's.
    main_run = f"has_sigma{inference.sigma:g}"
    extra = [s for s in kernel_sigmas if s != inference.sigma][0]
    t03_marker = (out / main_run / "run.json").stat().st_mtime_ns
    assert t03_marker < (out / f"has_sigma{extra:g}" / "run.json").stat().st_mtime_ns
    assert t03_marker < (out / "notebooks" / "03_evaluate.ipynb").stat().st_mtime_ns
    assert json.loads((out / f"has_sigma{extra:g}" / "run.json").read_text())["sigma"] == extra
    has = sweep.set_index("run")["J&F"]
    assert has[main_run] == pytest.approx(t03.loc[main_run, "J&F"])


@pytest.mark.slow
def test_tables_notebook_shows_the_papers_numbers(smoke_run: Path) -> None:
    out = smoke_run
    t1 = pd.read_csv(out / "tables" / "06_table1.csv")
    published = t1[t1["source"] == paper.PAPER].reset_index(drop=True)
    expect = paper.paper_table1()
    for col in ("method", "training_data", "dataset", "J&F", "J", "F", "s/frame"):
        assert published[col].tolist() == expect[col].tolist(), col
    ours = t1[t1["source"] == "ours"]
    t03 = pd.read_csv(out / "tables" / "03_davis16_val.csv")
    # Both recipes (KMN: HaS + KM read; STM: no HaS + STM read) after each training stage.
    assert len(ours) == 4 and ours["protocol"].str.contains("efficientnet_lite0").all()
    assert sorted(ours["stage"]) == ["static + video"] * 2 + ["static only"] * 2
    assert sorted(ours["run"]) == sorted(t03.loc[(t03["pretraining"] == "HaS") & (t03["read"] == "KM")
                                               | (t03["pretraining"] == "no HaS")
                                               & (t03["read"] == "STM read"), "run"])
    assert np.allclose(ours["J&F"], (ours["J"] + ours["F"]) / 2, atol=0.06)
    t3 = pd.read_csv(out / "tables" / "06_table3.csv")
    p3 = t3[t3["source"] == paper.PAPER]
    assert p3["DAVIS16 J&F"].tolist() == [81.3, 87.1, 87.2, 87.6, 86.5]
    assert p3["YouTube-VOS overall"].tolist() == [79.0, 79.5, 81.0, 81.4, 79.4]
    finite = [s for s in get_profile("test").inference.sigma_sweep if s is not None]
    assert (t3["source"] == "ours").sum() == 2 + 2 * len(finite)
    t2 = pd.read_csv(out / "tables" / "06_table2.csv")
    assert t2["J&F"].dropna().tolist() == [77.2, 72.2] and t2["overall"].dropna().tolist() == [81.4,
                                                                                                79.4]
    regions = pd.read_csv(out / "tables" / "05_loss_by_region.csv")
    means = regions[regions["clip"] == "mean"].set_index("kind")
    assert set(means.index) == {"plain", "hidden"}
    assert np.isnan(means.loc["plain", "hidden_edge_loss"])  # no hidden cells without hiding
    assert np.isfinite(means.loc["hidden", "gt_boundary_loss"])


def provenance_commit(out: Path) -> str | None:
    """The commit a study folder's provenance.json names (the smoke study writes one)."""
    return json.loads((out / "provenance.json").read_text())["commit"]


@pytest.mark.slow
def test_summary_prints_the_studys_tables(smoke_run: Path, capsys) -> None:
    from kmnlib.study import summary

    assert summary.main([str(smoke_run)]) == 0
    out = capsys.readouterr().out
    for heading in ("Every arm", "Effects on DAVIS-16 val", "Distractor sets", "Distractor effects",
                    "07_read_at_distractors.csv", "07_logit_gaps.csv"):
        assert heading in out, heading
    t03 = pd.read_csv(smoke_run / "tables" / "03_davis16_val.csv")
    assert f"| {t03['J&F'].iloc[0]:.1f} |" in out
    assert summary.main([str(smoke_run / "nothing")]) == 2


@pytest.mark.slow
def test_reports_of_the_smoke_study_pass_the_report_check(smoke_run: Path, capsys) -> None:
    import html

    from kmnlib.study import check_reports, findings

    assert check_reports.main([str(smoke_run)]) == 0, capsys.readouterr().out
    index = (smoke_run / "index.html").read_text()
    opening = findings.main_findings(smoke_run)
    assert opening and all(html.escape(f.text) in index for f in opening)
    assert index.index('id="findings"') < index.index('id="arms"') < index.index('id="provenance"')
    for name in runner.NOTEBOOKS:   # progress went to each notebook's log, kept after success
        log = (smoke_run / "notebooks" / f"{name}.log").read_text()
        assert log.startswith(f"# {name}: progress lines"), name
        assert f'href="notebooks/{name}.log"' in index, name
    assert "[eval " in (smoke_run / "notebooks" / "03_evaluate.log").read_text()


def test_run_keys_name_checkpoints_relative_to_the_repository(tmp_path) -> None:
    from kmnlib.config import REPO_ROOT

    inside = REPO_ROOT / "results" / "archive-2026-11-26" / "mini" / "profile.json"   # committed
    assert runs._fingerprint(inside)["path"] == "results/archive-2026-11-26/mini/profile.json"
    outside = tmp_path / "ck.pt"
    outside.write_bytes(b"x")
    assert runs._fingerprint(outside)["path"] == str(outside.resolve())
    # The committed run records hold such paths too (not the folders of the machine that ran them).
    for marker in (REPO_ROOT / "results").rglob("run.json"):
        path = json.loads(marker.read_text())["checkpoint"]["path"]
        assert not Path(path).is_absolute() and path.startswith("results/"), (marker, path)


@pytest.mark.slow
def test_scale_notebook_table_and_a_missing_snapshot(smoke_run: Path, tmp_path, data_root) -> None:
    import shutil

    from kmnlib.study import scale
    table = pd.read_csv(smoke_run / "tables" / "08_scale.csv")
    # test profile: per arm the pre-training end, the snapshot after 2 main iterations, the end.
    assert sorted(table["iterations"].unique()) == [4, 6, 8] and len(table) == 6
    assert set(table["arm"]) == {"HaS", "no HaS"} and (table["run"] == "study").all()
    assert table["J&F"].between(0, 100).all() and table["leakage"].between(0, 100).all()
    assert (table["ci_low"] <= table["km_minus_stm"]).all()
    assert (table["km_minus_stm"] <= table["ci_high"]).all()
    assert (table["logit_std"] > 0).all()
    # A study whose checkpoints lack a snapshot is refused before any evaluation, naming it.
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run / "checkpoints", copy / "checkpoints")
    (copy / "checkpoints" / "main_from_pretrain.it2.pt").unlink()
    study = session.resolve_study("test", {"data_root": str(data_root), "out_dir": str(copy),
                                           "threads": 1})
    with pytest.raises(FileNotFoundError, match=r"main_from_pretrain\.it2\.pt.*--force"):
        scale.study_points(study)
