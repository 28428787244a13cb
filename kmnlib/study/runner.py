"""``python -m kmnlib.study``: run the study notebooks in order with papermill, render HTML.

    python -m kmnlib.study --profile mini [--force] [--only 03_evaluate ...] [--seed 1]
                           [--out-dir DIR] [--params-json '{"pretrain.iterations": 20}']

Each notebook in ``notebooks/`` is executed with the venv's interpreter as its kernel and written,
with an HTML render, to ``<out_dir>/notebooks/``. Every notebook receives two parameters, the
profile name and an ``overrides`` mapping (:mod:`kmnlib.study.session`), checked here before any
notebook runs. Outputs are first written to temporary files and renamed only on success, so a
failing notebook stops the chain (exit code 1, papermill's error printed) and leaves the outputs of
earlier runs intact; the failed execution is kept beside them as ``<name>.failed.ipynb`` for
inspection. Wall times go to ``<out_dir>/stage_times.csv`` and ``<out_dir>/index.html`` links the
reports.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import papermill as pm
from nbconvert import HTMLExporter

from kmnlib.config import REPO_ROOT
from kmnlib.files import save_csv, save_text
from kmnlib.study.session import resolve_study

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS: tuple[str, ...] = ("01_pretrain_static", "02_train_video", "03_evaluate",
                              "04_ablation", "05_loss_maps", "06_tables", "07_distractors")
KERNEL_NAME = "python3"
STAGE_TIMES = "stage_times.csv"


def kernel_dir(parent: Path) -> Path:
    """Write a ``python3`` kernel spec that launches *this* interpreter; return its JUPYTER_PATH entry.

    Jupyter looks kernels up on ``$JUPYTER_PATH`` before the user's and the system's folders, so a
    spec placed there makes papermill's ``python3`` kernel the venv's python even on a machine
    with a global Jupyter whose ``python3`` points elsewhere.
    """
    spec = parent / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"kmn-study ({sys.executable})", "language": "python",
        "env": {"PYTHONPATH": pythonpath, "MPLBACKEND": "Agg"},
    }, indent=1))
    return parent


def render_html(ipynb: Path, html_path: Path) -> Path:
    """Render an executed notebook to a standalone HTML page (figures embedded), atomically."""
    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return save_text(body, html_path)


def execute_notebook(src: Path, dst: Path, params: dict[str, Any], *, workdir: Path,
                     progress: bool = False) -> float:
    """Execute ``src`` with papermill into ``dst`` (written via a temp file); return wall seconds.

    On failure the partially executed notebook is kept as ``<dst stem>.failed.ipynb`` and
    papermill's exception propagates.
    """
    if not src.is_file():
        raise FileNotFoundError(f"{src}: notebook not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.running.ipynb")
    failed = dst.with_name(f"{dst.stem}.failed.ipynb")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(kernel_dir(workdir)), old) if p)
    t0 = time.perf_counter()
    try:
        # The progress bar (stderr) shows which cell of which notebook is running; training and
        # evaluation print their own progress lines from the kernel and its workers.
        pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=KERNEL_NAME,
                            cwd=str(src.parent), progress_bar=progress, log_output=False)
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    seconds = time.perf_counter() - t0
    os.replace(tmp, dst)
    failed.unlink(missing_ok=True)
    return seconds


TIME_COLUMNS = ["notebook", "seconds", "status", "finished_utc"]


def stage_time(notebook: str, seconds: float, status: str) -> dict[str, Any]:
    """One row of ``stage_times.csv``."""
    return {"notebook": notebook, "seconds": round(seconds, 2), "status": status,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def record_stage_times(out_dir: Path, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Upsert this run's rows into ``stage_times.csv`` (one row per notebook, latest run)."""
    path = out_dir / STAGE_TIMES
    df = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=TIME_COLUMNS)
    df = df[~df["notebook"].isin([r["notebook"] for r in rows])]
    new = pd.DataFrame(list(rows), columns=TIME_COLUMNS)
    df = pd.concat([df, new] if len(df) else [new], ignore_index=True)
    order = {n: i for i, n in enumerate(NOTEBOOKS)}
    df = df.sort_values("notebook", key=lambda s: s.map(lambda n: order.get(n, len(order))))
    save_csv(df[TIME_COLUMNS], path)
    return df


def render_index(out_dir: Path, profile: str) -> Path:
    """Write ``index.html``: links to each notebook's HTML report and the figures and tables."""
    times = pd.read_csv(out_dir / STAGE_TIMES) if (out_dir / STAGE_TIMES).is_file() else None
    rows = []
    for name in NOTEBOOKS:
        nb_html = out_dir / "notebooks" / f"{name}.html"
        failed = out_dir / "notebooks" / f"{name}.failed.ipynb"
        secs = ""
        if times is not None and (times["notebook"] == name).any():
            r = times[times["notebook"] == name].iloc[-1]
            secs = f"{r['seconds']:.0f} s ({r['status']})"
        if nb_html.is_file():
            link = (f'<a href="notebooks/{name}.html">{name}</a> '
                    f'(<a href="notebooks/{name}.ipynb">ipynb</a>)')
        else:
            link = f"{name} — no report yet"
        if failed.is_file():  # the latest run failed; an earlier report (if any) stays linked
            link += f' — latest run: <a href="notebooks/{name}.failed.ipynb">failed run</a>'

        rows.append(f"<tr><td>{link}</td><td>{html.escape(secs)}</td></tr>")

    def listing(sub: str, pattern: str) -> str:
        files = sorted((out_dir / sub).rglob(pattern)) if (out_dir / sub).is_dir() else []
        items = "".join(f'<li><a href="{html.escape(str(f.relative_to(out_dir)))}">'
                        f"{html.escape(str(f.relative_to(out_dir / sub)))}</a></li>" for f in files)
        return f"<ul>{items}</ul>" if items else "<p>none yet</p>"

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kmn-study — {html.escape(profile)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:.2em 1em}}</style>
</head><body>
<h1>kmn-study — profile <code>{html.escape(profile)}</code></h1>
<p>Kernelized Memory Network (Seong et al., ECCV 2020) study. Generated
{datetime.now(timezone.utc).isoformat(timespec="seconds")} by <code>python -m kmnlib.study
--profile {html.escape(profile)}</code>.</p>
<h2>Notebook reports</h2><table><tr><th>notebook</th><th>wall time</th></tr>{''.join(rows)}</table>
<h2>Tables (CSV)</h2>{listing("tables", "*.csv")}
<h2>Figures (PNG)</h2>{listing("figures", "*.png")}
</body></html>
"""
    return save_text(page, out_dir / "index.html")


def notebook_parameters(profile: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The papermill parameters of every notebook: the profile name and the overrides, with
    relative ``data_root`` / ``out_dir`` made absolute against the caller's directory (notebooks
    run in notebooks/, so a relative path would mean something else there)."""
    study = resolve_study(profile, overrides)  # validates every key and value
    out = dict(overrides)
    out["out_dir"] = str(study.out_dir)
    out["data_root"] = str(study.data_root)
    return {"profile": profile, "overrides": out}


FAILED_RUN = "stage_times.failed.csv"


def run_study(profile: str, overrides: Mapping[str, Any] | None = None, *,
              only: Sequence[str] | None = None, notebook_dir: Path | None = None,
              log: Callable[[str], None] = print, progress: bool = False) -> Path:
    """Execute the notebooks (all, or ``only``) in order; return the path of ``index.html``.

    Bad arguments raise ``ValueError`` before anything runs. Each notebook's executed copy and
    HTML report replace the previous ones only when it succeeds. ``stage_times.csv`` and
    ``index.html`` are updated only when the whole run succeeds: a failing notebook stops the chain
    (papermill's exception propagates), its partial execution is kept as
    ``notebooks/<name>.failed.ipynb`` and this run's times, the failure included, go to
    ``stage_times.failed.csv`` beside them.
    """
    notebook_dir = Path(notebook_dir or NOTEBOOK_DIR)
    names = list(NOTEBOOKS) if not only else list(only)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    names = [n for n in NOTEBOOKS if n in names]  # always in study order
    missing = [n for n in names if not (notebook_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise ValueError(f"{notebook_dir}: notebook(s) {missing} not found")
    parameters = notebook_parameters(profile, overrides or {})
    out_dir = Path(parameters["overrides"]["out_dir"])
    nb_out = out_dir / "notebooks"
    nb_out.mkdir(parents=True, exist_ok=True)
    times: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kmn-kernel-") as kdir:
        for name in names:
            log(f"[study] {name} …")
            t0 = time.perf_counter()
            try:
                secs = execute_notebook(notebook_dir / f"{name}.ipynb", nb_out / f"{name}.ipynb",
                                        parameters, workdir=Path(kdir), progress=progress)
            except BaseException:
                times.append(stage_time(name, time.perf_counter() - t0, "failed"))
                save_csv(pd.DataFrame(times, columns=TIME_COLUMNS), out_dir / FAILED_RUN)
                log(f"[study] {name} FAILED; this run's times: {out_dir / FAILED_RUN}; "
                    f"the partial execution: {nb_out / (name + '.failed.ipynb')}")
                raise
            render_html(nb_out / f"{name}.ipynb", nb_out / f"{name}.html")
            times.append(stage_time(name, secs, "ok"))
            log(f"[study] {name} done in {secs:.1f} s → {nb_out / (name + '.html')}")
    record_stage_times(out_dir, times)
    (out_dir / FAILED_RUN).unlink(missing_ok=True)
    return render_index(out_dir, profile)


def parse_overrides(text: str) -> dict[str, Any]:
    """``--params-json``: a JSON object, or the path of a file holding one."""
    if not text.lstrip().startswith("{") and Path(text).is_file():
        text = Path(text).read_text()
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--params-json: not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise ValueError("--params-json must be a JSON object of overrides")
    return params


def main(argv: Sequence[str] | None = None) -> int:
    # No flush_denormals here: this process computes nothing; each notebook runs in a kernel of
    # its own, whose first call (session.open_study) flushes subnormals there.
    ap = argparse.ArgumentParser(prog="python -m kmnlib.study", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini", help="profile in kmnlib/config.py (default: mini)")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: results/<profile>")
    ap.add_argument("--only", nargs="+", metavar="NOTEBOOK", help=f"subset of {list(NOTEBOOKS)}")
    ap.add_argument("--force", action="store_true", help="retrain finished stages / recompute")
    ap.add_argument("--seed", type=int, default=None, help="override the profile's seed")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads in the notebooks (1 is fastest on a shared CPU)")
    ap.add_argument("--params-json", default=None,
                    help="JSON object of overrides (settings or dotted profile paths), or a file")
    args = ap.parse_args(argv)
    try:
        overrides = parse_overrides(args.params_json) if args.params_json else {}
        for key, value in (("out_dir", args.out_dir), ("seed", args.seed),
                           ("threads", args.threads)):
            if value is not None:
                overrides[key] = str(value) if isinstance(value, Path) else value
        if args.force:
            overrides["force"] = True
        index = run_study(args.profile, overrides, only=args.only, progress=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # papermill's PapermillExecutionError and kernel failures
        print(f"[study] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"[study] report: {index}")
    return 0
