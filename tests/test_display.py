"""kmnlib.study.display: how a table reads in a notebook report."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from kmnlib.config import get_profile, results_root
from kmnlib.study import display


def _cells(html: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", html)


def test_columns_round_by_what_they_measure() -> None:
    df = pd.DataFrame({"J&F": [54.04, 87.66], "mean_diff": [0.17416, -1.05667],
                       "s/frame": [0.114258, 1.5], "iterations": [1742.0, 500.0],
                       "sigma": [3.5, 7.0], "leakage": [12.345, 0.0],
                       "protocol difference": ["backbone x (paper y)", "4+4 iterations"]})
    cells = display.formatted(df)
    assert cells["J&F"].tolist() == ["54.0", "87.7"]
    assert cells["mean_diff"].tolist() == ["0.17", "-1.06"]
    assert cells["s/frame"].tolist() == ["0.114", "1.50"]
    assert cells["iterations"].tolist() == ["1742", "500"]   # integers, not 1742.0
    assert cells["sigma"].tolist() == ["3.5", "7"]
    assert cells["leakage"].tolist() == ["12.3", "0.0"]
    assert cells["protocol difference"].tolist() == ["backbone x (paper y)", "4+4 iterations"]
    assert display.formatted(df, {"J&F": 3})["J&F"].tolist() == ["54.040", "87.660"]
    assert display.significant(1234.6, 3) == "1235"  # fixed notation, never 1.23e+03


def test_missing_values_are_a_dash_never_nan() -> None:
    df = pd.DataFrame({"method": ["KMN", "STM"], "HaS": [True, None], "J&F": [77.2, np.nan],
                       "overall": [np.nan, 79.4], "note": ["x", None]})
    html = display.table_html(df)
    assert "nan" not in html.lower()
    assert _cells(html) == ["KMN", "True", "77.2", display.DASH, "x",
                            "STM", display.DASH, display.DASH, "79.4", display.DASH]


def test_long_cells_and_long_tables_are_shown_in_full() -> None:
    protocol = "ours (mini): efficientnet_lite0, 192² crops, 240p, " + "static → video, " * 10
    df = pd.DataFrame({"protocol": [protocol] * 80, "J&F": np.arange(80.0)})
    html = display.table_html(df)
    cells = _cells(html)
    assert len(cells) == 160 and cells[0] == protocol
    assert "..." not in html and "…" not in html


def test_caption_names_the_command_and_the_csv_under_the_results_folder(tmp_path: Path) -> None:
    csv = tmp_path / "mini" / "tables" / "effects.csv"
    html = display.report_html(pd.DataFrame({"a": [1]}), csv=csv,
                               command="python -m kmnlib.study --profile mini --only 04_ablation")
    assert html.index("</table>") < html.index("reproduce:")
    assert ("reproduce: <code>python -m kmnlib.study --profile mini --only 04_ablation</code> → "
            "<code>mini/tables/effects.csv</code>") in html


def test_reproduce_command_says_what_differs_from_the_defaults() -> None:
    mini = get_profile("mini")
    plain = SimpleNamespace(profile=mini, out_dir=results_root() / "mini", sequences=None)
    assert display.reproduce_command(plain, "03_evaluate") == \
        "python -m kmnlib.study --profile mini --only 03_evaluate"
    seeded = SimpleNamespace(profile=mini.with_overrides({"seed": 2}),
                             out_dir=results_root() / "mini-seed2", sequences=["blackswan"])
    assert display.reproduce_command(seeded, "04_ablation") == (
        "python -m kmnlib.study --profile mini --only 04_ablation --seed 2 "
        "--out-dir results/mini-seed2 --params-json '{\"sequences\": [\"blackswan\"]}'")
