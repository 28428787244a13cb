"""`make lab` works: a real JupyterLab server on notebooks/ lists the study's notebooks, its
``python3`` kernel is this venv's interpreter, and a notebook's first cells run in that kernel.

The server is started as `make lab` starts it (``python -m jupyter lab`` from this interpreter,
``JUPYTER_PREFER_ENV_PATH=1``), on 127.0.0.1 with a free port and a random token, and driven through
the REST API (``urllib``) and the kernel's websocket channel (Jupyter messaging protocol v5,
``websocket-client``). The notebook cells run with ``out_dir`` in ``tmp_path``: nothing heavy runs
and nothing under results/ is touched. Server and kernel are shut down in ``finally`` blocks.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kmnlib.config import REPO_ROOT, resolve_data_root

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
STUDY_NOTEBOOKS = ("01_pretrain_static", "02_train_video", "03_evaluate", "04_ablation",
                   "05_loss_maps", "06_tables", "07_distractors")
SETUP_NOTEBOOK = NOTEBOOK_DIR / "03_evaluate.ipynb"
START_TIMEOUT = 60.0     # seconds until GET /api/status must answer
EXECUTE_TIMEOUT = 180.0  # seconds per cell (the setup cell imports torch)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    token: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One REST call; the decoded JSON answer (None when the body is empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else "(no log)"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """A JupyterLab server on notebooks/, as `make lab` starts it; stopped whatever happens."""
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed in this interpreter")
    pytest.importorskip("jupyter_server", reason="jupyter_server is not installed in this interpreter")
    import websocket  # noqa: F401  (websocket-client is a requirement of this test, not optional)

    home = tmp_path_factory.mktemp("jupyter")
    port, token = _free_port(), secrets.token_hex(24)
    env = dict(os.environ, JUPYTER_PREFER_ENV_PATH="1",
               JUPYTER_RUNTIME_DIR=str(home / "runtime"),   # connection files stay in tmp
               JUPYTER_CONFIG_DIR=str(home / "config"))     # the user's server config stays out
    log = home / "server.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={NOTEBOOK_DIR}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # as `make lab` does for root (containers)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    srv = Server(proc, port, token, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with code {proc.returncode} before answering "
                            f"/api/status\ncommand: {cmd}\n--- server log ---\n{srv.log_text()}")
            try:
                srv.request("GET", "/api/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer GET /api/status within "
                                f"{START_TIMEOUT:.0f} s\ncommand: {cmd}\n"
                                f"--- server log ---\n{srv.log_text()}")
                time.sleep(0.5)
        yield srv
    finally:
        if proc.poll() is None:
            try:
                srv.request("POST", "/api/shutdown", timeout=10)
                proc.wait(timeout=15)
            except Exception:
                pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


class KernelChannel:
    """The websocket channel of one kernel: send ``execute_request``s, collect their replies."""

    def __init__(self, srv: Server, kernel_id: str) -> None:
        import websocket

        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{srv.port}/api/kernels/{kernel_id}/channels"
            f"?session_id={self.session}&token={srv.token}", timeout=EXECUTE_TIMEOUT)

    def close(self) -> None:
        self.ws.close()

    def _send(self, channel: str, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.session,
                       "msg_type": msg_type, "version": "5.3",
                       "date": datetime.now(timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel,
            "buffers": []}))
        return msg_id

    def _collect(self, msg_id: str, reply_type: str) -> tuple[dict, list[dict]]:
        """The shell reply to ``msg_id`` and its iopub messages, up to the kernel going idle."""
        reply, iopub, idle = None, [], False
        deadline = time.monotonic() + EXECUTE_TIMEOUT
        while reply is None or not idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {reply_type} for {msg_id} within {EXECUTE_TIMEOUT:.0f} s; "
                                   f"iopub so far: {iopub}")
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell" and msg["msg_type"] == reply_type:
                reply = msg["content"]
            elif msg["channel"] == "iopub":
                if msg["msg_type"] == "status":
                    idle = msg["content"]["execution_state"] == "idle"
                else:
                    iopub.append(msg)
        return reply, iopub

    def kernel_info(self) -> dict:
        return self._collect(self._send("shell", "kernel_info_request", {}), "kernel_info_reply")[0]

    def execute(self, code: str) -> tuple[dict, str]:
        """Run ``code``; the ``execute_reply`` content and the text it printed/returned/raised."""
        msg_id = self._send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True})
        reply, iopub = self._collect(msg_id, "execute_reply")
        text = []
        for m in iopub:
            c = m["content"]
            if m["msg_type"] == "stream":
                text.append(c["text"])
            elif m["msg_type"] in ("execute_result", "display_data"):
                text.append(c.get("data", {}).get("text/plain", "") + "\n")
            elif m["msg_type"] == "error":
                text.append(f"{c['ename']}: {c['evalue']}\n" + "\n".join(c["traceback"]))
        return reply, "".join(text)


def _setup_cells(path: Path) -> tuple[str, list[str]]:
    """The parameters cell and the code cells after it up to the first ``session.open_study(``."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    src = ["".join(c["source"]) for c in cells]
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged, f"{path.name}: no cell tagged 'parameters'"
    p = tagged[0]
    opening = [i for i in range(p + 1, len(src)) if "session.open_study(" in src[i]]
    assert opening, f"{path.name}: no cell calling session.open_study( after the parameters cell"
    return src[p], src[p + 1:opening[0] + 1]


def test_lab_lists_the_notebooks_and_runs_the_venv_kernel(server: Server) -> None:
    listing = server.request("GET", "/api/contents")
    names = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
    expected = {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")}
    assert {f"{n}.ipynb" for n in STUDY_NOTEBOOKS} <= expected
    assert expected <= names, f"missing from the lab: {sorted(expected - names)}"

    specs = server.request("GET", "/api/kernelspecs")
    assert "python3" in specs["kernelspecs"], f"no python3 kernel: {sorted(specs['kernelspecs'])}"
    argv0 = specs["kernelspecs"]["python3"]["spec"]["argv"][0]
    # jupyter_client runs a bare "python"/"python3" argv[0] as the server's own sys.executable.
    bare = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    assert argv0 in bare or Path(argv0) in (Path(sys.executable), venv_python) or \
        Path(argv0).resolve() == Path(sys.executable).resolve(), \
        f"python3 kernel runs {argv0!r}, not {sys.executable}"


def test_notebook_setup_cells_run_in_the_lab_kernel(server: Server, tmp_path: Path) -> None:
    data_root = resolve_data_root()
    if not (data_root / "DAVIS-2016").is_dir():
        pytest.skip(f"DAVIS-2016 not found under {data_root}; run `make data` or set KMN_DATA")
    params, setup = _setup_cells(SETUP_NOTEBOOK)
    out_dir = tmp_path / "out"
    overrides = f"overrides = {{'out_dir': {str(out_dir)!r}, 'data_root': {str(data_root)!r}}}"

    # path "" = the root dir (notebooks/): the kernel's cwd, as for a notebook opened in the lab.
    kernel = server.request("POST", "/api/kernels", {"name": "python3", "path": ""})
    assert kernel["name"] == "python3"
    channel = None
    try:
        channel = KernelChannel(server, kernel["id"])
        info = channel.kernel_info()
        assert info["status"] == "ok" and info["language_info"]["name"] == "python"
        printed = []
        for code in (params, overrides, *setup,
                     "import os, sys; print('cwd=' + os.getcwd()); print('exe=' + sys.executable)"):
            reply, text = channel.execute(code)
            assert reply["status"] == "ok", f"cell failed:\n{code}\n--- output ---\n{text}"
            printed.append(text)
        output = "".join(printed)
        assert f"out={out_dir}" in output, output          # session.describe(study)
        assert f"'python': {sys.executable!r}" in output, output  # session.environment_summary()
        assert f"exe={sys.executable}" in output, output
        assert f"cwd={NOTEBOOK_DIR}" in output, output     # the notebooks' directory, as papermill
        assert (out_dir / "profile.json").is_file()        # open_study wrote to tmp, not results/
        assert json.loads((out_dir / "profile.json").read_text())["name"] == "mini"
    finally:
        if channel is not None:
            channel.close()
        try:
            server.request("DELETE", f"/api/kernels/{kernel['id']}", timeout=30)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
