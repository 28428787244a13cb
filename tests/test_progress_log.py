"""Progress lines of a notebook run by the study runner go to ``notebooks/<name>.log`` (the
kernel's and its child processes'), not into the notebook nor the terminal; errors still reach the
notebook; the terminal shows one line per notebook and no kernel warning."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from kmnlib.study import runner, session

BODY = """import subprocess, sys
from kmnlib.study.session import redirect_progress
redirect_progress()
redirect_progress()  # a second call in the same kernel changes nothing
print('[train] from the kernel', file=sys.stderr)
subprocess.run([sys.executable, '-c', 'import sys; print("[eval] from a child", file=sys.stderr)'])
print('result 42')"""


def _notebook(path: Path, *bodies: str) -> None:
    params = new_code_cell('profile = "mini"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, *(new_code_cell(b) for b in bodies)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def _outputs(path: Path) -> list[dict]:
    nb = nbformat.read(str(path), as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_progress_goes_to_the_log_and_errors_to_the_notebook(tmp_path, monkeypatch, capfd,
                                                            data_root) -> None:
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    nbs.mkdir()
    _notebook(nbs / "01_pretrain_static.ipynb", BODY)
    _notebook(nbs / "02_train_video.ipynb", BODY,
              "print('[train] last words', file=sys.stderr)\nraise RuntimeError('boom in 02')")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbs)
    args = ["--profile", "test", "--out-dir", str(out), "--params-json",
            json.dumps({"data_root": str(data_root)}), "--only"]
    assert runner.main([*args, "01_pretrain_static"]) == 0
    terminal = capfd.readouterr()
    nb_dir = out / "notebooks"
    log = (nb_dir / "01_pretrain_static.log").read_text()
    assert log.startswith("# 01_pretrain_static: progress lines of the run started")
    assert "[train] from the kernel\n" in log and "[eval] from a child\n" in log
    outputs = _outputs(nb_dir / "01_pretrain_static.ipynb")
    assert not [o for o in outputs if o.get("name") == "stderr"]
    texts = "".join(o.get("text", "") + str(o.get("data", {}).get("text/html", ""))
                    for o in outputs)
    assert "result 42" in texts
    assert texts.count('progress log: <a href="01_pretrain_static.log">') == 1
    both = terminal.out + terminal.err
    assert "without encryption" not in both and "[train]" not in both and "[eval]" not in both
    assert "[study] 01_pretrain_static done in" in terminal.out
    # A failing notebook: its traceback is in the kept failed run, its progress in its log.
    assert runner.main([*args, "02_train_video"]) == 1
    failed = _outputs(nb_dir / "02_train_video.failed.ipynb")
    assert any(o.get("output_type") == "error" and o.get("evalue") == "boom in 02" for o in failed)
    assert "[train] last words" in (nb_dir / "02_train_video.log").read_text()
    assert "boom in 02" in capfd.readouterr().err
    # The next run starts its log afresh.
    assert runner.main([*args, "01_pretrain_static"]) == 0
    assert (nb_dir / "01_pretrain_static.log").read_text().count("[train] from the kernel") == 1


def test_without_the_variable_nothing_is_redirected(monkeypatch) -> None:
    monkeypatch.delenv(session.PROGRESS_LOG_ENV, raising=False)
    assert session.redirect_progress() is None   # JupyterLab: stderr stays the notebook's


def test_the_kernel_spec_launches_this_python_quietly(tmp_path) -> None:
    import sys

    spec = json.loads((runner.kernel_dir(tmp_path) / "kernels" / runner.KERNEL_NAME
                       / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert "--IPKernelApp.log_level=ERROR" in spec["argv"]
