"""benchmarks/bench_official.py without the official STM code: its argument errors, its re-written
evaluation loop's memory schedule, and a whole run against a stand-in ``model.py`` written here
(an ``STM`` class with the official interface, computing with our network)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from kmnlib.memory_bank import memory_schedule

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH / "bench_official.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=BENCH.parent)


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_official_repo_says_where_to_get_it() -> None:
    _one_line_error(_run(), "--official-repo", "git clone https://github.com/seoungwugoh/STM")


def test_other_argument_errors(tmp_path: Path) -> None:
    _one_line_error(_run("--official-repo", str(tmp_path)), "no model.py", "git clone")
    (tmp_path / "model.py").write_text("")
    _one_line_error(_run("--official-repo", str(tmp_path), "--weights", str(tmp_path / "nope.pth")),
                    "--weights", "nope.pth")
    _one_line_error(_run("--official-repo", str(tmp_path), "--frames", "1"), "--frames 1")


class _Recorder:
    """Official interface; frame t is filled with the value t, so memorize tags its key with the
    frame it encoded and segment records which frames its memory holds, in order."""

    def __init__(self) -> None:
        self.read: list[list[int]] = []

    def memorize(self, frame, masks, num_objects):  # noqa: ANN001
        tag = frame[0, 0, 0, 0].item()
        return torch.full((1, masks.shape[1], 1, 1, 1, 1), tag), torch.zeros(1, masks.shape[1], 1, 1, 1, 1)

    def segment(self, frame, keys, values, num_objects):  # noqa: ANN001
        assert keys.shape[3] == values.shape[3]
        self.read.append([int(v) for v in keys[0, 0, 0, :, 0, 0].tolist()])
        return torch.zeros(1, 11, *frame.shape[-2:])


def test_official_loop_reads_the_official_schedule(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_official import run_official

    num_frames = 17
    frames = torch.arange(num_frames, dtype=torch.float32).view(1, 1, -1, 1, 1).expand(1, 3, -1, 4, 4)
    first = torch.zeros(1, 11, 4, 4)
    stm = _Recorder()
    probs = run_official(stm, frames, first, 1, mem_every=5)
    assert stm.read == memory_schedule(num_frames, 5)[1:]
    assert probs.shape == (1, 11, num_frames, 4, 4)


def test_ensure_prepared_prepares_only_a_raw_network(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_official import ensure_prepared, is_prepared

    from kmnlib.model import build_model
    from kmnlib.model.stm_checkpoint import stm_model_config

    raw = build_model(stm_model_config()).eval()
    assert not is_prepared(raw)
    prepared, how = ensure_prepared(raw)
    assert how == "prepare_for_inference" and is_prepared(prepared)
    again, how = ensure_prepared(prepared)
    assert how == "prepared by the loader" and again is prepared


HELPERS = '''
def ToCuda(xs):
    raise AssertionError("ToCuda reached: the benchmark must replace it")
'''

# A stand-in for the official model.py (same interface: STM(), load_state_dict of official keys,
# memorize/segment with K object slots), computing with our network.
FAKE_MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from helpers import *

from kmnlib.model import KMN
from kmnlib.model.ops import pad_divide_by, soft_aggregate, unpad
from kmnlib.model.stm_checkpoint import from_stm_state_dict, stm_model_config

print("stand-in for the official model.py imported")


class STM(nn.Module):
    def __init__(self):
        super().__init__()
        models.resnet50(pretrained=True)    # as the official encoders; must not download here
        self.net = KMN(stm_model_config())

    def load_state_dict(self, state, strict=True):
        return self.net.load_state_dict(from_stm_state_dict(state, self.net.state_dict()), strict=strict)

    def memorize(self, frame, masks, num_objects):
        n, k = int(num_objects[0]), masks.shape[1]
        frame, _ = pad_divide_by(frame)
        masks, _ = pad_divide_by(masks)
        fg = masks[0, 1:n + 1]
        other = (fg.sum(0, keepdim=True) - fg).clamp(0, 1)
        out = []
        for t in self.net.encode_memory(frame.expand(n, -1, -1, -1), fg, other):
            slots = ToCuda(torch.zeros(1, k, t.shape[1], 1, *t.shape[2:]))
            slots[0, 1:n + 1, :, 0] = t
            out.append(slots)
        return out

    def segment(self, frame, keys, values, num_objects):
        n, k = int(num_objects[0]), keys.shape[1]
        frame, pad = pad_divide_by(frame)
        fg = self.net.segment(*self.net.encode_query(frame), keys[0, 1:n + 1], values[0, 1:n + 1])
        return unpad(soft_aggregate(F.pad(fg, (0, 0, 0, 0, 0, k - 1 - n)))[None], pad)
'''


def test_runs_end_to_end_against_a_stand_in(tmp_path: Path, davis_root: Path) -> None:
    (tmp_path / "helpers.py").write_text(textwrap.dedent(HELPERS))
    (tmp_path / "model.py").write_text(textwrap.dedent(FAKE_MODEL))
    proc = _run("--official-repo", str(tmp_path), "--frames", "3", "--reps", "1", "--height", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "stand-in" not in out                      # the import's greeting is kept out
    assert re.search(r"^ours +\d+\.\d{4} s/frame +load_stm_checkpoint", out, re.M), out
    assert re.search(r"^official +\d+\.\d{4} s/frame", out, re.M), out
    assert re.search(r"^ratio ours/official \d+\.\d{3}$", out, re.M), out
    assert "3 frames at 64x114 (padded 64x128)" in out, out
    # Both sides computed the same segmentation (ours prepared: folded BN, Winograd).
    diff = float(re.search(r"max\|Δp\| (\S+),", out).group(1))
    assert diff < 1e-3, out
