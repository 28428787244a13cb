"""Tables as a reader sees them in a notebook report: rounded by what each column measures, "—"
where there is no number, every cell in full, and under each table the command and CSV that
reproduce it.

Rounding is a display concern only: the CSVs keep every digit.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kmnlib.config import get_profile, results_root

DASH = "—"

#: Columns rounded to a fixed number of decimals, by exact name.
DECIMALS: dict[str, int] = {
    "J&F": 1, "J": 1, "F": 1, "overall": 1, "J_seen": 1, "J_unseen": 1, "F_seen": 1,
    "F_unseen": 1, "DAVIS16 J&F": 1, "DAVIS17 J&F": 1, "YouTube-VOS overall": 1,
    "J&F with twin": 1, "leakage": 1, "mirrored_fp": 1, "leak": 1,
    "mean_diff": 2, "ci_low": 2, "ci_high": 2, "se": 2, "mde80": 2, "seed_ci_low": 2,
    "seed_ci_high": 2, "seed_mde80": 2, "DAVIS16 J&F difference": 2,
    "weight_on_object": 3, "qhat_on_object": 3, "qhat_on_twin": 3, "qhat_elsewhere": 3,
    "first_loss": 3, "final_loss": 3, "clips_per_s": 2, "wall_s": 0,
}
#: Columns shown to a number of significant digits (timings vary over orders of magnitude).
SIGNIFICANT: dict[str, int] = {"s/frame": 3, "s_per_frame": 3}


def significant(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits in fixed notation (never ``1.74e+03``)."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _fixed(decimals: int) -> Callable[[Any], str]:
    return lambda v: f"{float(v):.{decimals}f}"


def column_formatter(name: str, values: pd.Series, digits: Mapping[str, int] | None = None
                     ) -> Callable[[Any], str]:
    """How one column's non-missing values are written, chosen by its name and values.

    ``digits`` (column → decimals) overrides the defaults; otherwise: :data:`DECIMALS`, then
    :data:`SIGNIFICANT`, then names ending ``_loss`` / ``_difference`` / starting ``Δ`` (3 / 2
    decimals), ``sigma`` as written (3.5, 7), integral numbers as integers, others to 3
    significant digits."""
    if any(isinstance(v, (bool, np.bool_, str)) for v in values):
        return str  # text, booleans, mixed columns: as they are, whatever the column's name
    if digits and name in digits:
        return _fixed(digits[name])
    if name in DECIMALS:
        return _fixed(DECIMALS[name])
    if name in SIGNIFICANT:
        return lambda v: significant(float(v), SIGNIFICANT[name])
    if name.endswith("_loss") or name == "loss":
        return _fixed(3)
    if "Δ" in name or name.endswith("difference"):
        return _fixed(2)
    numbers = pd.to_numeric(values, errors="coerce")
    if name == "sigma":
        return lambda v: f"{float(v):g}"
    finite = numbers.dropna()
    if (finite == finite.round()).all():
        return lambda v: str(int(round(float(v))))
    return lambda v: significant(float(v), 3)


def formatted(df: pd.DataFrame, digits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """``df`` with every cell a display string (missing → "—")."""
    out = {}
    for col in df.columns:
        fmt = column_formatter(str(col), df[col], digits)
        out[col] = [DASH if _is_missing(v) else fmt(v) for v in df[col]]
    return pd.DataFrame(out, columns=df.columns, index=df.index)


def table_html(df: pd.DataFrame, digits: Mapping[str, int] | None = None) -> str:
    """An HTML table of ``df`` (:func:`formatted`), written cell by cell so nothing is truncated
    (pandas' HTML shortens long cells and long tables by its display options)."""
    cells = formatted(df, digits)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cells.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in cells.itertuples(index=False, name=None))
    return (f'<table class="kmn-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def csv_label(csv: str | Path) -> str:
    """The CSV's path relative to the results folder (``<study>/tables/<name>.csv``)."""
    path = Path(csv)
    return path.relative_to(path.parents[2]).as_posix() if len(path.parents) > 2 else path.name


def report_html(df: pd.DataFrame, *, csv: str | Path, command: str,
                digits: Mapping[str, int] | None = None) -> str:
    """:func:`table_html` with the line that reproduces it underneath."""
    return (table_html(df, digits) + '<p class="kmn-reproduce">reproduce: '
            f"<code>{html.escape(command)}</code> → <code>{html.escape(csv_label(csv))}</code></p>")


def show(df: pd.DataFrame, *, csv: str | Path, command: str,
         digits: Mapping[str, int] | None = None) -> None:
    """Display ``df`` in the notebook (:func:`report_html`)."""
    from IPython.display import HTML, display

    display(HTML(report_html(df, csv=csv, command=command, digits=digits)))


def reproduce_command(study: Any, notebook: str) -> str:
    """The command that re-makes this notebook's tables for ``study`` (a :class:`Study`): its
    profile, seed, output folder and sequence subset where they differ from the defaults."""
    name = study.profile.name
    parts = ["python -m kmnlib.study", f"--profile {name}", f"--only {notebook}"]
    if study.profile.seed != get_profile(name).seed:
        parts.append(f"--seed {study.profile.seed}")
    out = Path(study.out_dir)
    if out != results_root() / name:
        try:
            shown = out.relative_to(results_root().parent).as_posix()
        except ValueError:
            shown = str(out)
        parts.append(f"--out-dir {shown}")
    if study.sequences:
        parts.append(f"--params-json '{json.dumps({'sequences': list(study.sequences)})}'")
    return " ".join(parts)
