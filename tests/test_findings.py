"""The findings sentences: generated from effects tables built here, with the right interval, the
right verdict, the smallest detectable effect, the paper's number and their source."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from kmnlib.study import findings, paper
from kmnlib.study.training import STAGE_LABELS


def effect(comparison: str, stage: str, read: str, mean: float, low: float, high: float, *,
           seeds: str = "0 1 2", seed_low: float = math.nan, seed_high: float = math.nan,
           metric: str = "J&F") -> dict:
    return {"comparison": comparison, "stage": stage, "read": read, "metric": metric,
            "seeds": seeds, "n_sequences": 20, "mean_diff": mean, "ci_low": low, "ci_high": high,
            "mde80": 0.3, "seed_ci_low": seed_low, "seed_ci_high": seed_high, "seed_mde80": 0.9}


def effects_table() -> pd.DataFrame:
    video = findings.PAPER_STAGE
    return pd.DataFrame([
        effect("KM − STM read, HaS model", "static only", "KM σ=3.5 vs STM", 0.2, -0.1, 0.4),
        effect("KM − STM read, HaS model", video, "KM σ=3.5 vs STM", -0.05, -0.27, 0.18,
               seed_low=-0.45, seed_high=0.36),
        effect("KM − STM read, HaS model", video, "KM σ=7 vs STM", -0.02, -0.08, 0.05,
               seed_low=-0.1, seed_high=0.07),
        effect("HaS − no HaS", video, "STM read", 1.5, 0.4, 2.5, seeds="0", seed_low=math.nan),
        effect("KM − STM read, no HaS model", video, "KM σ=3.5 vs STM", -0.3, -0.5, -0.1,
               metric="leakage"),
    ])


def test_the_paper_stage_is_the_video_trained_stage() -> None:
    assert findings.PAPER_STAGE == STAGE_LABELS["main"]


def test_interval_is_seed_level_with_seeds_else_bootstrap_and_says_which() -> None:
    df = effects_table()
    seeded = findings.interval(df.iloc[1])
    assert (seeded.low, seeded.high, seeded.mde) == (-0.45, 0.36, 0.9)
    assert "seed-level" in seeded.kind and "3 seeds" in seeded.kind
    one = findings.interval(df.iloc[3])          # one seed: no seed-level interval exists
    assert (one.low, one.high, one.mde) == (0.4, 2.5, 0.3) and "1 seed" in one.kind
    old = findings.interval(df.iloc[0])          # three seeds, but the columns are empty
    assert (old.low, old.high) == (-0.1, 0.4) and "bootstrap" in old.kind


def test_sentence_carries_number_interval_verdict_and_the_papers_effect() -> None:
    df = effects_table()
    text = findings.effect_sentence(df.iloc[1])
    ref = paper.table3_effects().set_index("comparison").loc["KM − STM read, HaS model",
                                                             "DAVIS16 J&F difference"]
    assert "−0.05 J&F points" in text and "[−0.45, +0.36]" in text
    assert "undecided" in text and "0.90 points" in text and "seed-level" in text
    assert f"Table 3 reports {ref:+.1f}" in text
    decided = findings.effect_sentence(df.iloc[3])
    assert "positive (the interval excludes 0)" in decided and "[+0.40, +2.50]" in decided
    ref_has = paper.table3_effects().set_index("comparison").loc["HaS − no HaS, STM read",
                                                                 "DAVIS16 J&F difference"]
    assert f"{ref_has:+.1f}" in decided
    leak = findings.effect_sentence(df.iloc[4])
    assert "negative" in leak and "twin leakage" in leak and "Table 3" not in leak
    # A static-only row has no paper effect (Table 3 reports trained-on-video models).
    assert "Table 3" not in findings.effect_sentence(df.iloc[0])


def test_headlines_are_the_last_stages_first_row_per_comparison() -> None:
    df = effects_table()
    rows = findings.headline_rows(df)
    assert list(rows.index) == [1, 3]   # σ=7 repeats a comparison; leakage is not J&F
    tally = findings.tally_sentence(df, rows)
    assert tally.startswith("Of all 5 effects in the table, 2 have a 95 % interval that excludes 0"
                            " and 3 are undecided")
    assert "KM − STM read, no HaS model" in tally and "[−0.50, −0.10]" in tally  # not shown above


def test_findings_of_a_folder_name_their_csv(tmp_path: Path) -> None:
    assert findings.main_findings(tmp_path) == [] and findings.all_findings(tmp_path) == {}
    (tmp_path / "tables").mkdir()
    effects_table().to_csv(tmp_path / "tables" / "effects.csv", index=False)
    found = findings.main_findings(tmp_path)
    assert len(found) == 3 and {f.source for f in found} == {"tables/effects.csv"}
    text = findings.plain_text(tmp_path)
    assert text.count("[tables/effects.csv]") == 3 and "Distractor" not in text


def test_distractor_headline_skips_extensions_and_reads_the_decoder_swap(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    video = findings.PAPER_STAGE
    pd.DataFrame([
        effect("extension, KM − STM read, HaS model, twin", video, "KM σ=1 vs STM", -0.5, -1, 0.1),
        effect("KM − STM read, HaS model, twin", video, "KM σ=3.5 vs STM", -0.1, -0.3, 0.05),
        effect("KM − STM read, HaS model, twin", video, "KM σ=3.5 vs STM", 0.16, 0.03, 0.31,
               metric="leakage"),
    ]).to_csv(tmp_path / "tables" / "07_effects.csv", index=False)
    found = findings.distractor_findings(tmp_path)
    assert len(found) == 2 and "extension" not in found[0].text
    assert "−0.10 J&F points" in found[0].text and "+0.16 points of twin leakage" in found[1].text
    swap = pd.DataFrame([{"pretraining": "HaS", "read": "STM read", "swap_over": "twin region",
                          "readout_from": r, "query_from": "twin", "scope": s, "leakage": v}
                         for r, v in (("twin", 70.0), ("clean", 12.5))
                         for s in ("first_frame", "video")])
    swap.to_csv(tmp_path / "tables" / "07_decoder_swap.csv", index=False)
    text = findings.distractor_findings(tmp_path)[-1]
    assert text.source == "tables/07_decoder_swap.csv"
    assert "readout from the clean frame and query from the twin frame 12.5 %" in text.text
    assert "over the video" in text.text


def test_scale_headline_only_when_its_table_exists(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    assert findings.scale_findings(tmp_path) == []
    rows = [{"arm": "HaS", "seed": 0, "iterations": it, "J&F": jf, "km_minus_stm": d,
             "ci_low": d - 0.2, "ci_high": d + 0.2, "logit_std": 1.0 + it / 1000,
             "margin_over_penalty": 0.1, "leakage": 70 - it / 100}
            for it, jf, d in ((400, 40.0, 0.1), (3600, 61.5, 0.5))]
    rows = [dict(r, run="study") for r in rows] + [dict(rows[0], run="long run", iterations=4800)]
    pd.DataFrame(rows).to_csv(tmp_path / "tables" / "08_scale.csv", index=False)
    found, long = findings.scale_findings(tmp_path)
    assert found.text.startswith("Scale, HaS, study (seed 0)") and "HaS, long run" in long.text
    assert "J&F 40.0 at 400 iterations → 61.5 at 3600" in found.text
    assert "+0.50 J&F points" in found.text and "[+0.30, +0.70]" in found.text
    assert "positive" in found.text and found.source == "tables/08_scale.csv"
    assert set(findings.all_findings(tmp_path)) == {"scale"}


@pytest.mark.parametrize("x,text", [(0.174, "+0.17"), (-0.05, "−0.05"), (0.0, "+0.00")])
def test_signed_numbers_use_a_real_minus(x: float, text: str) -> None:
    assert findings.signed(x) == text
