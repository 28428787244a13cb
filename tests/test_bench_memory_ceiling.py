"""benchmarks/bench_memory_ceiling.py: a short real run (Lite0, a looped DAVIS-2016 val video)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kmnlib.config import REPO_ROOT, resolve_data_root

SCRIPT = REPO_ROOT / "benchmarks" / "bench_memory_ceiling.py"
pytestmark = pytest.mark.skipif(not (resolve_data_root() / "DAVIS-2016").is_dir(),
                                reason="shared DAVIS-2016 not found")


def test_rows_and_phase_peaks():
    out = subprocess.run([sys.executable, str(SCRIPT), "--configs", "lite0", "--frames", "12",
                          "--phases"], capture_output=True, text=True, env=dict(os.environ),
                         check=True, timeout=600).stdout
    rows = re.findall(r"^lite0\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    phases = re.findall(r"peak RSS GiB by phase: (.*)$", out, re.M)
    # Frame 11 reads frames 0 and 5 (kept for good) and 10 (the previous one): 3 memory frames.
    assert [(int(f), int(m)) for f, m, _, _ in rows] == [(12, 3)]
    assert len(phases) == 1
    for (_, _, peak, _), line in zip(rows, phases):
        by_phase = {k: float(v) for k, v in re.findall(r"([a-z_ -]+?) ([\d.]+)(?:, |$)", line)}
        assert {"build model", "segment_video", "write label maps", "evaluate_davis"} <= set(by_phase)
        # ru_maxrss is the process's true peak; the sampled phase peaks can only miss spikes.
        assert 0.3 < max(by_phase.values()) <= float(peak) + 0.01
