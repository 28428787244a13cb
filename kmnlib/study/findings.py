"""The study's conclusions as sentences, generated from the tables a study wrote (never typed in).

Every sentence carries its number, its 95 % interval (which kind, said), whether the interval
decides the sign, the smallest effect the data could detect, and the CSV it came from. Pure
functions of tables: :func:`effect_sentence` and :func:`headline_rows` take data frames; the
``*_findings`` functions read a results folder and return :class:`Finding` rows (text + source),
the same for the index page (:mod:`kmnlib.study.index_page`) and the terminal
(:func:`kmnlib.study.runner.main`).

The interval rule (:func:`interval`): the seed-level t interval (``seed_ci_low``/``seed_ci_high``,
``seed_mde80``) when the row pools two or more seeds and has it; else the crossed bootstrap
(``ci_low``/``ci_high``, ``mde80``) — seeds are the unit a reader generalises over
(:mod:`kmnlib.study.effects`), so the bootstrap is only the fallback.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kmnlib.study import paper

EFFECTS_CSV = "effects.csv"
DISTRACTOR_EFFECTS_CSV = "07_effects.csv"
DECODER_SWAP_CSV = "07_decoder_swap.csv"
SCALE_CSV = "08_scale.csv"
#: The stage whose models the paper's Table 3 reports (static + DAVIS training); the label of
#: :data:`kmnlib.study.training.STAGE_LABELS` ``["main"]`` (a test holds the two equal).
PAPER_STAGE = "static + video"
MAX_HEADLINES = 4   # effect sentences above the tally: the page opens with 3–5 sentences
UNITS = {"J&F": "J&F points", "leakage": "points of twin leakage"}


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    mde: float      # smallest effect detected with 80 % power
    kind: str       # how the interval was made, for the reader


@dataclass(frozen=True)
class Finding:
    text: str
    source: str     # the CSV (relative to the results folder) the numbers come from


def n_seeds(row: pd.Series) -> int:
    return len(str(row.get("seeds", "")).split())


def interval(row: pd.Series) -> Interval:
    """The row's 95 % interval: seed-level when it has ≥2 seeds and the columns, else bootstrap."""
    seeds = n_seeds(row)
    low, high = row.get("seed_ci_low", math.nan), row.get("seed_ci_high", math.nan)
    if seeds >= 2 and not (pd.isna(low) or pd.isna(high)):
        return Interval(float(low), float(high), float(row["seed_mde80"]),
                        f"seed-level t interval over {seeds} seeds")
    over = "sequences" if seeds < 2 else f"sequences × {seeds} seeds"
    why = "1 seed" if seeds < 2 else "the table has no seed-level interval"
    return Interval(float(row["ci_low"]), float(row["ci_high"]), float(row["mde80"]),
                    f"bootstrap interval over {over} ({why})")


def signed(x: float, digits: int = 2) -> str:
    """``+0.17`` / ``−0.05`` (a real minus sign, as the tables' labels use)."""
    return f"{x:+.{digits}f}".replace("-", "−")


def verdict(iv: Interval) -> str:
    if iv.low <= 0 <= iv.high:
        return "undecided (the interval contains 0)"
    return "positive (the interval excludes 0)" if iv.low > 0 else \
        "negative (the interval excludes 0)"


def paper_effect(row: pd.Series) -> float | None:
    """The paper's Table-3 difference for the same comparison and read, where it has one."""
    if row.get("stage") != PAPER_STAGE or row.get("metric", "J&F") != "J&F":
        return None
    comparison, read = str(row["comparison"]), str(row["read"])
    if comparison.startswith("KM − STM read") and read.startswith("KM"):
        key = comparison
    elif comparison == "HaS − no HaS":
        key = f"HaS − no HaS, {'STM read' if read == 'STM read' else 'KM read'}"
    else:
        return None
    table = paper.table3_effects().set_index("comparison")["DAVIS16 J&F difference"]
    return float(table[key]) if key in table.index else None


def effect_sentence(row: pd.Series) -> str:
    """One effects-table row as a sentence: number, interval (and its kind), verdict, smallest
    detectable effect, and the paper's difference where it has one."""
    iv = interval(row)
    unit = UNITS.get(str(row.get("metric", "J&F")), str(row.get("metric")))
    text = (f"{row['comparison']} ({row['stage']}, {row['read']}): "
            f"{signed(float(row['mean_diff']))} {unit}, 95 % {iv.kind} "
            f"[{signed(iv.low)}, {signed(iv.high)}] — {verdict(iv)}; the smallest effect these "
            f"data detect (80 % power) is {iv.mde:.2f} points.")
    ref = paper_effect(row)
    if ref is not None:
        text += f" The paper's Table 3 reports {signed(ref, 1)}."
    return text


def headline_rows(effects: pd.DataFrame) -> pd.DataFrame:
    """The rows the page opens with: the last stage's J&F effects, the first row of each
    comparison (the profile's σ comes first), at most :data:`MAX_HEADLINES`."""
    if effects.empty:
        return effects
    df = effects[effects.get("metric", pd.Series("J&F", index=effects.index)) == "J&F"]
    last = df[df["stage"] == df["stage"].iloc[-1]] if len(df) else df
    return last.drop_duplicates("comparison").head(MAX_HEADLINES)


def tally_sentence(effects: pd.DataFrame, shown: pd.DataFrame) -> str:
    """How many of all the rows decide their sign; the decided rows not among ``shown``, each
    with its number and interval."""
    ivs = [interval(r) for _, r in effects.iterrows()]
    decided = [i for i, iv in enumerate(ivs) if not iv.low <= 0 <= iv.high]
    text = (f"Of all {len(effects)} effects in the table, {len(decided)} have a 95 % interval "
            f"that excludes 0 and {len(effects) - len(decided)} are undecided")
    extra = [i for i in decided if effects.index[i] not in shown.index]
    if extra:
        text += ": " + "; ".join(
            f"{effects.iloc[i]['comparison']} ({effects.iloc[i]['stage']}, "
            f"{effects.iloc[i]['read']}) {signed(float(effects.iloc[i]['mean_diff']))} "
            f"[{signed(ivs[i].low)}, {signed(ivs[i].high)}]" for i in extra)
    return text + "."


def main_findings(out_dir: Path) -> list[Finding]:
    """The opening sentences, from ``tables/effects.csv`` (none when the table is missing)."""
    path = Path(out_dir) / "tables" / EFFECTS_CSV
    if not path.is_file():
        return []
    effects = pd.read_csv(path)
    if effects.empty:
        return []
    source = f"tables/{EFFECTS_CSV}"
    shown = headline_rows(effects)
    out = [Finding(effect_sentence(r), source) for _, r in shown.iterrows()]
    return out + [Finding(tally_sentence(effects, shown), source)]


def _read(out_dir: Path, name: str) -> pd.DataFrame | None:
    path = Path(out_dir) / "tables" / name
    return pd.read_csv(path) if path.is_file() else None


def _num(x: object, digits: int = 1, unit: str = "") -> str:
    return "—" if x is None or pd.isna(x) else f"{float(x):.{digits}f}{unit}"


def distractor_findings(out_dir: Path) -> list[Finding]:
    """The distractor headline: the kernel's effect on J&F and on twin leakage (the first such
    rows of ``07_effects.csv``, the paper's reads, no oracle or extension) and where the leak is
    made (``07_decoder_swap.csv``); each only when its table exists."""
    out = []
    effects = _read(out_dir, DISTRACTOR_EFFECTS_CSV)
    if effects is not None and len(effects):
        plain = effects[~effects["comparison"].str.contains("extension|oracle", regex=True)]
        for metric in ("J&F", "leakage"):
            rows = plain[plain.get("metric", "J&F") == metric]
            if len(rows):
                out.append(Finding(effect_sentence(rows.iloc[0]),
                                   f"tables/{DISTRACTOR_EFFECTS_CSV}"))
    swap = _read(out_dir, DECODER_SWAP_CSV)
    if swap is not None and len(swap):
        out.append(Finding(swap_sentence(swap), f"tables/{DECODER_SWAP_CSV}"))
    return out


def swap_sentence(swap: pd.DataFrame) -> str:
    """Leakage of the decoder-input combinations for the table's first model, read and swap
    scope, over the whole video where the table has that scope."""
    first = swap.iloc[0]
    rows = swap[(swap["pretraining"] == first["pretraining"]) & (swap["read"] == first["read"])
                & (swap["swap_over"] == first["swap_over"])]
    scopes = list(dict.fromkeys(rows["scope"]))
    scope = "video" if "video" in scopes else scopes[0]
    rows = rows[rows["scope"] == scope]
    parts = [f"readout from the {r['readout_from']} frame and query from the {r['query_from']} "
             f"frame {_num(r['leakage'], 1, ' %')}" for _, r in rows.iterrows()]
    return (f"Where the leak is made ({first['pretraining']} model, {first['read']}, decoder inputs "
            f"swapped over {first['swap_over']}, leakage over the {scope.replace('_', ' ')}): "
            + "; ".join(parts) + ".")


def scale_findings(out_dir: Path) -> list[Finding]:
    """The scale headline, one sentence per arm (and run: study or long run) of ``08_scale.csv``
    (when it exists), its seeds pooled per iteration count: J&F, twin
    leakage and the read's logit spread from the fewest to the most iterations, and the kernel's
    effect at the most (its interval only where one run holds that row)."""
    scale = _read(out_dir, SCALE_CSV)
    if scale is None or scale.empty:
        return []
    out = []
    keys = [k for k in ("arm", "run") if k in scale.columns]   # the long run is a line of its own
    for key, rows in scale.groupby(keys, sort=False):
        name = ", ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
        by_it = rows.groupby("iterations").mean(numeric_only=True).sort_index()
        lo, hi = by_it.iloc[0], by_it.iloc[-1]
        seeds = " ".join(str(s) for s in sorted(rows["seed"].unique()))
        text = (f"Scale, {name} (seed {seeds}): J&F {_num(lo['J&F'])} at {by_it.index[0]} "
                f"iterations → {_num(hi['J&F'])} at {by_it.index[-1]}; twin leakage "
                f"{_num(lo['leakage'], 1, ' %')} → {_num(hi['leakage'], 1, ' %')}; logit std "
                f"{_num(lo['logit_std'], 2)} → {_num(hi['logit_std'], 2)}; KM − STM at "
                f"{by_it.index[-1]} iterations {signed(float(hi['km_minus_stm']))} J&F points")
        final = rows[rows["iterations"] == by_it.index[-1]]
        if len(final) == 1 and not pd.isna(final["ci_low"].iloc[0]):
            iv = Interval(float(final["ci_low"].iloc[0]), float(final["ci_high"].iloc[0]),
                          math.nan, "bootstrap interval over sequences")
            text += f", 95 % {iv.kind} [{signed(iv.low)}, {signed(iv.high)}] — {verdict(iv)}"
        out.append(Finding(text + ".", f"tables/{SCALE_CSV}"))
    return out


def all_findings(out_dir: Path) -> dict[str, list[Finding]]:
    """Every headline of a results folder by section; an empty section is left out."""
    sections = {"findings": main_findings(out_dir), "distractors": distractor_findings(out_dir),
                "scale": scale_findings(out_dir)}
    return {k: v for k, v in sections.items() if v}


def plain_text(out_dir: Path) -> str:
    """The findings as plain text for the terminal, each sentence with its source."""
    lines = []
    for findings in all_findings(out_dir).values():
        lines += [f"- {f.text} [{f.source}]" for f in findings]
    return "\n".join(lines)
