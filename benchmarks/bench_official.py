"""Speed against the official STM code: our inference and seoungwugoh/STM's, same weights, same frames.

The official code is not part of this project and is not copied into it: pass a clone of it,

    git clone https://github.com/seoungwugoh/STM /path/to/STM
    python benchmarks/bench_official.py --official-repo /path/to/STM --weights /path/to/STM_weights.pth

and its ``model.py`` (class ``STM``, methods ``memorize`` and ``segment``) is imported from there at
run time. Both sides run on the CPU with ``--threads`` (2) torch threads, STM's memory read, on the
first ``--frames`` (15) frames of a DAVIS-2016 val sequence (``--sequence``, default ``blackswan``)
at 480p (480×854, padded to 480×864 inside both), or at ``--height`` rows:

* ours — the path a user takes: ``kmnlib.model.stm_checkpoint.load_stm_checkpoint(weights)``,
  which returns the network prepared for inference by default (BatchNorm folded, Winograd
  convolutions); were it not (a loader asked otherwise, older code), ``prepare_for_inference``
  follows (:func:`ensure_prepared`; the line "ours" says which happened); then
  ``kmnlib.inference.segment_video(model, frames, first_mask, sigma=None, mem_every=5)``;
* official — ``STM()`` from the given ``model.py`` with the same weights (``module.`` prefix removed;
  no ``nn.DataParallel``, which on a CUDA machine would insist on the GPU), driven by the steps of
  the official evaluation loop (``eval_DAVIS.py``'s ``Run_video`` with ``Mem_every=5``: memorise
  the previous frame at every step, keep frame 0 and every 5th, segment, softmax the logits),
  re-implemented here in :func:`run_official` because that script runs its whole evaluation on
  import. Frames are (1,3,T,H,W) floats in [0,1] and masks one-hot over K = 11 channels, as its
  DAVIS test loader gives them (the memory is padded to K object slots, as the official code does).

Run on the CPU without modifying the clone: the official encoders build torchvision ResNet-50s with
ImageNet weights (a download); that constructor is replaced while ``STM()`` is built by one without
them (every weight then comes from the checkpoint). Its helpers move two zero tensors to CUDA
when a GPU is present (``ToCuda``); the imported module's ``ToCuda`` is replaced by the identity.
Nothing in its ``model.py`` hard-codes CUDA otherwise. Modules its imports name but
``memorize``/``segment`` never use (``cv2``, ``matplotlib``, ``tqdm``) are stubbed if not installed.

Weights: ``--weights`` an official checkpoint (``STM_weights.pth``); without it, random weights
(BatchNorm statistics drawn as trained ones look) saved in the official layout
(``kmnlib.model.stm_checkpoint.to_stm_state_dict``) to a temporary file that both sides load.
Subnormal floats are flushed to zero in every thread (``kmnlib.denormals``, as the project's
inference entry points do) for both sides alike, since the mode is process-wide; ``--no-flush``
leaves them as IEEE says.

Timing: one untimed warm-up of each side on the first 3 frames, then ``--reps`` (3) interleaved pairs
of whole runs, the order within a pair alternating (``bench_memory_read._interleaved_ms``: ours then
official, official then ours, ...) so that drift of the machine falls on both alike. Printed: the
median seconds per segmented frame (frame 0 is given) of each side, their ratio ours/official, and
how far the two sides' probabilities and labels differ on the last run (a check that both compute
the same thing).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from kmnlib.config import PAPER
from kmnlib.denormals import flush_denormals
from kmnlib.inference import segment_video
from kmnlib.model import build_model, prepare_for_inference
from kmnlib.model.stm_checkpoint import load_stm_checkpoint, stm_model_config, to_stm_state_dict
from kmnlib.model.winograd import WinogradConv2d

from bench_inference import load_clip  # noqa: E402  (benchmarks/ on sys.path)
from bench_memory_read import _interleaved_ms  # noqa: E402

OFFICIAL_URL = "https://github.com/seoungwugoh/STM"
OFFICIAL_K = 11          # object slots of the official DAVIS test loader (its dataset.py)
UNUSED_IMPORTS = ("cv2", "matplotlib", "matplotlib.pyplot", "tqdm")


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (as argparse's usage errors)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --- the official side -------------------------------------------------------------------------

@contextlib.contextmanager
def resnet50_without_download() -> Iterator[None]:
    """Inside: ``torchvision.models.resnet50(...)`` builds the network without ImageNet weights,
    whatever it is asked (the official encoders ask for them; the checkpoint replaces them all)."""
    original = torchvision.models.resnet50

    def resnet50(*_args: Any, **_kwargs: Any) -> nn.Module:
        return original(weights=None)

    torchvision.models.resnet50 = resnet50
    try:
        yield
    finally:
        torchvision.models.resnet50 = original


def _stub_missing(names: tuple[str, ...]) -> list[str]:
    """Empty modules for those of ``names`` that cannot be imported; returns the stubbed names."""
    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
    return stubbed


def import_official(repo: Path) -> types.ModuleType:
    """The official ``model.py`` of the clone ``repo`` as a module, its ``ToCuda`` the identity."""
    _stub_missing(UNUSED_IMPORTS)
    sys.path.insert(0, str(repo))            # its `from helpers import *`
    try:
        spec = importlib.util.spec_from_file_location("stm_official_model", repo / "model.py")
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(io.StringIO()):   # it prints a greeting on import
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(repo))
    if not hasattr(module, "STM"):
        fail(f"--official-repo {repo}: model.py defines no class STM; pass a clone of {OFFICIAL_URL}")

    def on_cpu(xs: Any) -> Any:
        return list(xs) if isinstance(xs, (list, tuple)) else xs

    for mod in (module, sys.modules.get("helpers")):
        if mod is not None and hasattr(mod, "ToCuda"):
            mod.ToCuda = on_cpu
    return module


def build_official(module: types.ModuleType, state: dict[str, torch.Tensor]) -> nn.Module:
    """``module.STM()`` on the CPU in eval mode carrying ``state`` (official layout)."""
    with resnet50_without_download():
        net = module.STM()
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return net.eval()


def run_official(stm: Any, frames: torch.Tensor, first: torch.Tensor, n_objects: int,
                 mem_every: int) -> torch.Tensor:
    """The official evaluation loop's steps: ``frames`` (1,3,T,H,W), ``first`` (1,K,H,W) one-hot
    mask of frame 0 → probabilities (1,K,T,H,W). At step t the memory holds the kept frames
    (0, mem_every, 2·mem_every, … before t-1) and frame t-1, encoded with its own prediction."""
    num_frames = frames.shape[2]
    kept = set(range(0, num_frames, mem_every))
    count = torch.tensor([n_objects])
    probs = torch.zeros(1, first.shape[1], num_frames, *frames.shape[-2:])
    probs[:, :, 0] = first
    mem_k = mem_v = None
    with torch.no_grad():
        for t in range(1, num_frames):
            key, value = stm.memorize(frames[:, :, t - 1], probs[:, :, t - 1], count)
            if mem_k is not None:
                key, value = torch.cat([mem_k, key], dim=3), torch.cat([mem_v, value], dim=3)
            probs[:, :, t] = F.softmax(stm.segment(frames[:, :, t], key, value, count), dim=1)
            if t - 1 in kept:
                mem_k, mem_v = key, value
    return probs


# --- our side ----------------------------------------------------------------------------------

def is_prepared(model: nn.Module) -> bool:
    """Whether ``model`` already is what ``prepare_for_inference`` makes of a CPU float32 network:
    no BatchNorm left (folded into the convolutions) and Winograd convolutions in place."""
    modules = list(model.modules())
    return (not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
            and any(isinstance(m, WinogradConv2d) for m in modules))


def ensure_prepared(model: nn.Module) -> tuple[nn.Module, str]:
    """``model`` as ``load_stm_checkpoint`` returned it if already prepared for inference (the
    loader is to do so by default), else prepared here; and which of the two happened."""
    if is_prepared(model):
        return model, "prepared by the loader"
    return prepare_for_inference(model, PAPER.inference, in_place=True), "prepare_for_inference"


def random_stm_weights(path: Path, seed: int = 0) -> None:
    """Random weights of our ResNet-50 network in the official layout (``module.`` keys), BatchNorm
    running statistics drawn away from 0/1 as trained ones are, saved to ``path``."""
    torch.manual_seed(seed)
    state = to_stm_state_dict(build_model(stm_model_config()), data_parallel=True)
    gen = torch.Generator().manual_seed(seed + 1)
    for key, tensor in state.items():
        if key.endswith(".running_mean"):
            tensor.normal_(0.0, 0.1, generator=gen)
        elif key.endswith(".running_var"):
            tensor.uniform_(0.5, 2.0, generator=gen)
    torch.save(state, path)


# --- the comparison ----------------------------------------------------------------------------

def check_args(args: argparse.Namespace) -> Path:
    if args.official_repo is None:
        fail(f"--official-repo PATH is required: a clone of the official STM code "
             f"(git clone {OFFICIAL_URL}), whose model.py this benchmark imports")
    repo = Path(args.official_repo).expanduser()
    if not (repo / "model.py").is_file():
        fail(f"--official-repo {repo}: no model.py there; pass a clone of the official STM code "
             f"(git clone {OFFICIAL_URL})")
    if args.weights is not None and not Path(args.weights).expanduser().is_file():
        fail(f"--weights {args.weights}: no such file (the official STM_weights.pth; omit "
             f"--weights for random weights)")
    for flag, value, least in (("--frames", args.frames, 2), ("--reps", args.reps, 1),
                               ("--threads", args.threads, 1), ("--mem-every", args.mem_every, 1),
                               ("--height", 16 if args.height is None else args.height, 16)):
        if value < least:
            fail(f"{flag} {value}: must be at least {least}")
    return repo.resolve()


def compare(args: argparse.Namespace, repo: Path, weights: Path) -> None:
    frames, mask = load_clip(args.sequence, args.frames, args.height)
    n_obj = int(mask.max())
    official_frames = frames.permute(1, 0, 2, 3)[None].contiguous()                 # (1,3,T,H,W)
    first = F.one_hot(mask.long(), OFFICIAL_K).permute(2, 0, 1)[None].float()      # (1,K,H,W)

    ours, how = ensure_prepared(load_stm_checkpoint(weights))
    official = build_official(import_official(repo),
                              torch.load(weights, map_location="cpu", weights_only=True))

    results: dict[str, torch.Tensor] = {}

    def run_ours(n: int | None = None) -> None:
        probs, _ = segment_video(ours, frames[:n], mask, sigma=None, mem_every=args.mem_every)
        results["ours"] = probs

    def run_theirs(n: int | None = None) -> None:
        results["official"] = run_official(official, official_frames[:, :, :n], first, n_obj,
                                           args.mem_every)

    run_ours(3), run_theirs(3)                                   # warm-up, untimed
    ms = _interleaved_ms({"ours": run_ours, "official": run_theirs}, args.reps)
    per_frame = {k: v / 1e3 / (len(frames) - 1) for k, v in ms.items()}

    theirs = results["official"][0, :n_obj + 1].transpose(0, 1)                    # (T,N+1,H,W)
    diff = float((results["ours"] - theirs).abs().max())
    labels_differ = float((results["ours"].argmax(1) != theirs.argmax(1)).float().mean())
    h, w = frames.shape[-2:]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sequence {args.sequence}, "
          f"{len(frames)} frames at {h}x{w} (padded {-(-h // 16) * 16}x{-(-w // 16) * 16}), "
          f"STM read, mem_every {args.mem_every}, subnormals "
          f"{'as IEEE' if args.no_flush else 'flushed'}, median of {args.reps} interleaved pair(s)")
    print(f"weights   {args.weights or 'random, official layout'}")
    print(f"ours      {per_frame['ours']:.4f} s/frame   load_stm_checkpoint ({how}) + segment_video")
    print(f"official  {per_frame['official']:.4f} s/frame   {repo / 'model.py'} STM, its eval loop")
    print(f"ratio ours/official {per_frame['ours'] / per_frame['official']:.3f}")
    print(f"outputs   max|Δp| {diff:.1e}, labels differing {100 * labels_differ:.3f} %", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", default=None, metavar="PATH",
                    help=f"a clone of {OFFICIAL_URL} (its model.py is imported)")
    ap.add_argument("--weights", default=None, metavar="PATH",
                    help="an official STM checkpoint (STM_weights.pth); default: random weights")
    ap.add_argument("--sequence", default="blackswan", help="a DAVIS-2016 val sequence")
    ap.add_argument("--frames", type=int, default=15, help="its first N frames (default 15)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved pairs of runs (default 3)")
    ap.add_argument("--height", type=int, default=None,
                    help="frame height (aspect kept); default: the stored 480p")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--mem-every", type=int, default=5)
    ap.add_argument("--no-flush", action="store_true",
                    help="compute subnormal floats as such (default: flushed, both sides)")
    args = ap.parse_args(argv)
    repo = check_args(args)
    torch.set_num_threads(args.threads)
    flush_denormals(not args.no_flush)
    if args.weights is not None:
        compare(args, repo, Path(args.weights).expanduser())
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "STM_weights.pth"
        random_stm_weights(weights)
        compare(args, repo, weights)


if __name__ == "__main__":
    main()
