"""``python -m kmnlib.study.check_reports``: on a small results folder made here, each kind of
problem is found and named in one line, a clean folder passes, bad arguments exit 2."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmnlib.study import check_reports

INDEX = """<html><body><section id="findings"><ul><li>KM − STM: +0.1</li></ul></section>
<img src="figures/a.png"><a href="notebooks/03_evaluate.html">03</a>
<a href="https://example.org/paper">paper</a><a href="#findings">top</a>
<img src="data:image/png;base64,AAAA"><section id="provenance">commit</section></body></html>"""
REPORT = """<html><body><p><a href="../index.html">index</a></p><p>progress log:
<a href="03_evaluate.log">03_evaluate.log</a></p><pre>np.isnan(x) # NaN in code is fine</pre>
</body></html>"""


def notebook(outputs: list[dict]) -> dict:
    cells = [{"cell_type": "markdown", "source": "A missing value shows as NaN", "metadata": {}},
             {"cell_type": "code", "source": "x", "metadata": {}, "outputs": outputs,
              "execution_count": 1}]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def png(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)


def clean_folder(root: Path) -> Path:
    out = root / "study"
    (out / "notebooks").mkdir(parents=True)
    (out / "index.html").write_text(INDEX)
    (out / "notebooks" / "03_evaluate.html").write_text(REPORT)
    (out / "notebooks" / "03_evaluate.log").write_text("[eval] 1/2\n")
    table = "<table><tr><td>—</td><td>54.2</td></tr></table>"
    (out / "notebooks" / "03_evaluate.ipynb").write_text(json.dumps(notebook([
        {"output_type": "stream", "name": "stdout", "text": "[eval] done\nJ&F 54.2\n"},
        {"output_type": "display_data", "metadata": {},
         "data": {"text/html": table, "text/plain": "   a     b\n0  NaN  54.2"}}])))
    png(out / "figures" / "a.png", 1200, 600)
    return out


def test_a_clean_folder_passes_with_a_summary(tmp_path: Path, capsys) -> None:
    out = clean_folder(tmp_path)
    assert check_reports.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 page(s)" in text and "1 figure(s)" in text and "no problems" in text
    assert "external link (not fetched): https://example.org/paper" in text


def test_each_problem_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    out = clean_folder(tmp_path)
    (out / "index.html").write_text(INDEX.replace('id="provenance"', "")
                                    .replace("figures/a.png", "figures/gone.png"))
    (out / "notebooks" / "03_evaluate.html").write_text(REPORT.replace("../index.html", "x.log")
                                                        .replace("03_evaluate.log", "03.log"))
    wall = "".join(f"[train] step {i}\n" for i in range(6))
    nan_table = "<table><tr><td>NaN</td></tr></table>"
    (out / "notebooks" / "03_evaluate.ipynb").write_text(json.dumps(notebook([
        {"output_type": "stream", "name": "stderr", "text": wall},
        {"output_type": "execute_result", "metadata": {}, "execution_count": 1,
         "data": {"text/html": nan_table, "text/plain": "NaN"}}])))
    png(out / "figures" / "wide.png", 2500, 400)
    assert check_reports.main([str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if not line.startswith("external")]
    expect = ["index.html: link 'figures/gone.png' does not resolve",
              "index.html: no provenance section",
              "notebooks/03_evaluate.html: link 'x.log' does not resolve",
              "notebooks/03_evaluate.html: link '03.log' does not resolve",
              "notebooks/03_evaluate.html: no link back to ../index.html",
              "notebooks/03_evaluate.html: 'NaN' rendered in 1 output(s)",
              "notebooks/03_evaluate.html: 6 progress lines",
              "figures/wide.png: 2500 px wide",
              "figures/wide.png: 2500×400 px, width/height 6.2"]
    assert len(problems) == len(expect)
    for start in expect:
        assert any(p.startswith(start) for p in problems), start


def test_five_progress_lines_are_allowed(tmp_path: Path) -> None:
    out = clean_folder(tmp_path)
    five = "".join(f"[eval] seq {i}\n" for i in range(5))
    (out / "notebooks" / "03_evaluate.ipynb").write_text(json.dumps(notebook([
        {"output_type": "stream", "name": "stderr", "text": five}])))
    assert check_reports.check_folder(out).problems == []


def test_png_size_reads_the_header(tmp_path: Path) -> None:
    png(tmp_path / "f.png", 321, 123)
    assert check_reports.png_size(tmp_path / "f.png") == (321, 123)
    (tmp_path / "no.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="not a PNG"):
        check_reports.png_size(tmp_path / "no.png")


def test_a_missing_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert check_reports.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing" in err and "results/mini" in err


def test_screenshots_without_chromium_say_so(tmp_path: Path, monkeypatch, capsys) -> None:
    out = clean_folder(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert check_reports.main([str(out), "--screenshots", str(tmp_path / "shots")]) == 0
    assert "screenshots skipped: no Chromium on PATH" in capsys.readouterr().out
    assert not (tmp_path / "shots").exists()


def test_screenshots_call_headless_chromium_per_page(tmp_path: Path, monkeypatch) -> None:
    out = clean_folder(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "chromium"   # writes the file its --screenshot= names, records its argv
    fake.write_text("#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/calls\"\nfor a in \"$@\"; do "
                    "case $a in --screenshot=*) echo png > \"${a#--screenshot=}\";; esac; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    lines = check_reports.screenshots(out, tmp_path / "shots")
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == ["index.png",
                                                                      "notebooks_03_evaluate.png"]
    assert all(line.startswith("screenshot: ") for line in lines) and len(lines) == 2
    calls = (bin_dir / "calls").read_text()
    assert "--headless" in calls and "--window-size=1280," in calls
    assert (out / "index.html").resolve().as_uri() in calls
