"""``python -m kmnlib.study``: run the study notebooks in order with papermill, render HTML.

    python -m kmnlib.study --profile mini [--force] [--only 03_evaluate ...] [--seed 1]
                           [--out-dir DIR] [--params-json '{"pretrain.iterations": 20}']

Each notebook in ``notebooks/`` is executed with the venv's interpreter as its kernel and written,
with an HTML render, to ``<out_dir>/notebooks/``. Every notebook receives two parameters, the
profile name and an ``overrides`` mapping (:mod:`kmnlib.study.session`), checked here before any
notebook runs. Outputs are first written to temporary files and renamed only on success, so a
failing notebook stops the chain (exit code 1, papermill's error printed) and leaves the outputs of
earlier runs intact; the failed execution is kept beside them as ``<name>.failed.ipynb`` for
inspection. The progress lines training and evaluation print (the kernel's and its workers'
stderr) go to ``<out_dir>/notebooks/<name>.log``, not into the notebook. Wall times go to
``<out_dir>/stage_times.csv``; ``<out_dir>/index.html`` (:mod:`kmnlib.study.index_page`) opens with
the findings, which the command prints too, and links every report.

One study at a time writes into an output folder: ``<out_dir>/.study.lock`` (:func:`study_lock`)
refuses a second one while the first one's process lives, and the first thing done under it is to
remove what an interrupted or killed run left (:func:`clean_leftovers`). Ctrl-C kills the running
notebook's kernel, prints one line and exits with status 130; checkpoints (``<name>.last.pt``),
finished evaluations and notebooks are kept, and the next run resumes from them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import papermill as pm
import psutil
from nbconvert import HTMLExporter

from kmnlib.cli import INTERRUPTED, INTERRUPTED_STATUS, interruptible
from kmnlib.config import REPO_ROOT
from kmnlib.files import save_csv, save_text
from kmnlib.provenance import provenance, write_provenance
from kmnlib.study.findings import plain_text
from kmnlib.study.index_page import write_index
from kmnlib.study.session import PROGRESS_LOG_ENV, resolve_study

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS: tuple[str, ...] = ("01_pretrain_static", "02_train_video", "03_evaluate",
                              "04_ablation", "05_loss_maps", "06_tables", "07_distractors",
                              "08_scale")
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
    # log_level=ERROR: the kernel app's only warning is "Kernel is running over TCP without
    # encryption", once per notebook on the terminal; the kernel and papermill talk over
    # localhost, and its errors still print.
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": f"kmn-study ({sys.executable})", "language": "python",
        "env": {"PYTHONPATH": pythonpath, "MPLBACKEND": "Agg"},
    }, indent=1))
    return parent


def render_html(ipynb: Path, html_path: Path) -> Path:
    """Render an executed notebook to a standalone HTML page (figures embedded), atomically."""
    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return save_text(body, html_path)


@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables inside, restoring them after: the
    kernel papermill starts inherits this process's environment."""
    def put(settings: Mapping[str, str | None]) -> None:
        for key, value in settings.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    old = {k: os.environ.get(k) for k in values}
    try:
        put(values)
        yield
    finally:
        put(old)


def start_progress_log(path: Path, name: str) -> Path:
    """Start ``path`` afresh with a header line; the kernel appends its progress lines
    (:func:`kmnlib.study.session.redirect_progress`)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return save_text(f"# {name}: progress lines of the run started {stamp} UTC\n", path)


def execute_notebook(src: Path, dst: Path, params: dict[str, Any], *, workdir: Path,
                     progress: bool = False, progress_log: Path | None = None) -> float:
    """Execute ``src`` with papermill into ``dst`` (written via a temp file); return wall seconds.

    ``progress_log``: the file the kernel and its workers write their progress lines (stderr) to,
    instead of the notebook (``$KMN_PROGRESS_LOG``, read by :func:`session.open_study`).
    ``progress``: papermill's per-cell progress bar on this process's stderr (off for the study:
    the runner prints one line per notebook). On failure the partially executed notebook is kept
    as ``<dst stem>.failed.ipynb`` and papermill's exception propagates.
    """
    if not src.is_file():
        raise FileNotFoundError(f"{src}: notebook not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.running.ipynb")
    failed = dst.with_name(f"{dst.stem}.failed.ipynb")
    jupyter_path = os.pathsep.join(p for p in (str(kernel_dir(workdir)),
                                               os.environ.get("JUPYTER_PATH")) if p)
    if progress_log is not None:
        start_progress_log(progress_log, src.stem)
    t0 = time.perf_counter()
    try:
        with environ(JUPYTER_PATH=jupyter_path,
                     **{PROGRESS_LOG_ENV: str(progress_log) if progress_log else None}):
            pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=KERNEL_NAME,
                                cwd=str(src.parent), progress_bar=progress, log_output=False)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            stop_children()  # the kernel runs in a session of its own: Ctrl-C did not reach it
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    seconds = time.perf_counter() - t0
    os.replace(tmp, dst)
    failed.unlink(missing_ok=True)
    return seconds


def stop_children(timeout_s: float = 10.0) -> None:
    """Kill every process this one started (a notebook's kernel and the workers it spawned), so
    an interrupted study leaves nothing running that could still write into its output folder.
    SIGKILL, not SIGTERM: a terminated kernel prints tracebacks of its own; every file is written
    atomically and what a killed run leaves is cleaned at the next start
    (:func:`clean_leftovers`)."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=timeout_s)


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
    """Write ``index.html``: the findings, the arms, every effect, provenance and the links to
    every report (:mod:`kmnlib.study.index_page`)."""
    return write_index(out_dir, profile, NOTEBOOKS)


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
    parameters = notebook_parameters(profile, overrides or {})  # every setting, before any work
    out_dir = Path(parameters["overrides"]["out_dir"])
    with study_lock(out_dir):
        started = provenance()   # the code this run starts with is the code its results are of
        cleaned = clean_leftovers(out_dir)
        if cleaned:
            log(f"[study] removed what an interrupted run left: "
                f"{', '.join(str(p.relative_to(out_dir)) for p in cleaned)}")
        times = _run_notebooks(names, notebook_dir, out_dir, parameters, log=log,
                               progress=progress)
        record_stage_times(out_dir, times)
        (out_dir / FAILED_RUN).unlink(missing_ok=True)
        write_provenance(out_dir, started=started)   # what made the folder's results
        return render_index(out_dir, profile)


def _run_notebooks(names: Sequence[str], notebook_dir: Path, out_dir: Path,
                   parameters: dict[str, Any], *, log: Callable[[str], None],
                   progress: bool) -> list[dict[str, Any]]:
    """:func:`run_study`'s chain: each notebook in turn; this run's ``stage_times`` rows."""
    nb_out = out_dir / "notebooks"
    nb_out.mkdir(parents=True, exist_ok=True)
    times: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kmn-kernel-") as kdir:
        for name in names:
            log(f"[study] {name} … (progress: {nb_out / (name + '.log')})")
            t0 = time.perf_counter()
            try:
                secs = execute_notebook(notebook_dir / f"{name}.ipynb", nb_out / f"{name}.ipynb",
                                        parameters, workdir=Path(kdir), progress=progress,
                                        progress_log=nb_out / f"{name}.log")
            except BaseException as exc:
                interrupted = isinstance(exc, KeyboardInterrupt)
                times.append(stage_time(name, time.perf_counter() - t0,
                                        "interrupted" if interrupted else "failed"))
                save_csv(pd.DataFrame(times, columns=TIME_COLUMNS), out_dir / FAILED_RUN)
                if not interrupted:  # an interrupt is reported by main() in one line
                    log(f"[study] {name} FAILED; this run's times: {out_dir / FAILED_RUN}; "
                        f"the partial execution: {nb_out / (name + '.failed.ipynb')}")
                raise
            render_html(nb_out / f"{name}.ipynb", nb_out / f"{name}.html")
            times.append(stage_time(name, secs, "ok"))
            log(f"[study] {name} done in {secs:.1f} s → {nb_out / (name + '.html')}")
    return times


LOCK_FILE = ".study.lock"


@contextlib.contextmanager
def study_lock(out_dir: Path) -> Iterator[Path]:
    """Hold ``<out_dir>/.study.lock`` (created with O_CREAT|O_EXCL, holding ``<pid> <host>``) while
    inside: a second study into the same folder is refused (``ValueError`` naming the folder and
    the pid) while the first one's process lives; the lock of a process that has ended (killed,
    say) is taken over."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None:
                raise ValueError(f"out_dir {out_dir}: another study (pid {owner}) is running into "
                                 f"this folder; wait for it to end or choose another --out-dir "
                                 f"(if process {owner} is no study, delete {path})") from None
            path.unlink(missing_ok=True)  # its process has ended: take the lock over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        break
    else:
        raise ValueError(f"out_dir {out_dir}: could not take the lock {path}; delete it if no "
                         f"study is running into this folder")
    try:
        yield path
    finally:
        if _lock_text(path).split()[:1] == [str(os.getpid())]:
            path.unlink(missing_ok=True)


def _lock_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _lock_owner(path: Path) -> str | None:
    """The pid (as text) holding the lock file ``path`` if that process may still live, else None
    (a dead pid on this host, an unreadable or empty lock older than a few seconds)."""
    for _ in range(20):  # a lock just created holds its pid a moment later
        fields = _lock_text(path).split()
        if fields or not path.exists():
            break
        time.sleep(0.1)
    if not fields or not fields[0].isdigit():
        return None
    pid, host = fields[0], (fields[1] if len(fields) > 1 else socket.gethostname())
    if host != socket.gethostname():
        return f"{pid} on {host}"  # cannot tell from here whether it lives
    return pid if psutil.pid_exists(int(pid)) and not _is_zombie(int(pid)) else None


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: What a killed run leaves in its output folder: evaluation folders being computed
#: (``.<run>.partial``) or being replaced (``.<run>.old``), notebooks being executed
#: (``notebooks/.<name>.running.ipynb``) and atomic writes' temp files (``.<name>.XXXXXXXX.tmp``).
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove what an interrupted or killed run left in ``out_dir`` (under the study lock, before
    any notebook runs): ``.<run>.partial/`` folders; ``.<run>.old/`` folders, renamed back to
    ``<run>`` when that is gone (killed between the two renames of a replacement);
    ``.<name>.running.ipynb`` notebooks; temp files of atomic writes. Returns what it removed."""
    removed = []
    for entry in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        name = entry.name
        if entry.is_dir() and name.startswith(".") and name.endswith((".partial", ".old")):
            target = out_dir / name[1:].rsplit(".", 1)[0]
            if name.endswith(".old") and not target.exists():
                os.replace(entry, target)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    for folder, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.endswith((".partial", ".old"))]
        for f in files:
            if _TEMP_FILE.match(f) or (f.startswith(".") and f.endswith(".running.ipynb")):
                (Path(folder) / f).unlink(missing_ok=True)
                removed.append(Path(folder) / f)
    return removed


def parse_overrides(text: str) -> dict[str, Any]:
    """``--params-json``: a JSON object, or the path of a file holding one."""
    if not text.lstrip().startswith(("{", "[")):  # not JSON text: the path of a file
        path = Path(text).expanduser()
        if path.is_dir():
            raise ValueError(f"--params-json {text}: is a directory; pass a JSON object such as "
                             f"'{{\"seed\": 1}}' or the path of a file holding one")
        if path.is_file():
            text = path.read_text()
        else:
            try:
                json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"--params-json {text}: file not found (and not JSON either); "
                                 f"pass a JSON object such as '{{\"seed\": 1}}' or the path of "
                                 f"an existing file holding one") from None
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
        # On Ctrl-C the notebook's kernel is killed first: it runs in a session of its own (the
        # terminal's Ctrl-C does not reach it), and shut down gently it would print tracebacks.
        with interruptible(first=stop_children):
            index = run_study(args.profile, overrides, only=args.only)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
    except ValueError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # papermill's PapermillExecutionError and kernel failures
        # One line: the error the notebook raised (papermill's message repeats the cell and its
        # traceback, which the kept <name>.failed.ipynb shows where it happened).
        name = getattr(exc, "ename", None) or type(exc).__name__
        value = getattr(exc, "evalue", None) or str(exc)
        print(f"[study] FAILED: {name}: {' '.join(str(value).split())[:500]}", file=sys.stderr)
        return 1
    text = plain_text(index.parent)
    if text:
        print(f"[study] findings (from {index.parent / 'tables'}):\n{text}")
    print(f"[study] report: {index}")
    return 0
