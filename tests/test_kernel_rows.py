"""kmnlib.kernel_rows (the native kernel pass) against the read's PyTorch path, float for float."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kmnlib.memory as memory_module
from kmnlib import kernel_rows
from kmnlib.memory import memory_read

from conftest import hard_rows

REPO = Path(__file__).resolve().parents[1]


def torch_kernel(c: torch.Tensor, hw: tuple[int, int], sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q̂ by ``max(...).indices`` and log g by two broadcast additions: the PyTorch path, literally."""
    h, w = hw
    qhat = c.max(dim=-1).indices
    inv = 1.0 / (2.0 * sigma * sigma)
    gy = -(torch.arange(h, dtype=c.dtype) - torch.div(qhat, w, rounding_mode="floor").to(c.dtype)[..., None]
           ).square_() * inv
    gx = -(torch.arange(w, dtype=c.dtype) - (qhat % w).to(c.dtype)[..., None]).square_() * inv
    out = c.clone()
    out.view(*c.shape[:2], h, w).add_(gy[..., :, None]).add_(gx[..., None, :])
    return qhat, out


def same_floats(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN where the other is NaN."""
    return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


@pytest.fixture(scope="module")
def native() -> None:
    if kernel_rows.library() is None:
        pytest.fail("the native kernel did not build on this machine (a C compiler is part of the "
                    "setup: README); see the RuntimeWarning above")


@pytest.mark.parametrize("batches,rows,hw,sigma", [(1, 2000, (30, 54), 7.0), (2, 300, (15, 27), 0.5),
                                                  (3, 50, (3, 5), 1.3), (1, 600, (1, 7), 2.0),
                                                  (1, 200, (9, 1), 2.0), (2, 7, (4, 4), 3.0)])
def test_same_floats_as_the_pytorch_path(batches, rows, hw, sigma, native):
    c = hard_rows((batches, rows, hw[0] * hw[1]), torch.float32) * 4
    want_qhat, want = torch_kernel(c, hw, sigma)
    got = c.clone()
    qhat, col_max = kernel_rows.apply_kernel_(got, hw, sigma)
    assert torch.equal(qhat, want_qhat)
    assert same_floats(got, want)
    assert same_floats(col_max, want.amax(dim=1))
    assert (got - c).nan_to_num(0.0).abs().max() > 0          # the kernel was added


def test_one_thread_and_many_agree(native, one_thread):
    c = hard_rows((2, 3000, 30 * 54), torch.float32, seed=3)
    assert c.numel() >= kernel_rows.PARALLEL_MIN_ELEMENTS
    serial = c.clone()
    kernel_rows.apply_kernel_(serial, (30, 54), 7.0)
    torch.set_num_threads(2)
    parallel = c.clone()
    kernel_rows.apply_kernel_(parallel, (30, 54), 7.0)
    assert same_floats(serial, parallel)


def test_refuses_what_it_does_not_handle(native):
    c = torch.randn(1, 10, 12)
    assert kernel_rows.apply_kernel_(c.double(), (3, 4), 1.0) is None
    assert kernel_rows.apply_kernel_(c.transpose(1, 2).contiguous().transpose(1, 2), (3, 4), 1.0) is None
    assert kernel_rows.apply_kernel_(c.clone().requires_grad_(True), (3, 4), 1.0) is None
    with pytest.raises(ValueError, match="query grid"):
        kernel_rows.apply_kernel_(c, (3, 5), 1.0)


def test_runs_on_pytorchs_openmp_runtime(native):
    """One libgomp in the process: the kernel's threads are PyTorch's (torch.set_num_threads holds,
    no second team competing for the cores)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps here")
    libs = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line}
    assert len(libs) <= 1, libs


@pytest.mark.parametrize("sigma,budget", [(0.8, None), (7.0, None), (7.0, 1 << 20)])
def test_read_identical_to_the_pytorch_path(sigma, budget, monkeypatch, native):
    """A 480p-sized read of two objects, also chunked: the native pass gives the read bit for bit
    the result of the PyTorch path (q̂ by max(...).indices, the two additions, amax)."""
    g = torch.Generator().manual_seed(4)
    mk, mv = torch.randn(2, 64, 3, 30, 54, generator=g) * 4, torch.randn(2, 128, 3, 30, 54, generator=g)
    qk = torch.randn(2, 64, 30, 54, generator=g) * 4
    with torch.inference_mode():
        ours = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=budget)
        monkeypatch.setattr(kernel_rows, "apply_kernel_", lambda *a: None)
        monkeypatch.setattr(memory_module, "argmax_last", lambda c: c.max(dim=-1).indices)
        theirs = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=budget)
    assert torch.equal(ours, theirs)
    assert (ours - memory_read(mk, mv, qk, sigma=None)).abs().max() > 1e-3   # the kernel acted


def test_blocked_read_takes_the_maximum_after_the_cut(native, monkeypatch):
    """The oracle read cuts logits after the kernel; the maximum must be taken after the cut."""
    g = torch.Generator().manual_seed(5)
    mk, mv = torch.randn(1, 16, 2, 6, 8, generator=g) * 3, torch.randn(1, 8, 2, 6, 8, generator=g)
    qk = torch.randn(1, 16, 6, 8, generator=g) * 3
    blocked = (torch.rand(1, 2, 6, 8, generator=g) > 0.5, torch.rand(1, 6, 8, generator=g) > 0.5)
    with torch.inference_mode():
        ours = memory_read(mk, mv, qk, sigma=2.0, blocked=blocked)
        monkeypatch.setattr(kernel_rows, "apply_kernel_", lambda *a: None)
        theirs = memory_read(mk, mv, qk, sigma=2.0, blocked=blocked)
    assert torch.equal(ours, theirs)


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=300)


def test_without_a_compiler_the_read_falls_back_with_one_warning(tmp_path):
    code = ("import warnings, torch\n"
            "from kmnlib import kernel_rows\nfrom kmnlib.memory import memory_read\n"
            "g = torch.Generator().manual_seed(0)\n"
            "mk, mv, qk = torch.randn(1, 8, 1, 4, 5, generator=g), torch.randn(1, 3, 1, 4, 5, generator=g), "
            "torch.randn(1, 8, 4, 5, generator=g)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    out = memory_read(mk, mv, qk, sigma=1.0)\n"
            "    memory_read(mk, mv, qk, sigma=1.0)\n"
            "print(kernel_rows.library() is None, bool(torch.isfinite(out).all()), len(caught))\n"
            "print(caught[0].message if caught else '')\n")
    done = _fresh_python(code, CC=str(tmp_path / "no-such-cc"), KMN_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    first, message = done.stdout.splitlines()[:2]
    assert first == "True True 1"
    assert "could not be built" in message and "KMN_NATIVE=0" in message
    off = _fresh_python(code, KMN_NATIVE="0", KMN_NATIVE_CACHE=str(tmp_path / "cache"))
    assert off.returncode == 0 and off.stdout.splitlines()[0] == "True True 0", off.stderr


def test_builds_into_the_cache_once(tmp_path):
    code = "from kmnlib import kernel_rows\nprint(kernel_rows.library() is not None)\n"
    cache = tmp_path / "cache"
    first = _fresh_python(code, KMN_NATIVE_CACHE=str(cache))
    assert first.returncode == 0 and first.stdout.strip() == "True", first.stderr
    built = sorted(cache.glob("kernel_rows-*.so"))
    assert len(built) == 1 and not list(cache.glob("tmp*"))
    stamp = built[0].stat().st_mtime_ns
    again = _fresh_python(code, KMN_NATIVE_CACHE=str(cache))
    assert again.stdout.strip() == "True" and built[0].stat().st_mtime_ns == stamp
