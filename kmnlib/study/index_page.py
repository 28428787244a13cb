"""``<out_dir>/index.html``: the study's report page, opening with its findings.

    python -m kmnlib.study.index_page results/mini     # rewrite the page of a finished study

Top to bottom: the findings (sentences generated from ``tables/effects.csv``,
:mod:`kmnlib.study.findings`), the arms × seeds J&F table with the paper's numbers and the
first-frame-copy baseline (:mod:`kmnlib.study.arms_table`), a forest plot of every effect
(:mod:`kmnlib.study.forest`), the distractor and scale headlines where their tables exist, the
provenance of the folder (a warning when it is missing or the code was dirty), and links to every
report, log, replicate, table and figure. Every number on the page names the file it came from.
"""
from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from kmnlib.files import save_text
from kmnlib.provenance import PROVENANCE_JSON, read_provenance
from kmnlib.study import findings as fnd
from kmnlib.study.arms_table import arms_table, baseline_path
from kmnlib.study.forest import FOREST_PNG, forest_plot
from kmnlib.study.summary import replicates

INDEX_HTML = "index.html"
STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .7em;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}.src{color:#555;font-size:.9em}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.4em .8em}img{max-width:100%}"""


def esc(x: object) -> str:
    return html.escape(str(x))


def cell(value: object, digits: int) -> str:
    """A table cell: numbers right-aligned to ``digits``, "—" for a missing value."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return '<td class="n">—</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="n">{value:.{digits}f}</td>'
    return f"<td>{esc(value)}</td>"


def html_table(df: pd.DataFrame, *, digits: int = 1, source: str = "") -> str:
    """Every row and column of ``df`` (no truncation), with a source caption under it."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(cell(v, digits) for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    caption = f'<p class="src">Source: {source}</p>' if source else ""
    return f"<table><tr>{head}</tr>{body}</table>{caption}"


def finding_list(items: Sequence[fnd.Finding]) -> str:
    lis = "".join(f'<li>{esc(f.text)} <span class="src">[{link(f.source)}]</span></li>'
                  for f in items)
    return f"<ul>{lis}</ul>"


def link(rel: str, text: str | None = None) -> str:
    return f'<a href="{esc(rel)}">{esc(text or rel)}</a>'


def findings_section(out_dir: Path) -> str:
    items = fnd.main_findings(out_dir)
    body = finding_list(items) if items else (
        f"<p>No <code>tables/{fnd.EFFECTS_CSV}</code> yet: the findings appear when notebook 06 "
        f"has run.</p>")
    return (f'<section id="findings"><h2>Findings</h2>{body}<p class="src">Intervals: the '
            f"seed-level t interval when an effect pools two or more seeds, else the bootstrap "
            f"interval (each sentence says which); \"undecided\" = the interval contains 0."
            f"</p></section>")


def arms_section(out_dir: Path) -> str:
    made = arms_table(out_dir)
    if made is None:
        return '<section id="arms"><h2>Every arm, DAVIS-16 val J&amp;F</h2><p>No ' \
               "<code>tables/03_davis16_val.csv</code> yet.</p></section>"
    df, runs = made
    base = baseline_path(out_dir)
    rel_base = Path("..") / base.relative_to(Path(out_dir).parent)
    where = ", ".join(f"<code>{esc(r)}/tables/03_davis16_val.csv</code>" for r in runs)
    source = (f"ours: {where}; paper: <code>kmnlib/study/paper.py</code> (Seong et al. 2020, the "
              f"table named per row); baseline: "
              + (link(str(rel_base)) if base.is_file() else
                 f"<code>{esc(rel_base)}</code> not computed (run <code>python -m "
                 f"kmnlib.baselines</code>)"))
    return (f'<section id="arms"><h2>Every arm, DAVIS-16 val J&amp;F (%)</h2>'
            f"{html_table(df, digits=1, source=source)}</section>")


def forest_section(out_dir: Path) -> str:
    path = Path(out_dir) / "tables" / fnd.EFFECTS_CSV
    effects = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if effects.empty:
        return ""
    forest_plot(effects, Path(out_dir) / "figures" / FOREST_PNG)
    return (f'<section id="forest"><h2>Every effect</h2><img src="figures/{FOREST_PNG}" '
            f'alt="forest plot of every effect of tables/{fnd.EFFECTS_CSV}"><p class="src">'
            f"Source: {link('tables/' + fnd.EFFECTS_CSV)}; paper: <code>paper.table3_effects()"
            f"</code>; grey: the smallest effect each row could detect.</p></section>")


def headline_sections(out_dir: Path) -> str:
    parts = []
    for key, title in (("distractors", "Distractors (notebook 07)"), ("scale", "Scale")):
        items = fnd.distractor_findings(out_dir) if key == "distractors" \
            else fnd.scale_findings(out_dir)
        if items:
            parts.append(f'<section id="{key}"><h2>{title}</h2>{finding_list(items)}</section>')
    return "".join(parts)


def profile_name(out_dir: Path) -> str | None:
    import json

    path = Path(out_dir) / "profile.json"
    try:
        return str(json.loads(path.read_text())["name"])
    except (OSError, ValueError, KeyError):
        return None


def provenance_section(out_dir: Path) -> str:
    """Commit, dirty flag, profile, CPU, date, command, from ``provenance.json``; a warning line
    when the file is missing or the code differed from the commit."""
    head = '<section id="provenance"><h2>Provenance</h2>'
    try:
        prov = read_provenance(out_dir)
    except (FileNotFoundError, ValueError):
        return (f'{head}<p class="warn">Warning: no {PROVENANCE_JSON} in this folder — the commit '
                f"and code that made these numbers are not recorded; re-run the study into it."
                f"</p></section>")
    dirty = prov.get("dirty") or []
    warn = (f'<p class="warn">Warning: the code differed from commit {esc(prov.get("commit"))} '
            f"when this folder was made ({len(dirty)} changed file(s): "
            f"{esc(', '.join(dirty))}); its numbers may not be reproducible from the commit.</p>"
            if dirty else "")
    rows = {"commit": prov.get("commit") or "— (not a git checkout)",
            "dirty": "yes" if dirty else "no", "profile": profile_name(out_dir) or "—",
            "CPU": f"{prov.get('cpu', '—')} ({prov.get('threads', '—')} torch threads)",
            "platform": prov.get("platform", "—"), "date (UTC)": prov.get("date_utc", "—"),
            "command": " ".join(prov.get("command") or []) or "—"}
    table = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(v)}</code></td></tr>"
                    for k, v in rows.items())
    return f'{head}{warn}<table>{table}</table><p class="src">Source: {link(PROVENANCE_JSON)}' \
           f"</p></section>"


def notebook_rows(out_dir: Path, notebooks: Sequence[str], times: pd.DataFrame | None) -> str:
    """One row per notebook: its report, ipynb, progress log, a failed run, its wall time."""
    nb = Path(out_dir) / "notebooks"
    found = sorted(p.stem for p in nb.glob("*.html")) if nb.is_dir() else []
    rows = []
    for name in list(notebooks) + [n for n in found if n not in notebooks]:
        files = [("report", f"{name}.html"), ("ipynb", f"{name}.ipynb"),
                 ("progress log", f"{name}.log"), ("failed run", f"{name}.failed.ipynb")]
        links = [link(f"notebooks/{f}", what) for what, f in files if (nb / f).is_file()]
        secs = ""
        if times is not None and (times["notebook"] == name).any():
            r = times[times["notebook"] == name].iloc[-1]
            secs = f"{r['seconds']:.0f} s ({r['status']})"
        rows.append(f"<tr><td>{esc(name)}</td><td>{' · '.join(links) or 'no report yet'}</td>"
                    f"<td>{esc(secs)}</td></tr>")
    return ("<table><tr><th>notebook</th><th>files</th><th>wall time</th></tr>"
            f"{''.join(rows)}</table>")


def listing(out_dir: Path, sub: str, pattern: str) -> str:
    folder = Path(out_dir) / sub
    files = sorted(folder.rglob(pattern)) if folder.is_dir() else []
    items = "".join(f"<li>{link(str(f.relative_to(out_dir)), str(f.relative_to(folder)))}</li>"
                    for f in files)
    return f"<ul>{items}</ul>" if items else "<p>none yet</p>"


def related_links(out_dir: Path) -> str:
    """The seed replicates, the long run, the profile and the baselines, where they exist."""
    out_dir = Path(out_dir)
    items = []
    for d in replicates(out_dir):
        target = f"../{d.name}/{INDEX_HTML}" if (d / INDEX_HTML).is_file() else f"../{d.name}/"
        items.append(f"seed replicate {link(target, d.name)}")
    long = out_dir.parent / f"{out_dir.name}-long"
    if long.is_dir():
        run_md = long / "RUN.md"
        items.append("long run " + link(f"../{long.name}/" + ("RUN.md" if run_md.is_file()
                                                              else ""), long.name))
    if (out_dir / "profile.json").is_file():
        items.append("the profile " + link("profile.json"))
    base = baseline_path(out_dir).parent
    if base.is_dir():
        items += [f"baseline {link(f'../baselines/{base.name}/{f.name}')}"
                  for f in sorted(base.glob("*.csv"))]
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else \
        "<p>none</p>"


STAGE_TIMES = "stage_times.csv"


def render_page(out_dir: Path, profile: str, notebooks: Sequence[str]) -> str:
    """The page's HTML (writes the forest plot it shows)."""
    out_dir = Path(out_dir)
    times = pd.read_csv(out_dir / STAGE_TIMES) if (out_dir / STAGE_TIMES).is_file() else None
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kmn-study — {esc(profile)}</title>
<style>{STYLE}</style></head><body>
<h1>kmn-study — profile <code>{esc(profile)}</code></h1>
<p>Kernelized Memory Network (Seong et al., ECCV 2020) study: does KMN's kernelized memory read,
or Hide-and-Seek pre-training, change accuracy? Page generated {stamp} from this folder's tables
(<code>python -m kmnlib.study.index_page {esc(out_dir.name)}</code> rewrites it).</p>
{findings_section(out_dir)}
{arms_section(out_dir)}
{forest_section(out_dir)}
{headline_sections(out_dir)}
{provenance_section(out_dir)}
<section id="reports"><h2>Notebook reports</h2>{notebook_rows(out_dir, notebooks, times)}
{f'<p class="src">Wall times: {link(STAGE_TIMES)}</p>' if times is not None else ""}</section>
<section id="related"><h2>Replicates, long run, profile, baselines</h2>{related_links(out_dir)}
</section>
<section id="tables"><h2>Tables (CSV)</h2>{listing(out_dir, "tables", "*.csv")}</section>
<section id="figures"><h2>Figures (PNG)</h2>{listing(out_dir, "figures", "*.png")}</section>
</body></html>
"""


def write_index(out_dir: Path, profile: str, notebooks: Sequence[str]) -> Path:
    """Write ``<out_dir>/index.html`` (atomically) and return its path."""
    return save_text(render_page(out_dir, profile, notebooks), Path(out_dir) / INDEX_HTML)


def main(argv: Sequence[str] | None = None) -> int:
    from kmnlib.cli import add_debug_flag, run_command
    from kmnlib.study.runner import NOTEBOOKS

    ap = argparse.ArgumentParser(prog="python -m kmnlib.study.index_page",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path, help="a study's results folder, e.g. results/mini")
    add_debug_flag(ap)
    args = ap.parse_args(argv)

    def work() -> int:
        out = args.out_dir.resolve()
        if not out.is_dir():
            raise FileNotFoundError(f"{args.out_dir}: results folder not found; name the folder "
                                    f"a study wrote (e.g. results/mini)")
        page = write_index(out, profile_name(out) or out.name, NOTEBOOKS)
        print(fnd.plain_text(out))
        print(f"report: {page}")
        return 0

    return run_command(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
