"""Memory-read benchmark: KM read vs STM read cost, and peak RSS vs number of memory frames.

Realistic feature sizes: a 480p DAVIS frame padded to 480x864 gives a 30x54 key grid; ResNet-50
widths Ck=128, Cv=512; one object. With STM's schedule (mem_every=5) a 180-frame video holds up
to 180/5+1 = 37 memory frames.

Two measurements, each printed as ratios from one run:

* time: ``memory_read`` with ``sigma=7`` (KM) and ``sigma=None`` (STM), interleaved, per T;
* peak RSS: each (T, variant) in a fresh subprocess (ru_maxrss is a process-lifetime maximum),
  reported next to the RSS before the read, for the chunked read (default byte budget) and the
  unchunked one (whole logits in one pass) for comparison.

    python benchmarks/bench_memory_read.py --quick
    python benchmarks/bench_memory_read.py
    python benchmarks/bench_memory_read.py --budgets 256 128 64 32   # time and RSS per chunk budget
    python benchmarks/bench_memory_read.py --before-after    # issue 10: the read before/after
    python benchmarks/bench_memory_read.py --before-after \
        --checkpoint results/mini/checkpoints/main_from_pretrain.pt     # ... and on a trained read

``--before-after`` compares the read as it was before the issue-10 changes (``read_before`` below:
``argmax``, the kernel as one ``baddbmm`` with a 0/1 row/column selector, ``exp`` of the raw
max-subtracted logits) with :func:`memory_read` now (``max(...).indices``, the kernel as two
broadcast additions, logits clamped at :func:`kmnlib.memory.exp_floor` before ``exp``), interleaved,
at the logit scale of trained reads (``--logit-std``; random unit keys give std 1, a trained mini
read at 480p ≈ 19). First it times ``torch.exp`` itself on inputs that do and do not underflow, and
a bmm on subnormal operands with the flush off, on in the calling thread only, and in every thread.

Every ``memory_read`` timed here computes the kernel as video inference does
(``InferenceConfig.read_backend``, :data:`KERNEL`); ``memory_read``'s own default is the reference.
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from kmnlib.config import InferenceConfig
from kmnlib.denormals import flush_denormals
from kmnlib.memory import chunk_size, exp_floor, memory_read
from kmnlib.read_backends import kernel_for, native

#: The read's kernel as video inference computes it (``InferenceConfig.read_backend``, "native":
#: one compiled pass per memory row, the reference's floats); ``memory_read``'s own default is the
#: PyTorch reference. Every read timed here as "now" / "after" uses this, as inference does.
KERNEL = kernel_for(InferenceConfig.read_backend)

GRID = (30, 54)       # 480p padded to 480x864, stride 16
KEY_DIM, VALUE_DIM = 128, 512
UNCHUNKED = 1 << 50   # a budget that never splits


def _inputs(t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = GRID
    return (torch.randn(1, KEY_DIM, t, h, w, generator=g), torch.randn(1, VALUE_DIM, t, h, w, generator=g),
            torch.randn(1, KEY_DIM, h, w, generator=g))


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: current, VmHWM: peak) in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS, so the peak seen afterwards is the
    # read's own (not torch's import, which alone holds ~0.7 GiB of the CUDA build).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(t: int, sigma: float | None, budget: int | None) -> None:
    """Run one read in this (fresh) process; print RSS before and the peak during it (MiB), as JSON."""
    mk, mv, qk = _inputs(t)
    with torch.inference_mode():
        memory_read(mk[:, :, :1], mv[:, :, :1], qk, sigma=sigma, kernel=KERNEL)   # allocator/oneDNN warm-up
        _reset_peak()
        before = _status_mib("VmRSS")
        memory_read(mk, mv, qk, sigma=sigma, kernel=KERNEL,
                    budget_bytes=InferenceConfig.read_budget_bytes if budget is None else budget)
        peak = _status_mib("VmHWM")
    print(json.dumps({"before_mib": before, "peak_mib": peak}))


def measure_rss(t: int, sigma: float | None, budget: int | None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(t), str(sigma), str(budget)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_reads(ts: list[int], reps: int) -> None:
    print(f"\n== read time, grid {GRID}, Ck={KEY_DIM}, Cv={VALUE_DIM}, 1 object; "
          f"median of {reps} interleaved reps ==")
    print(f"{'T':>4} {'STM ms':>9} {'KM ms':>9} {'KM/STM':>7}")
    with torch.inference_mode():
        memory_read(*_inputs(1), sigma=7.0, kernel=KERNEL)  # warm-up
        for t in ts:
            mk, mv, qk = _inputs(t)
            ms = _interleaved_ms({"stm": lambda: memory_read(mk, mv, qk, sigma=None, kernel=KERNEL),
                                  "km": lambda: memory_read(mk, mv, qk, sigma=7.0, kernel=KERNEL)},
                                 reps)
            print(f"{t:>4} {ms['stm']:>9.1f} {ms['km']:>9.1f} {ms['km'] / ms['stm']:>7.3f}", flush=True)


@contextlib.contextmanager
def memory_read_replaced(make: Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]
                         ) -> Iterator[None]:
    """Inside the block the network reads memory with ``make(current memory_read)`` — a spy, a
    timer or another read. Video inference (``segment_video``: ``kmnlib.propagation.Propagator``)
    and training (``KMN.segment``) each look ``memory_read`` up in their own module at call time;
    both are replaced, by one ``make(...)`` where they hold the same function. The replacement
    takes ``memory_read``'s keywords (``sigma``, ``budget_bytes``, ``kernel``, ``stats``,
    ``edit_logits``): forward ``**kwargs``."""
    from kmnlib import propagation
    from kmnlib.model import network

    modules = (propagation, network)
    originals = [m.memory_read for m in modules]
    made: dict[Any, Callable[..., torch.Tensor]] = {}
    try:
        for module, original in zip(modules, originals):
            if original not in made:
                made[original] = make(original)
            module.memory_read = made[original]
        yield
    finally:
        for module, original in zip(modules, originals):
            module.memory_read = original


def _selector(hq: int, wq: int) -> torch.Tensor:
    """(hq+wq, hq·wq) 0/1: query cell q = y·wq + x has a 1 in row y and in row hq + x — the old
    kernel's way of adding log g_y + log g_x with one baddbmm."""
    q = torch.arange(hq * wq)
    pick = torch.zeros(hq + wq, hq * wq)
    pick[q // wq, q] = 1
    pick[hq + q % wq, q] = 1
    return pick


def _below_floor(mk: torch.Tensor, qk: torch.Tensor) -> tuple[float, float]:
    """(std of the STM read's logits c/√d, fraction of them below exp_floor after the max)."""
    c = torch.bmm(mk.flatten(2).transpose(1, 2), qk.flatten(2)) / mk.shape[1] ** 0.5
    low = ((c - c.amax(dim=1, keepdim=True)) < exp_floor(torch.float32)).float().mean()
    return float(c.std()), float(low)


def _median_ms(fn: Any, reps: int) -> float:
    """Median wall time of ``fn()`` in ms over ``reps`` calls, after one untimed call."""
    fn()
    ts = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - start)
    return statistics.median(ts) * 1e3


def _interleaved_ms(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median wall time in ms of each of ``fns`` over ``reps`` rounds, one call of each per round,
    the order reversed every other round (so drift of this VM falls on all of them alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(reps):
        for k in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _compare_reads(mk: torch.Tensor, mv: torch.Tensor, qk: torch.Tensor, reps: int
                   ) -> dict[str, tuple[float, float, float]]:
    """read → (before ms, after ms, max|Δ|) for STM's read and KM σ=7, before/after interleaved."""
    rows = {}
    for label, sigma in (("STM", None), ("KM", 7.0)):
        fns = {"before": lambda: read_before(mk, mv, qk, sigma),
               "after": lambda: memory_read(mk, mv, qk, sigma=sigma, kernel=KERNEL)}
        out = {k: f() for k, f in fns.items()}   # warm-up, and the outputs compared
        ms = _interleaved_ms(fns, reps)
        rows[label] = (ms["before"], ms["after"], float((out["before"] - out["after"]).abs().max()))
    return rows


def read_before(mk: torch.Tensor, mv: torch.Tensor, qk: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """The read as computed before issue 10's changes, one chunk (the reference of --before-after)."""
    b, ck, t, h, w = mk.shape
    hq, wq = qk.shape[2:]
    c = torch.bmm(mk.reshape(b, ck, -1).transpose(1, 2), qk.reshape(b, ck, -1) * (1.0 / ck ** 0.5))
    if sigma is not None:
        qhat = c.argmax(dim=2)
        qy, qx = torch.div(qhat, wq, rounding_mode="floor").float(), (qhat % wq).float()
        inv = 1.0 / (2.0 * sigma * sigma)
        log_g = torch.cat([-(torch.arange(hq) - qy[..., None]).square_() * inv,
                           -(torch.arange(wq) - qx[..., None]).square_() * inv], dim=2)
        c.baddbmm_(log_g, _selector(hq, wq)[None].expand(b, -1, -1))
    e = c.sub_(c.amax(dim=1, keepdim=True)).exp_()
    return (torch.bmm(mv.reshape(b, mv.shape[1], -1), e) / e.sum(dim=1)[:, None]).view(b, -1, hq, wq)


def time_exp(n: int = 8100 * 1620, reps: int = 7) -> None:
    print(f"\n== torch.exp over {n / 1e6:.1f} M float32 (one 480p read's logits), median of {reps} ==")
    floor = exp_floor(torch.float32)
    for lo in (-80.0, -200.0):
        x0 = torch.empty(n).uniform_(lo, 0.0, generator=torch.Generator().manual_seed(0))
        x = torch.empty_like(x0)
        for label, fn in (("exp", lambda: x.copy_(x0).exp_()),
                          (f"clamp({floor:.1f})+exp", lambda: x.copy_(x0).clamp_(min=floor).exp_())):
            print(f"inputs uniform in [{lo:g}, 0]  {label:<18} {_median_ms(fn, reps):8.1f} ms "
                  f"(copy included)", flush=True)


def time_subnormals(reps: int = 3) -> None:
    """A value bmm (Cv=128, 8100 memory positions, 1620 queries) whose weights hold 5 % subnormals,
    with the flush off, on in the calling thread only (``torch.set_flush_denormal``), and on in
    every thread (:func:`kmnlib.denormals.flush_denormals`)."""
    print(f"\n== bmm with 5 % subnormal operands, {torch.get_num_threads()} threads, median of {reps} ==")
    weights = np.full((1, 8100, 1620), 0.5, dtype=np.float32)
    weights.reshape(-1)[::20] = np.ones(1, dtype=np.uint32).view(np.float32)[0]   # by bit pattern
    e = torch.from_numpy(weights)
    mv = torch.rand(1, 128, 8100, generator=torch.Generator().manual_seed(0))
    modes = (("flush off (every thread)", lambda: flush_denormals(False)),
             ("flush on, calling thread only", lambda: (flush_denormals(False),
                                                        torch.set_flush_denormal(True))),
             ("flush on, every thread", lambda: flush_denormals(True)))
    for label, set_mode in modes:
        set_mode()
        print(f"{label:<32} {_median_ms(lambda: torch.bmm(mv, e), reps):9.1f} ms", flush=True)


def before_after(ts: list[int], reps: int, logit_std: float, key_dim: int, value_dim: int) -> None:
    print(f"\n== read before / after issue 10, grid {GRID}, Ck={key_dim}, Cv={value_dim}, 1 object, "
          f"logit std {logit_std:g}, σ=7; median of {reps} interleaved reps ==")
    print(f"{'T':>4} {'read':>5} {'before ms':>10} {'after ms':>9} {'speed-up':>9} {'max|Δ|':>9}")
    scale = logit_std ** 0.5        # c/√d of unit keys has std 1; scaling both keys by s gives s²
    g = torch.Generator().manual_seed(0)
    # As segment_video's callers and the trainer run (kmnlib.denormals): without it the exp's
    # subnormal results also slow the value bmm, which would exaggerate the difference.
    flush_denormals(True)
    h, w = GRID
    with torch.inference_mode():
        for t in ts:
            mk = torch.randn(1, key_dim, t, h, w, generator=g) * scale
            mv = torch.randn(1, value_dim, t, h, w, generator=g)
            qk = torch.randn(1, key_dim, h, w, generator=g) * scale
            _, low = _below_floor(mk, qk)
            print(f"{t:>4}  STM-read logits below the exp floor after the max: {100 * low:.1f} %")
            rows = _compare_reads(mk, mv, qk, reps)
            for label, (b, a, diff) in rows.items():
                print(f"{t:>4} {label:>5} {b:>10.1f} {a:>9.1f} {b / a:>8.2f}x {diff:>9.1e}", flush=True)
            (sb, sa, _), (kb, ka, _) = rows["STM"], rows["KM"]
            print(f"{t:>4}  KM/STM before {kb / sb:.3f}, after {ka / sa:.3f}", flush=True)


def trained_read_inputs(checkpoint: str, n_frames: int, sequence: str = "blackswan"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs of the last memory read of ``segment_video`` over the first ``n_frames`` frames of
    ``sequence`` at 480p with a trained model (BatchNorm folded, as evaluation runs it)."""
    from kmnlib.checkpoints import load_model
    from kmnlib.config import resolve_data_root
    from kmnlib.data.davis import DAVISDataset
    from kmnlib.data.video import frames_to_tensor
    from kmnlib.inference import segment_video
    from kmnlib.model.fold import fold_batchnorm

    seq = DAVISDataset(resolve_data_root() / "DAVIS-2016", "2016", "val", "480p")[sequence]
    frames = frames_to_tensor(seq.load_frames(range(n_frames)))
    mask = torch.from_numpy(seq.load_mask(0).astype(np.int64))
    caught: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def spy(read: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def spied(mk, mv, qk, **kw):  # noqa: ANN001, ANN003 - memory_read's own signature
            caught.append((mk.clone(), mv.clone(), qk.clone()))
            return read(mk, mv, qk, **kw)
        return spied

    with memory_read_replaced(spy):
        segment_video(fold_batchnorm(load_model(checkpoint, inference=None)), frames, mask,
                      sigma=7.0, mem_every=5)
    return caught[-1]


def numpy_argmax(c: torch.Tensor) -> torch.Tensor:
    """``c.argmax(-1)`` by NumPy's SIMD arg-max over contiguous CPU rows (the former
    ``kmnlib.argmax.argmax_last``, removed from the library; kept here for the "kernel part" rows)."""
    rows = c.detach().reshape(-1, c.shape[-1]).numpy()
    return torch.from_numpy(rows.argmax(axis=1).astype(np.int64, copy=False)).reshape(c.shape[:-1])


def kernel_parts(c: torch.Tensor, grid: tuple[int, int], reps: int) -> None:
    """The kernel's two steps on real logits c (1,P,Q), old form against new: q̂ by ``argmax`` or
    ``max(...).indices``; log g added by one ``baddbmm`` with a 0/1 selector or two broadcast adds."""
    hq, wq = grid
    work = c.clone()
    qhat = c.max(dim=2).indices
    assert torch.equal(qhat, c.argmax(dim=2))
    inv = 1.0 / (2.0 * 7.0 ** 2)
    gy = -(torch.arange(hq) - torch.div(qhat, wq, rounding_mode="floor")[..., None]).square() * inv
    gx = -(torch.arange(wq) - (qhat % wq)[..., None]).square() * inv
    pick = _selector(hq, wq)
    log_g = torch.cat([gy, gx], dim=2).float()
    grid4 = work.view(1, -1, hq, wq)
    copy = _median_ms(lambda: work.copy_(c), reps)
    # Other exact ways to q̂ tried for the +3 % goal (each checked equal to max(...).indices), and
    # the value-only reduction as a floor: what the index bookkeeping itself costs.
    b, p = c.shape[:2]

    def rows_first() -> torch.Tensor:   # row maxima, the first row holding the max, then its column
        y = grid_c.amax(dim=3).argmax(dim=2)
        row = grid_c.gather(2, y[..., None, None].expand(b, p, 1, wq))[:, :, 0]
        return y * wq + row.argmax(dim=2)

    grid_c = c.view(b, p, hq, wq)
    c_qp = c.transpose(1, 2).contiguous()                   # (1,Q,P): the reduction over rows
    assert torch.equal(rows_first(), qhat) and torch.equal(c_qp.max(dim=1).indices, qhat)
    assert torch.equal(numpy_argmax(c), qhat)
    rows = {"q̂: argmax": _median_ms(lambda: c.argmax(dim=2), reps),
            "q̂: max(...).indices": _median_ms(lambda: c.max(dim=2).indices, reps),
            "q̂: NumPy argmax": _median_ms(lambda: numpy_argmax(c), reps),
            "q̂: rows first (amax, gather)": _median_ms(rows_first, reps),
            "q̂: max over (Q,P) layout": _median_ms(lambda: c_qp.max(dim=1).indices, reps),
            "floor: amax, values only": _median_ms(lambda: c.amax(dim=2), reps),
            "log g: baddbmm + selector": _median_ms(lambda: work.copy_(c).baddbmm_(log_g, pick[None]),
                                                    reps) - copy,
            "log g: two broadcast adds": _median_ms(
                lambda: (work.copy_(c), grid4.add_(gy.float()[..., :, None]).add_(gx.float()[..., None, :])),
                reps) - copy}
    if native.library() is not None:   # q̂, log g and the softmax's amax over p in one pass
        rows["q̂ + log g + amax: native pass"] = _median_ms(
            lambda: (work.copy_(c), native.apply_kernel_(work, grid, 7.0)), reps) - copy
        rows["(amax over p alone)"] = _median_ms(lambda: c.amax(dim=1), reps)
    for label, ms in rows.items():
        print(f"    kernel part  {label:<30} {ms:7.1f} ms", flush=True)


def before_after_trained(checkpoint: str, n_frames: int, reps: int) -> None:
    flush_denormals(True)
    with torch.inference_mode():
        mk, mv, qk = trained_read_inputs(checkpoint, n_frames)
        ck = mk.shape[1]
        std, low = _below_floor(mk, qk)
        print(f"\n== trained read ({checkpoint}), blackswan frame {n_frames - 1} at 480p: memory "
              f"{mk.shape[2]} frames, Ck={ck}, Cv={mv.shape[1]}; logit std {std:.1f}, "
              f"{100 * low:.1f} % of STM-read logits below the exp floor; median of {reps} ==")
        kernel_parts(torch.bmm(mk.flatten(2).transpose(1, 2), qk.flatten(2)) / ck ** 0.5,
                     tuple(qk.shape[2:]), reps)
        print(f"{'read':>5} {'before ms':>10} {'after ms':>9} {'speed-up':>9} {'max|Δ|':>9}")
        for label, (b, a, diff) in _compare_reads(mk, mv, qk, reps).items():
            print(f"{label:>5} {b:>10.1f} {a:>9.1f} {b / a:>8.2f}x {diff:>9.1e}", flush=True)


def rss_sweep(ts: list[int]) -> None:
    print("\n== peak RSS of one KM read (sigma=7), fresh process per row, MiB ==")
    print(f"{'T':>4} {'inputs':>8} {'chunked peak':>13} {'read extra':>11} {'unchunked peak':>15} "
          f"{'read extra':>11}")
    for t in ts:
        inputs_mib = (2 * KEY_DIM + VALUE_DIM) * t * GRID[0] * GRID[1] * 4 / 2**20
        c = measure_rss(t, 7.0, None)
        u = measure_rss(t, 7.0, UNCHUNKED)
        print(f"{t:>4} {inputs_mib:>8.0f} {c['peak_mib']:>13.0f} {c['peak_mib'] - c['before_mib']:>11.0f} "
              f"{u['peak_mib']:>15.0f} {u['peak_mib'] - u['before_mib']:>11.0f}", flush=True)


def budget_sweep(ts: list[int], budgets_mib: list[int], reps: int) -> None:
    """KM read (σ=7) per chunk budget: time (interleaved, ratio to the first budget) and peak RSS
    above the inputs (a fresh process per cell) — what a smaller ``read_budget_bytes`` costs."""
    budgets = [mib * 2**20 for mib in budgets_mib]
    print(f"\n== KM read per chunk budget, grid {GRID}, Ck={KEY_DIM}, Cv={VALUE_DIM}, 1 object; "
          f"time: median of {reps} interleaved reps; RSS: fresh process per cell ==")
    print(f"{'T':>4} {'budget MiB':>10} {'chunks':>6} {'ms':>8} {'ratio':>6} {'read extra MiB':>14}")
    with torch.inference_mode():
        memory_read(*_inputs(1), sigma=7.0, kernel=KERNEL)  # warm-up
        for t in ts:
            mk, mv, qk = _inputs(t)
            ms = _interleaved_ms({mib: (lambda b=budget: memory_read(mk, mv, qk, sigma=7.0, budget_bytes=b,
                                                                     kernel=KERNEL))
                                  for mib, budget in zip(budgets_mib, budgets)}, reps)
            n_mem, n_q = t * GRID[0] * GRID[1], GRID[0] * GRID[1]
            for mib, budget in zip(budgets_mib, budgets):
                r = measure_rss(t, 7.0, budget)
                chunks = -(-n_mem // chunk_size(1, n_q, n_mem, budget))
                print(f"{t:>4} {mib:>10} {chunks:>6} {ms[mib]:>8.1f} {ms[mib] / ms[budgets_mib[0]]:>6.3f} "
                      f"{r['peak_mib'] - r['before_mib']:>14.0f}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        t, sigma, budget = sys.argv[2:5]
        child(int(t), None if sigma == "None" else float(sigma), None if budget == "None" else int(budget))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few sizes, few repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--before-after", action="store_true",
                    help="only: torch.exp timing and the read before/after issue 10")
    ap.add_argument("--logit-std", type=float, default=16.0,
                    help="--before-after: logit scale of the read (random keys at 16 leave about as "
                         "many logits below the exp floor, ~11 %%, as a trained mini read at 480p)")
    ap.add_argument("--key-dim", type=int, default=64, help="--before-after: Ck (mini: 64)")
    ap.add_argument("--checkpoint", default=None,
                    help="--before-after: also time the read on a trained model's real read inputs "
                         "(e.g. results/mini/checkpoints/main_from_pretrain.pt)")
    ap.add_argument("--frames", type=int, default=22,
                    help="--checkpoint: the read of this many frames' last step (22: 5 memory frames)")
    ap.add_argument("--value-dim", type=int, default=128, help="--before-after: Cv (mini: 128)")
    ap.add_argument("--budgets", type=int, nargs="+", default=None, metavar="MIB",
                    help="only: the KM read's time and peak RSS per chunk budget (MiB; the first is "
                         "the ratios' base), at 10, 19 and 37 memory frames")
    args = ap.parse_args()
    if args.budgets:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        budget_sweep([10, 19, 37], args.budgets, args.reps or 7)
        return
    if args.before_after:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        time_exp()
        time_subnormals()
        before_after([1, 5, 10], args.reps or 5, args.logit_std, args.key_dim, args.value_dim)
        if args.checkpoint:
            before_after_trained(args.checkpoint, args.frames, args.reps or 5)
        return
    if args.quick:
        time_ts, rss_ts, reps = [1, 10, 37], [1, 10, 37], args.reps or 3
    else:
        time_ts, rss_ts, reps = [1, 2, 5, 10, 19, 28, 37], [1, 5, 10, 19, 28, 37], args.reps or 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    time_reads(time_ts, reps)
    rss_sweep(rss_ts)


if __name__ == "__main__":
    main()
