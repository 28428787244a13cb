"""Every read backend (kmnlib.read_backends) against the reference read (kmnlib.memory), float for
float: the native kernel pass on constructed hard rows, and whole reads and videos on real frames
encoded by the ImageNet-initialised mini network. A change to the reference that a backend does
not follow fails here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kmnlib.config import MINI, READ_BACKENDS
from kmnlib.data import DAVISDataset, frames_to_tensor
from kmnlib.inference import segment_video
from kmnlib.memory import gaussian_kernel, memory_read
from kmnlib.model import build_model
from kmnlib.model.ops import pad_divide_by, resize_frames, resize_labels
from kmnlib.read_backends import kernel_for
from kmnlib.read_backends import native as kernel_rows

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


@pytest.fixture(scope="module")
def real_read(davis_root):
    """Keys and values of two real DAVIS frames (memory, with the given mask) and the query key of
    a third, encoded by the mini network (ImageNet EfficientNet-Lite0 trunk) at 240p."""
    seq = DAVISDataset(davis_root, "2016", "val", "480p")["dog"]
    frames = resize_frames(frames_to_tensor(seq.load_frames([0, 5, 10])), 240)
    mask = resize_labels(torch.from_numpy(seq.load_mask(0) > 0).to(torch.uint8),
                         tuple(frames.shape[-2:])).float()
    torch.manual_seed(0)
    model = build_model(MINI.model).eval()
    with torch.inference_mode():
        fp, _ = pad_divide_by(frames)
        mp, _ = pad_divide_by(mask[None].expand(2, -1, -1))
        mk, mv = model.encode_memory(fp[:2], mp, torch.zeros_like(mp))
        qk = model.encode_query(fp[2:])[0]
    return model, frames, mask.long(), mk.permute(1, 0, 2, 3)[None], mv.permute(1, 0, 2, 3)[None], qk


@pytest.mark.parametrize("backend", READ_BACKENDS)
@pytest.mark.parametrize("sigma,budget", [(None, 1 << 30), (0.8, 1 << 30), (7.0, 1 << 30),
                                          (3.5, 1 << 16)])
def test_every_backend_reads_what_the_reference_reads(real_read, backend, sigma, budget, native):
    """Bit for bit, whole and in chunks, on real features (the native pass is promised exact)."""
    _, _, _, mk, mv, qk = real_read
    with torch.inference_mode():
        ref = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=budget)
        got = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=budget, kernel=kernel_for(backend))
    assert torch.equal(got, ref)
    if sigma is not None:
        assert (ref - memory_read(mk, mv, qk, sigma=None)).abs().max() > 1e-4   # the kernel acted


def test_a_changed_reference_is_caught(real_read, native):
    """The comparison above can fail: a reference whose kernel is 1 % wider reads differently, and
    the native backend (which does not follow it) no longer equals it."""
    _, _, _, mk, mv, qk = real_read

    def wider(c, hw, sigma):
        return gaussian_kernel(c, hw, sigma * 1.01)
    with torch.inference_mode():
        changed = memory_read(mk, mv, qk, sigma=3.5, kernel=wider)
        native_read = memory_read(mk, mv, qk, sigma=3.5, kernel=kernel_for("native"))
    assert not torch.equal(changed, native_read)


@pytest.mark.parametrize("sigma", [None, 3.5])
def test_videos_identical_with_every_backend(real_read, sigma, native):
    model, frames, mask, *_ = real_read
    runs = [segment_video(model, frames, mask, sigma=sigma, mem_every=5, read_backend=b)
            for b in READ_BACKENDS]
    for probs, labels in runs[1:]:
        assert torch.equal(probs, runs[0][0]) and torch.equal(labels, runs[0][1])


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="read backend 'cuda'.*inference.read_backend"):
        kernel_for("cuda")


def test_edited_read_takes_the_maximum_after_the_edit(native):
    """An intervention cuts logits after the kernel; the maximum must be taken after the cut, also
    where the native pass gave one for free."""
    g = torch.Generator().manual_seed(5)
    mk, mv = torch.randn(1, 16, 2, 6, 8, generator=g) * 3, torch.randn(1, 8, 2, 6, 8, generator=g)
    qk = torch.randn(1, 16, 6, 8, generator=g) * 3
    cut = torch.rand(1, 96, 48, generator=g) > 0.5

    def edit(logits, rows):
        return logits.masked_fill(cut[:, rows], -1e9)
    with torch.inference_mode():
        ours = memory_read(mk, mv, qk, sigma=2.0, kernel=kernel_for("native"), edit_logits=edit)
        theirs = memory_read(mk, mv, qk, sigma=2.0, edit_logits=edit)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, memory_read(mk, mv, qk, sigma=2.0))


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=300)


def test_without_a_compiler_the_read_falls_back_with_one_warning(tmp_path):
    code = ("import warnings, torch\n"
            "from kmnlib.read_backends import native as kernel_rows, kernel_for\n"
            "from kmnlib.memory import memory_read\n"
            "g = torch.Generator().manual_seed(0)\n"
            "mk, mv, qk = torch.randn(1, 8, 1, 4, 5, generator=g), torch.randn(1, 3, 1, 4, 5, generator=g), "
            "torch.randn(1, 8, 4, 5, generator=g)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    out = memory_read(mk, mv, qk, sigma=1.0, kernel=kernel_for('native'))\n"
            "    memory_read(mk, mv, qk, sigma=1.0, kernel=kernel_for('native'))\n"
            "print(kernel_rows.library() is None, bool(torch.isfinite(out).all()), len(caught))\n"
            "print(caught[0].message if caught else '')\n")
    done = _fresh_python(code, CC=str(tmp_path / "no-such-cc"), KMN_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    first, message = done.stdout.splitlines()[:2]
    assert first == "True True 1"
    assert "could not be built" in message and "read_backend='torch'" in message


def test_builds_into_the_cache_once(tmp_path):
    code = "from kmnlib.read_backends import native\nprint(native.library() is not None)\n"
    cache = tmp_path / "cache"
    first = _fresh_python(code, KMN_NATIVE_CACHE=str(cache))
    assert first.returncode == 0 and first.stdout.strip() == "True", first.stderr
    built = sorted(cache.glob("kernel_rows-*.so"))
    assert len(built) == 1 and not list(cache.glob("tmp*"))
    stamp = built[0].stat().st_mtime_ns
    again = _fresh_python(code, KMN_NATIVE_CACHE=str(cache))
    assert again.stdout.strip() == "True" and built[0].stat().st_mtime_ns == stamp
