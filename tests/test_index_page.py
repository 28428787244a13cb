"""The index page, built from a small results folder made here: findings first, the arms × seeds
table with the paper and the baseline, the forest plot, headlines only where their tables exist,
provenance warnings, and links that resolve."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from kmnlib.study import check_reports, index_page, paper
from kmnlib.study.findings import PAPER_STAGE

ARMS = [("static only", "HaS", "STM read", math.nan), ("static only", "HaS", "KM", 3.5),
        (PAPER_STAGE, "HaS", "STM read", math.nan), (PAPER_STAGE, "HaS", "KM", 3.5)]


def write_run(folder: Path, seed: int, offset: float) -> None:
    (folder / "tables").mkdir(parents=True)
    rows = [{"stage": s, "pretraining": p, "read": r, "sigma": sg, "seed": seed,
             "J&F": 50.0 + 3 * i + offset} for i, (s, p, r, sg) in enumerate(ARMS)]
    pd.DataFrame(rows).to_csv(folder / "tables" / "03_davis16_val.csv", index=False)


def effects_rows() -> pd.DataFrame:
    return pd.DataFrame([{"comparison": "KM − STM read, HaS model", "stage": PAPER_STAGE,
                          "read": "KM σ=3.5 vs STM", "metric": "J&F", "seeds": "0 1",
                          "n_sequences": 2, "mean_diff": 0.25, "ci_low": -0.1, "ci_high": 0.6,
                          "mde80": 0.4, "seed_ci_low": -1.25, "seed_ci_high": 1.75,
                          "seed_mde80": 2.5},
                         {"comparison": "HaS − no HaS", "stage": PAPER_STAGE, "read": "STM read",
                          "metric": "J&F", "seeds": "0 1", "n_sequences": 2, "mean_diff": 2.0,
                          "ci_low": 1.0, "ci_high": 3.0, "mde80": 1.0, "seed_ci_low": 0.5,
                          "seed_ci_high": 3.5, "seed_mde80": 1.5}])


def make_results(root: Path, *, baseline: bool = True, dirty: list[str] | None = None) -> Path:
    out = root / "study"
    write_run(out, 0, 0.0)
    write_run(root / "study-seed1", 1, 1.0)
    (root / "study-seed1" / "index.html").write_text("<html></html>")
    effects_rows().to_csv(out / "tables" / "effects.csv", index=False)
    (out / "profile.json").write_text(json.dumps({"name": "tiny"}))
    if dirty is not None:
        (out / "provenance.json").write_text(json.dumps({
            "commit": "abc123", "dirty": dirty, "command": ["python", "-m", "kmnlib.study"],
            "cpu": "Test CPU", "threads": 1, "platform": "Linux", "date_utc": "2026-01-01"}))
    nb = out / "notebooks"
    nb.mkdir()
    for suffix in (".html", ".ipynb", ".log"):
        (nb / f"03_evaluate{suffix}").write_text("x")
    if baseline:
        base = root / "baselines" / "first-frame-copy"
        base.mkdir(parents=True)
        (base / "global_results.csv").write_text("J&F-Mean,J-Mean,F-Mean\n0.255,0.266,0.243\n")
    (root / "study-long").mkdir()
    (root / "study-long" / "RUN.md").write_text("# long run")
    return out


def test_index_opens_with_findings_then_arms_then_every_effect(tmp_path: Path) -> None:
    out = make_results(tmp_path, dirty=[])
    page = index_page.write_index(out, "tiny", ["01_pretrain_static", "03_evaluate"]).read_text()
    order = [page.index(f'id="{s}"') for s in ("findings", "arms", "forest", "provenance",
                                               "reports")]
    assert order == sorted(order)
    findings = page[page.index('id="findings"'):page.index('id="arms"')]
    assert "+0.25 J&amp;F points" in findings and "[−1.25, +1.75]" in findings
    assert "undecided" in findings and "seed-level t interval over 2 seeds" in findings
    assert "positive (the interval excludes 0)" in findings        # HaS − no HaS, [0.5, 3.5]
    assert 'href="tables/effects.csv"' in findings
    # Arms × seeds: seed 0 from this folder, seed 1 from the replicate, their mean, the paper.
    arms = page[page.index('id="arms"'):page.index('id="forest"')]
    assert "<th>seed 0</th><th>seed 1</th>" in arms
    assert '<td class="n">59.0</td><td class="n">60.0</td><td class="n">59.5</td>' in arms
    t3 = paper.paper_table3().set_index(["method", "HaS", "KM"])["DAVIS16 J&F"]
    assert f'<td class="n">{t3[("KMN", True, True)]:.1f}</td><td>Table 3</td>' in arms
    assert '<td class="n">25.5</td>' in arms                      # 100 × the baseline's 0.255
    assert "study/tables/03_davis16_val.csv" in arms and "study-seed1/tables" in arms
    assert "NaN" not in page and "nan" not in arms.lower().replace("kernel", "")
    width, height = check_reports.png_size(out / "figures" / "index_forest.png")
    assert width <= 1800 and width / height <= 3.5
    assert 'src="figures/index_forest.png"' in page
    # No 07 / 08 tables: their headlines are left out without a word.
    assert 'id="distractors"' not in page and 'id="scale"' not in page
    assert "Warning" not in page and "<code>abc123</code>" in page and "Test CPU" in page


def test_links_resolve_and_name_logs_replicates_long_run_and_baselines(tmp_path: Path) -> None:
    out = make_results(tmp_path, dirty=[])
    page = index_page.write_index(out, "tiny", ["03_evaluate", "08_scale"]).read_text()
    for href in ("notebooks/03_evaluate.html", "notebooks/03_evaluate.ipynb",
                 "notebooks/03_evaluate.log", "../study-seed1/index.html", "../study-long/RUN.md",
                 "profile.json", "../baselines/first-frame-copy/global_results.csv",
                 "tables/effects.csv", "figures/index_forest.png"):
        assert f'href="{href}"' in page, href
    assert "08_scale</td><td>no report yet" in page     # any notebook list
    report = check_reports.Report()
    check_reports.check_index(out, report)
    assert report.problems == [] and report.links > 10


def test_missing_baseline_and_provenance_say_so(tmp_path: Path) -> None:
    out = make_results(tmp_path, baseline=False)
    page = index_page.write_index(out, "tiny", []).read_text()
    arms = page[page.index('id="arms"'):page.index('id="forest"')]
    assert "first-frame mask copied" in arms and "python -m kmnlib.baselines" in arms
    last_row = arms[arms.index("first-frame mask copied"):]
    assert '<td class="n">—</td>' in last_row and "25.5" not in last_row
    assert "Warning: no provenance.json" in page
    report = check_reports.Report()          # an absent baseline is named, not linked
    check_reports.check_index(out, report)
    assert report.problems == []


def test_dirty_code_is_a_warning_and_headlines_appear_with_their_tables(tmp_path: Path) -> None:
    out = make_results(tmp_path, dirty=["kmnlib/memory.py"])
    pd.DataFrame([{"arm": "HaS", "seed": 0, "iterations": 400, "J&F": 40.0, "km_minus_stm": 0.1,
                   "ci_low": -0.2, "ci_high": 0.4, "logit_std": 1.0, "margin_over_penalty": 0.1,
                   "leakage": 70.0}]).to_csv(out / "tables" / "08_scale.csv", index=False)
    page = index_page.write_index(out, "tiny", []).read_text()
    assert "Warning: the code differed from commit abc123" in page and "kmnlib/memory.py" in page
    scale = page[page.index('id="scale"'):page.index('id="provenance"')]
    assert "J&amp;F 40.0 at 400 iterations" in scale and 'href="tables/08_scale.csv"' in scale


def test_cell_renders_missing_values_as_a_dash() -> None:
    assert index_page.cell(math.nan, 1) == '<td class="n">—</td>'
    assert index_page.cell(None, 1) == '<td class="n">—</td>'
    assert index_page.cell(3.14159, 2) == '<td class="n">3.14</td>'
    assert index_page.cell("a<b", 1) == "<td>a&lt;b</td>"
