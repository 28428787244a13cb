"""tools/mechanism_tables.py: means over a study folder and its ``-seed<N>`` replicates, on
constructed tables whose means are known."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mechanism_tables.py"
spec = importlib.util.spec_from_file_location("mechanism_tables", TOOL)
mechanism_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mechanism_tables)

MODEL, STM, KM = "static + video, HaS", "STM read (σ=∞)", "σ=3.5"
SWAP_BASE = {("twin", "twin"): 60.0, ("twin", "clean"): 10.0, ("clean", "twin"): 55.0,
             ("clean", "clean"): 8.0}


def _write(folder: Path, name: str, rows: list[dict]) -> None:
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "tables" / name, index=False)


def _study(root: Path) -> Path:
    """Seeds 0 and 1 (``mini``, ``mini-seed1``); seed s adds 2·s to every leakage, the kernel
    adds 0.5 and swapping the whole frame 0.01, so every mean below is known."""
    out = root / "mini"
    for seed, folder in ((0, out), (1, root / "mini-seed1")):
        _write(folder, "03_davis16_val.csv", [
            {"stage": "static + video", "pretraining": "HaS", "sigma": sigma, "seed": seed,
             "J&F": 50.0 + 4 * seed + (0.0 if np.isnan(sigma) else 0.2)} for sigma in (np.nan, 3.5)])
        swap = []
        for read, extra in ((STM, 0.0), (KM, 0.5)):
            for (readout, query), base in SWAP_BASE.items():
                for over, shift in (("twin region", 0.0), ("whole frame", 0.01)):
                    for scope, frame_shift in (("first_frame", -3.0), ("video", 0.0)):
                        swap.append({"swap_over": over, "readout_from": readout, "query_from": query,
                                     "scope": scope, "model": MODEL, "seed": seed, "read": read,
                                     "leakage": base + frame_shift + extra + shift + 2 * seed})
        _write(folder, "07_decoder_swap.csv", swap)
        _write(folder, "07_leak_onset.csv", [
            {"model": MODEL, "read": STM, "seed": seed, "frame": f, "leakage": 40.0 + 10 * f + 2 * seed}
            for f in (1, 2, 3)])
        _write(folder, "07_read_in_use.csv", [
            {"model": MODEL, "read": STM, "seed": seed, "frame": f, "weight_on_object": 0.2 + 0.1 * seed,
             "qhat_on_object": 0.3, "qhat_on_twin": 0.1, "qhat_elsewhere": 0.6, "logit_std": 30.0,
             "top_gap": 3.0, "margin_over_penalty": np.nan} for f in (1, 2)])
        _write(folder, "07_clean_control.csv", [
            {"model": MODEL, "read": STM, "seed": seed, "J&F": 56.0 + seed, "J&F with twin": 42.0,
             "mirrored_fp": 9.0, "leakage": 68.0 + 2 * seed}])
        _write(folder, "07_oracle_strength.csv", [
            {"model": MODEL, "read": STM, "seed": seed, "oracle": oracle, "leakage": leak + 2 * seed,
             "J&F": 42.0} for oracle, leak in (("none", 68.0), ("any", 61.0))])
    return out


def test_arms_mean_and_sd_over_seeds(tmp_path: Path) -> None:
    arms = mechanism_tables.arms(_study(tmp_path))
    stm = arms[arms["read"] == "STM read"].iloc[0]
    assert (stm["seed 0"], stm["seed 1"]) == (50.0, 54.0)
    assert stm["mean"] == pytest.approx(52.0) and stm["sd"] == pytest.approx(np.sqrt(8.0))


def test_decoder_swap_means_per_seed_and_gaps(tmp_path: Path) -> None:
    table, mean_gap, seed_gap, scope_gap = mechanism_tables.decoder_swap(_study(tmp_path))
    assert set(table["seeds"]) == {2}
    row = table[(table["read"] == STM) & (table["scope"] == "video")
                & (table["readout_from"] == "clean") & (table["query_from"] == "twin")].iloc[0]
    assert row["mean"] == pytest.approx(56.0) and row["per_seed"] == "55.0 / 57.0"
    assert mean_gap == pytest.approx(0.5) and seed_gap == pytest.approx(0.5)
    assert scope_gap == pytest.approx(0.01)


def test_leak_onset_first_all_last_frame(tmp_path: Path) -> None:
    row = mechanism_tables.leak_onset(_study(tmp_path)).iloc[0]
    assert (row["frame_1"], row["all_frames"], row["last_frame"]) == pytest.approx((51.0, 61.0, 71.0))
    assert row["frame_1_share"] == pytest.approx(100 * np.mean([50 / 60, 52 / 62]))
    assert row["frame_1_per_seed"] == "50.0 / 52.0"


def test_read_in_use_spread_over_seeds(tmp_path: Path) -> None:
    use = mechanism_tables.read_in_use(_study(tmp_path)).set_index("quantity")
    assert use.loc["weight_on_object", ["mean", "min over seeds", "max over seeds"]].tolist() == \
        pytest.approx([0.25, 0.2, 0.3])
    assert use.loc["margin_over_penalty"].isna()["mean"]


def test_command_prints_every_section_and_refuses_a_missing_folder(tmp_path: Path) -> None:
    out = _study(tmp_path)
    printed = subprocess.run([sys.executable, str(TOOL), str(out)], capture_output=True, text=True,
                             check=True).stdout
    for title in ("Every arm", "Decoder-input swap", "Leak onset", "read in use", "Clean control",
                  "Oracle strength"):
        assert title in printed
    assert "| static + video, HaS | STM read (σ=∞) | any | 62.0 | 42.0 | 2 |" in printed
    proc = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "nowhere")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "nowhere" in proc.stderr
