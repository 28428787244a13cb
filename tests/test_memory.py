"""The memory read (kmnlib.memory) against a literal, loop-based reading of KMN Eq. 3-5 and STM's read."""
from __future__ import annotations

import math

import pytest
import torch

from kmnlib.memory import chunk_size, exp_floor, memory_read, read_weights


def reference_read(mem_key, mem_value, query_key, sigma):
    """Eq. 3-5 written out with Python loops over memory p and query q (float64, one batch item)."""
    ck, t, h, w = mem_key.shape
    cv = mem_value.shape[0]
    hq, wq = query_key.shape[1:]
    mem_pos = [(ti, y, x) for ti in range(t) for y in range(h) for x in range(w)]
    q_pos = [(y, x) for y in range(hq) for x in range(wq)]
    c = {(p, q): float(torch.dot(mem_key[:, p[0], p[1], p[2]], query_key[:, q[0], q[1]]))
         for p in mem_pos for q in q_pos}
    out = torch.zeros(cv, hq, wq, dtype=torch.float64)
    # q̂(p): the query position that best matches memory position p (Eq. 3).
    qhat = {p: max(q_pos, key=lambda q: c[(p, q)]) for p in mem_pos}
    for q in q_pos:
        num = []
        for p in mem_pos:
            g = 1.0
            if sigma is not None:
                dy, dx = q[0] - qhat[p][0], q[1] - qhat[p][1]
                g = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))   # Eq. 4
            num.append(math.exp(c[(p, q)] / math.sqrt(ck)) * g)
        z = sum(num)
        for p, n in zip(mem_pos, num):                                     # Eq. 5
            out[:, q[0], q[1]] += (n / z) * mem_value[:, p[0], p[1], p[2]]
    return out


def _random(b, ck, cv, t, h, w, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mk = torch.randn(b, ck, t, h, w, generator=g, dtype=dtype) * scale
    mv = torch.randn(b, cv, t, h, w, generator=g, dtype=dtype)
    qk = torch.randn(b, ck, h, w, generator=g, dtype=dtype) * scale
    return mk, mv, qk


@pytest.mark.parametrize("t,h,w,sigma", [(1, 3, 4, 1.0), (2, 4, 3, 0.7), (3, 2, 5, 2.5),
                                          (2, 5, 5, 7.0), (2, 3, 3, None)])
def test_matches_loop_reference(t, h, w, sigma):
    mk, mv, qk = _random(2, 4, 3, t, h, w, seed=t * 100 + h * 10 + w)
    got = memory_read(mk, mv, qk, sigma=sigma)
    for i in range(2):
        want = reference_read(mk[i], mv[i], qk[i], sigma)
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_float32_matches_reference():
    mk, mv, qk = _random(1, 8, 3, 2, 4, 4, seed=7)
    got = memory_read(mk.float(), mv.float(), qk.float(), sigma=2.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[0].double(), reference_read(mk[0], mv[0], qk[0], 2.0),
                               rtol=1e-5, atol=1e-5)


def test_kernel_changes_the_read():
    # Guards against a kernel that is silently ignored: a narrow σ must change the result.
    mk, mv, qk = _random(1, 4, 3, 2, 5, 5, seed=3)
    assert (memory_read(mk, mv, qk, sigma=0.5) - memory_read(mk, mv, qk)).abs().max() > 1e-3


@pytest.mark.parametrize("sigma", [None, 1.5])
@pytest.mark.parametrize("positions", [1, 7, 16])
def test_chunked_equals_unchunked(sigma, positions):
    mk, mv, qk = _random(2, 8, 5, 4, 6, 5, seed=11, dtype=torch.float32)
    whole = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=1 << 40)
    b, q, p = 2, 6 * 5, 4 * 6 * 5
    budget = positions * b * q * 8  # exactly `positions` memory positions per chunk
    assert chunk_size(b, q, p, budget) == positions
    chunked = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=budget)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_chunk_size_bounds():
    assert chunk_size(1, 100, 50, budget_bytes=1) == 1
    assert chunk_size(1, 100, 50, budget_bytes=1 << 40) == 50
    with pytest.raises(ValueError):
        chunk_size(1, 100, 50, budget_bytes=0)


def test_huge_sigma_equals_stm_read():
    mk, mv, qk = _random(2, 16, 8, 3, 6, 7, seed=5, dtype=torch.float32)
    torch.testing.assert_close(memory_read(mk, mv, qk, sigma=1e6), memory_read(mk, mv, qk, sigma=None),
                               rtol=1e-5, atol=1e-5)


def test_stm_read_is_plain_softmax():
    # STM's read as in the official code: softmax over T·h·w of c/√d, then the weighted value sum.
    mk, mv, qk = _random(2, 16, 8, 3, 4, 5, seed=9, dtype=torch.float32)
    p = torch.softmax(torch.einsum("bcp,bcq->bpq", mk.flatten(2), qk.flatten(2)) / 4.0, dim=1)
    want = torch.einsum("bvp,bpq->bvq", mv.flatten(2), p).view(2, 8, 4, 5)
    torch.testing.assert_close(memory_read(mk, mv, qk), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [None, 0.5, 7.0])
def test_extreme_logits_are_finite(sigma):
    mk, mv, qk = _random(2, 16, 8, 3, 6, 7, seed=2, scale=1e3, dtype=torch.float32)
    out = memory_read(mk, mv, qk, sigma=sigma, budget_bytes=6 * 42 * 2 * 8)  # chunked too
    assert torch.isfinite(out).all()
    # With logits this sharp each query reads (almost) one memory value: a convex combination.
    lo, hi = mv.flatten(2).amin(2), mv.flatten(2).amax(2)
    assert (out.flatten(2) >= lo[..., None] - 1e-4).all() and (out.flatten(2) <= hi[..., None] + 1e-4).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extreme_logits_under_autocast(dtype):
    mk, mv, qk = _random(1, 16, 8, 3, 6, 7, seed=4, scale=1e3, dtype=torch.float32)
    mk, mv, qk = mk.to(dtype), mv.to(dtype), qk.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = memory_read(mk, mv, qk, sigma=7.0)
        out_stm = memory_read(mk, mv, qk, sigma=None)
    assert out.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(out_stm).all()


def test_far_query_positions_do_not_underflow():
    # Every memory position matches the top-left query cell, so for the bottom-right cells every
    # kernel value underflows in linear space (exp(-d²/2σ²) ≈ 1e-300); the log-space read stays finite.
    mk = torch.zeros(1, 2, 1, 20, 20)
    mk[:, 0] = 1.0
    qk = torch.zeros(1, 2, 20, 20)
    qk[0, 0, 0, 0] = 5.0
    mv = torch.randn(1, 3, 1, 20, 20)
    out = memory_read(mk, mv, qk, sigma=0.5)
    assert torch.isfinite(out).all()
    # All kernels share one centre, so weights stay uniform over p: the read is the mean value.
    torch.testing.assert_close(out[0, :, 19, 19], mv[0].flatten(1).mean(1), rtol=1e-5, atol=1e-5)


def test_gradient_flows_without_kernel():
    mk, mv, qk = _random(1, 4, 3, 2, 3, 3, seed=1, dtype=torch.float32)
    mk.requires_grad_(True)
    qk.requires_grad_(True)
    memory_read(mk, mv, qk, sigma=None, budget_bytes=9 * 8 * 5).sum().backward()
    assert mk.grad is not None and torch.isfinite(mk.grad).all() and mk.grad.abs().sum() > 0


def test_read_weights_match_read():
    mk, mv, qk = _random(1, 8, 4, 3, 4, 5, seed=13, dtype=torch.float32)
    for sigma in (None, 1.0):
        wmap = read_weights(mk, qk, (2, 3), sigma)
        assert wmap.shape == (3, 4, 5)
        torch.testing.assert_close(wmap.sum(), torch.tensor(1.0))
        # Σ_p w(p,q) v(p) must be exactly what memory_read returns at q.
        via_weights = (mv[0].flatten(1) * wmap.flatten()).sum(1)
        torch.testing.assert_close(via_weights, memory_read(mk, mv, qk, sigma=sigma)[0, :, 2, 3],
                                   rtol=1e-5, atol=1e-5)


def test_bad_input_errors():
    mk, mv, qk = _random(1, 4, 3, 2, 3, 3, seed=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="sigma"):
        memory_read(mk, mv, qk, sigma=0.0)
    with pytest.raises(ValueError, match="query_key"):
        memory_read(mk, mv, qk[:, :2])
    with pytest.raises(ValueError, match="outside"):
        read_weights(mk, qk, (3, 0), 1.0)


@pytest.mark.parametrize("sigma", [None, 1.0])
def test_logits_far_below_the_best_are_read_exactly(sigma):
    # Keys scaled so that many logits lie more than 87 below their query's best: their exp()
    # underflows in float32, and memory_read clamps them at exp_floor first (a speed fix). The
    # read must still equal the literal float64 reference.
    mk, mv, qk = _random(1, 4, 3, 2, 4, 5, seed=13, scale=6.0)
    c = torch.einsum("cp,cq->pq", mk[0].flatten(1), qk[0].flatten(1)) / 2.0
    below = ((c - c.amax(dim=0, keepdim=True)) < exp_floor(torch.float32)).float().mean()
    assert below > 0.2, below               # the clamp is exercised
    got = memory_read(mk.float(), mv.float(), qk.float(), sigma=sigma)
    torch.testing.assert_close(got[0].double(), reference_read(mk[0], mv[0], qk[0], sigma),
                               rtol=1e-5, atol=1e-5)


def test_study_reads_fit_one_chunk():
    """The default chunk budget leaves the mini study's reads whole: at its inference height every
    DAVIS-16 val video's largest memory (STM's schedule), even with two objects (the pair videos),
    is one chunk — so the budget does not touch the study's numbers (kmnlib/config.py)."""
    from kmnlib.config import FEATURE_STRIDE, MINI, resolve_data_root
    from kmnlib.data.davis import DAVISDataset
    from kmnlib.memory_bank import memory_schedule

    root = resolve_data_root() / "DAVIS-2016"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    inf = MINI.inference
    h = inf.infer_height
    cells = math.ceil(h / FEATURE_STRIDE) * math.ceil(round(854 * h / 480) / FEATURE_STRIDE)
    val = DAVISDataset(root, year="2016", split="val", resolution="480p")
    longest = max(len(val[name]) for name in val.names)
    assert longest >= 100  # the real split (its longest video has 104 frames)
    positions = len(memory_schedule(longest, inf.mem_every)[-1]) * cells
    assert chunk_size(2, cells, positions, inf.read_budget_bytes) == positions
    # ... and a budget a quarter of the default would have split them.
    assert chunk_size(2, cells, positions, inf.read_budget_bytes // 4) < positions
