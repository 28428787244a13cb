"""Training loop on real data (shared static images, DAVIS-2016 train) with the tiny `test` profile."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kmnlib.checkpoints import load_checkpoint, load_model, save_checkpoint
from kmnlib.config import REPO_ROOT, get_profile
from kmnlib.model import build_model
from kmnlib.synthesis import collate_clips, max_gap
from kmnlib.training import step as steps
from kmnlib.training import train_stage
from kmnlib.training.batches import build_clip_dataset

PROFILE = get_profile("test")


def _iters(n: int, stage: str = "pretrain"):
    """The test profile with ``n`` iterations of ``stage`` (and its snapshots that still fit)."""
    keep = [k for k in getattr(PROFILE, stage).snapshots if k < n]
    return PROFILE.with_overrides({f"{stage}.iterations": n, f"{stage}.snapshots": keep})


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _losses(csv_path: Path) -> list[tuple[str, str, str, str]]:
    with open(csv_path, newline="") as fh:
        return [(r["step"], r["loss"], r["loss_f1"], r["loss_f2"]) for r in csv.DictReader(fh)]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


class _Kill(KeyboardInterrupt):
    pass


def _kill_at(step: int):
    def cb(done: int, model, losses) -> None:
        if done == step:
            raise _Kill(f"killed after step {done}")
    return cb


def test_overfitting_one_real_clip_lowers_the_loss(data_root: Path) -> None:
    clips = build_clip_dataset(_iters(1).with_overrides({"seed": 3}), "pretrain", data_root,
                               hide=False)
    batch = collate_clips([clips[0], clips[1]])
    torch.manual_seed(0)
    model = build_model(PROFILE.model)
    model.train()
    model.freeze_bn()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    step_module = steps.StepModule(model)
    losses = [steps.train_step(step_module, opt, scaler, batch, step=i, device=torch.device("cpu"))["loss"]
              for i in range(15)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path: Path, data_root: Path) -> None:
    n = 4  # test profile: checkpoint every 2 iterations
    prof = _iters(n)
    straight = train_stage(prof, "pretrain", tmp_path / "a", data_root=data_root, progress=False)

    out = tmp_path / "b"
    with pytest.raises(_Kill):
        train_stage(prof, "pretrain", out, data_root=data_root, progress=False,
                    callback=_kill_at(3))
    assert not (out / "pretrain.pt").exists()
    assert load_checkpoint(out / "pretrain.last.pt")["step"] == 2
    assert [r[0] for r in _losses(out / "pretrain.csv")] == ["1", "2", "3"]  # rows survive the kill

    seen: list[int] = []
    resumed = train_stage(prof, "pretrain", out, data_root=data_root, progress=False,
                          callback=lambda d, m, l: seen.append(d))
    assert seen == [3, 4]  # continued after the checkpoint, did not restart
    assert _losses(out / "pretrain.csv") == _losses(tmp_path / "a" / "pretrain.csv")
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "pretrain.last.pt").exists()

    # A finished run is reused, not retrained; different settings are refused with the file named.
    assert train_stage(prof, "pretrain", out, data_root=data_root, progress=False,
                       callback=_kill_at(1)) == resumed
    with pytest.raises(ValueError, match="pretrain.pt.*iterations"):
        train_stage(_iters(n + 1), "pretrain", out, data_root=data_root, progress=False)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = steps.clip_losses
    calls = {"n": 0}

    def poisoned(model, batch, **kw):
        calls["n"] += 1
        out = real(model, batch, **kw)
        if calls["n"] == 3:
            out["loss_f2"] = out["loss_f2"] * float("nan")
        return out

    monkeypatch.setattr(steps, "clip_losses", poisoned)
    with pytest.raises(steps.TrainingDiverged, match=r"step 3: non-finite loss \(loss_f2=nan\).*pretrain.last.pt"):
        train_stage(_iters(4), "pretrain", tmp_path, data_root=data_root, progress=False)
    state = load_checkpoint(tmp_path / "pretrain.last.pt")
    assert state["step"] == 2 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "pretrain.pt").exists()
    assert [r[0] for r in _losses(tmp_path / "pretrain.csv")] == ["1", "2"]
    model = load_model(tmp_path / "pretrain.last.pt")  # the kept checkpoint is usable
    assert sum(p.numel() for p in model.parameters()) > 0


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while writing")


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "step": 1})
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "step": 2, "bad": _Unpicklable()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no partial temp file left
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.arange(3.0))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_main_stage_on_davis_train_starts_from_init(tmp_path: Path, data_root: Path) -> None:
    torch.manual_seed(5)
    init = save_checkpoint(tmp_path / "init.pt", {"model": build_model(PROFILE.model).state_dict(),
                                                        "profile": PROFILE.to_dict()})
    first: dict[str, torch.Tensor] = {}

    def grab(done, model, losses):
        if done == 1:
            first.update({k: v.clone() for k, v in model.state_dict().items()})

    out = train_stage(_iters(2, "main"), "main", tmp_path, data_root=data_root, init=init,
                      progress=False, callback=grab)
    assert out.name == "main_from_init.pt"
    rows = list(csv.DictReader(open(tmp_path / "main_from_init.csv")))
    cfg = PROFILE.main
    assert [int(r["max_gap"]) for r in rows] == [max_gap(s, 2, cfg.gap_start, cfg.gap_end,
                                                         cfg.ramp_fraction) for s in range(2)]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # Trained from the init weights: after one Adam step (lr 1e-4) they are still close to init.
    src = load_checkpoint(init)["model"]
    k = next(k for k, v in src.items() if v.is_floating_point() and v.numel() > 100)
    assert not torch.equal(first[k], src[k])
    assert (first[k] - src[k]).abs().max() <= 1.5e-4


def test_loss_map_pair_shares_geometry_and_reports_hidden_cells(static_root: Path) -> None:
    from kmnlib.analysis.loss_maps import loss_map_pair
    from kmnlib.data import StaticImageFolder

    image, labels, _ = StaticImageFolder(static_root / "weizmann-horse")[0]
    torch.manual_seed(0)
    model = build_model(PROFILE.model)
    cfg = PROFILE.pretrain
    maps = loss_map_pair(model, image, labels, cfg, hide_p=0.5, seed=7, fill=(0.5, 0.5, 0.5))
    plain, hidden = maps["plain"], maps["hidden"]
    s = cfg.crop_size
    assert plain["loss"].shape == (2, s, s) and plain["hidden"].shape == (3, cfg.hide_grid, cfg.hide_grid)
    assert not plain["hidden"].any() and hidden["hidden"].any()
    assert (plain["loss"] >= 0).all() and torch.isfinite(hidden["loss"]).all()
    # Same rng seed → same frames wherever nothing was hidden.
    keep = ~hidden["hidden_pixels"]
    assert torch.equal(plain["frames"].permute(1, 0, 2, 3)[:, keep], hidden["frames"].permute(1, 0, 2, 3)[:, keep])
    assert torch.allclose(hidden["mean_loss"], hidden["loss"].flatten(1).mean(1))
    assert torch.equal(hidden["pred"], hidden["probs"].argmax(1))


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from kmnlib.config import get_profile
    from kmnlib.denormals import flush_denormals
    from kmnlib.training import train_stage
    flush_denormals()   # as python -m kmnlib.train does in every rank
    rank = int(os.environ["RANK"])
    out, dump, data_root = sys.argv[1], sys.argv[2], sys.argv[3]
    losses = []
    def cb(done, model, l):
        losses.append(l["loss"])
        if done == 3:
            torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                        "losses": losses}, f"{dump}/rank{rank}.pt")
    profile = get_profile("test").with_overrides({"pretrain.iterations": 3})
    train_stage(profile, "pretrain", out, data_root=data_root, progress=False, callback=cb)
""")


def test_ddp_two_gloo_processes_keep_identical_replicas(tmp_path: Path, data_root: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path / "ck"), str(tmp_path), str(data_root)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["params"].keys() == r1["params"].keys()
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    assert r0["losses"] != r1["losses"]  # each rank trained on its own clips
    final = load_checkpoint(tmp_path / "ck" / "pretrain.pt")
    assert final["world_size"] == 2
    assert all(torch.equal(final["model"][k], r0["params"][k]) for k in final["model"])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["pretrain.csv", "pretrain.pt"]
    assert len(_losses(tmp_path / "ck" / "pretrain.csv")) == 3  # rank 0 alone writes the log


def test_snapshots_along_training_survive_a_kill_and_a_schedule_is_followed(
        tmp_path: Path, data_root: Path) -> None:
    """Weights kept after iterations 1 and 3 of 5 (warm-up 2, cosine decay): a run killed after
    step 3 and resumed leaves the same snapshots, log (learning rates included) and final weights
    as an uninterrupted one; each snapshot loads as a model and differs from the next."""
    from kmnlib.checkpoints import load_model
    from kmnlib.training.schedule import learning_rate

    prof = _iters(5).with_overrides({"pretrain.snapshots": [1, 3], "pretrain.warmup_iterations": 2,
                                     "pretrain.lr_decay": "cosine",
                                     "pretrain.checkpoint_every": 100})
    straight = train_stage(prof, "pretrain", tmp_path / "a", data_root=data_root, progress=False)
    out = tmp_path / "b"
    with pytest.raises(_Kill):
        train_stage(prof, "pretrain", out, data_root=data_root, progress=False,
                    callback=_kill_at(4))
    assert load_checkpoint(out / "pretrain.last.pt")["step"] == 3   # saved at the snapshot
    resumed = train_stage(prof, "pretrain", out, data_root=data_root, progress=False)
    for name in ("pretrain.it1.pt", "pretrain.it3.pt", resumed.name):
        a, b = _state(tmp_path / "a" / name), _state(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _state(out / "pretrain.it1.pt").keys() == _state(straight).keys()
    assert not all(torch.equal(_state(out / "pretrain.it1.pt")[k], _state(out / "pretrain.it3.pt")[k])
                   for k in _state(straight))
    snap = load_checkpoint(out / "pretrain.it3.pt")
    assert snap["step"] == 3 and snap["snapshot"] and "optimizer" not in snap
    load_model(out / "pretrain.it3.pt", inference=None)
    with open(out / "pretrain.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    want = [learning_rate(prof.pretrain, s) for s in range(5)]
    assert lrs == pytest.approx(want, rel=1e-5) and lrs[0] < lrs[1] > lrs[-1]


def test_a_constant_schedule_is_the_configured_rate() -> None:
    from kmnlib.training.schedule import learning_rate

    cfg = PROFILE.pretrain
    assert all(learning_rate(cfg, s) == cfg.lr for s in range(cfg.iterations))
    with pytest.raises(ValueError, match="outside"):
        learning_rate(cfg, cfg.iterations)
