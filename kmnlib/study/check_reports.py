"""``python -m kmnlib.study.check_reports results/mini``: are the reports of a results folder usable?

Checks ``index.html`` and every notebook report (``notebooks/*.html``) of the folder:

* every ``<img src>`` and ``<a href>`` resolves to a file or folder (relative paths; ``data:``
  URIs and in-page anchors are fine; ``http(s)`` links are listed, not fetched);
* no "NaN"/"nan" in table cells or text outputs (the notebooks' outputs, read from the ``.ipynb``
  beside each report, so code and prose that mention NaN do not count);
* no progress wall: at most :data:`MAX_PROGRESS_LINES` lines starting ``[train`` / ``[eval`` in a
  notebook's outputs (they belong in its progress log);
* every PNG in ``figures/`` is at most :data:`MAX_WIDTH_PX` wide and at most :data:`MAX_ASPECT`
  times wider than high (read from the PNG header);
* each notebook report links back to ``../index.html``; ``index.html`` has its findings and
  provenance sections.

One line per problem and exit status 1, or a summary line and 0; a missing folder is a one-line
error (status 2). ``--screenshots DIR`` also renders each page with headless Chromium where it is
installed (and says so in one line where it is not).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

MAX_PROGRESS_LINES = 5
MAX_WIDTH_PX = 2400
MAX_ASPECT = 3.5
PROGRESS_LINE = re.compile(r"^\[(train|eval)", re.MULTILINE)
NAN = re.compile(r"(?<![\w.])nan(?!\w)", re.IGNORECASE)
INDEX_SECTIONS = ("findings", "provenance")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """The references, element ids and table-cell / preformatted text of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.cells: list[str] = []   # text of td / th / pre / li / p elements
        self._open: list[str] = []
        self._skip = 0               # inside <style> / <script>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.refs.append(a["src"])
        if tag == "a" and a.get("href"):
            self.refs.append(a["href"])
        if a.get("id"):
            self.ids.add(a["id"])
        if tag in ("style", "script"):
            self._skip += 1
        if tag in ("td", "th", "pre", "li", "p"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        if tag in ("td", "th", "pre", "li", "p") and self._open:
            self.cells.append(self._open.pop())

    def handle_data(self, data: str) -> None:
        if self._open and not self._skip:
            self._open[-1] += data


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser


@dataclass
class Report:
    """What a check found: problems (one line each), external links, and what was checked."""

    problems: list[str] = field(default_factory=list)
    external: set[str] = field(default_factory=set)
    pages: int = 0
    links: int = 0
    figures: int = 0


def check_refs(page: Path, refs: Iterable[str], root: Path, report: Report) -> None:
    """Each reference of ``page`` resolves, relative to the page's folder."""
    for ref in refs:
        parts = urlsplit(ref)
        if parts.scheme in ("http", "https"):
            report.external.add(ref)
            continue
        if parts.scheme in ("data", "mailto", "javascript") or ref.startswith("#"):
            continue
        report.links += 1
        if parts.scheme or parts.netloc:
            report.problems.append(f"{rel(page, root)}: link {ref!r} is not a relative path")
            continue
        target = (page.parent / unquote(parts.path)).resolve()
        if not target.exists():
            report.problems.append(f"{rel(page, root)}: link {ref!r} does not resolve "
                                   f"({target} is missing)")


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header (ValueError for a file that is not a PNG)."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def check_figures(out_dir: Path, report: Report) -> None:
    for png in sorted((out_dir / "figures").glob("*.png")):
        report.figures += 1
        try:
            width, height = png_size(png)
        except (OSError, ValueError) as exc:
            report.problems.append(f"{rel(png, out_dir)}: unreadable ({exc})")
            continue
        if width > MAX_WIDTH_PX:
            report.problems.append(f"{rel(png, out_dir)}: {width} px wide (at most "
                                   f"{MAX_WIDTH_PX}: too large for a page)")
        if height == 0 or width / height > MAX_ASPECT:
            report.problems.append(f"{rel(png, out_dir)}: {width}×{height} px, width/height "
                                   f"{width / max(height, 1):.1f} (at most {MAX_ASPECT}: a strip "
                                   f"too thin to read at page width)")


def output_texts(ipynb: Path) -> Iterable[tuple[str, str]]:
    """(kind, text) of every output of a notebook: ``stream``, ``text`` (text/plain of a result
    without an HTML form) and ``html``."""
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    for c in nb.get("cells", []):
        for out in c.get("outputs", []) if c.get("cell_type") == "code" else []:
            if out.get("output_type") == "stream":
                yield "stream", "".join(out.get("text", ""))
                continue
            data = out.get("data", {})
            if "text/html" in data:
                yield "html", "".join(data["text/html"])
            elif "text/plain" in data:
                yield "text", "".join(data["text/plain"])


def html_cells(text: str) -> list[str]:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser.cells


def check_outputs(page: Path, ipynb: Path, root: Path, report: Report) -> None:
    """NaN in a notebook's table cells or text outputs, and progress walls."""
    progress, nan_places = 0, []
    for kind, text in output_texts(ipynb):
        if kind == "stream":
            progress += len(PROGRESS_LINE.findall(text))
        pieces = html_cells(text) if kind == "html" else [text]
        nan_places += [p.strip()[:60] for p in pieces if NAN.search(p)]
    if nan_places:
        report.problems.append(f"{rel(page, root)}: 'NaN' rendered in {len(nan_places)} output(s),"
                               f" e.g. {nan_places[0]!r} (show '—' for a missing value)")
    if progress > MAX_PROGRESS_LINES:
        report.problems.append(f"{rel(page, root)}: {progress} progress lines ([train…/[eval…) "
                               f"in the outputs (at most {MAX_PROGRESS_LINES}; they belong in the "
                               f"notebook's progress log)")


def check_notebook_report(page: Path, out_dir: Path, report: Report) -> None:
    parsed = parse_page(page)
    report.pages += 1
    check_refs(page, parsed.refs, out_dir, report)
    if not any(urlsplit(r).path == "../index.html" for r in parsed.refs):
        report.problems.append(f"{rel(page, out_dir)}: no link back to ../index.html")
    ipynb = page.with_suffix(".ipynb")
    if ipynb.is_file():
        check_outputs(page, ipynb, out_dir, report)
    else:   # no notebook beside it: the rendered page's cells are all there is to read
        cells = [c.strip()[:60] for c in parsed.cells if NAN.search(c)]
        if cells:
            report.problems.append(f"{rel(page, out_dir)}: 'NaN' rendered, e.g. {cells[0]!r}")


def check_index(out_dir: Path, report: Report) -> None:
    page = out_dir / "index.html"
    if not page.is_file():
        report.problems.append("index.html: missing (the study writes it when it finishes)")
        return
    parsed = parse_page(page)
    report.pages += 1
    check_refs(page, parsed.refs, out_dir, report)
    for section in INDEX_SECTIONS:
        if section not in parsed.ids:
            report.problems.append(f"index.html: no {section} section (id=\"{section}\")")
    nan = [c.strip()[:60] for c in parsed.cells if NAN.search(c)]
    if nan:
        report.problems.append(f"index.html: 'NaN' rendered, e.g. {nan[0]!r}")


def check_folder(out_dir: Path) -> Report:
    """Every check on the results folder ``out_dir``."""
    report = Report()
    check_index(out_dir, report)
    for page in sorted((out_dir / "notebooks").glob("*.html")):
        check_notebook_report(page, out_dir, report)
    check_figures(out_dir, report)
    return report


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshots(out_dir: Path, dest: Path, *, height: int = 3000,
                browser: str | None = None) -> list[str]:
    """PNG screenshots of ``index.html`` and each notebook report into ``dest`` with headless
    Chromium (1280 px wide, ``height`` high); returns one line per page (or one saying why none)."""
    browser = browser or find_browser()
    if browser is None:
        return [f"screenshots skipped: no Chromium on PATH (looked for {', '.join(BROWSERS)})"]
    dest.mkdir(parents=True, exist_ok=True)
    pages = [out_dir / "index.html"] + sorted((out_dir / "notebooks").glob("*.html"))
    lines = []
    for page in (p for p in pages if p.is_file()):
        png = dest / f"{page.parent.name}_{page.stem}.png" if page.parent != out_dir \
            else dest / "index.png"
        cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--screenshot={png}", f"--window-size=1280,{height}", page.resolve().as_uri()]
        try:
            subprocess.run(cmd, capture_output=True, timeout=180, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            lines.append(f"screenshot of {rel(page, out_dir)} failed: {exc}")
            continue
        lines.append(f"screenshot: {png}" if png.is_file() else
                     f"screenshot of {rel(page, out_dir)} failed: {browser} wrote no {png.name}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmnlib.study.check_reports",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path, help="a study's results folder, e.g. results/mini")
    ap.add_argument("--screenshots", type=Path, metavar="DIR", default=None,
                    help="also render each page to DIR/*.png with headless Chromium")
    args = ap.parse_args(argv)
    out_dir = args.out_dir.resolve()
    if not out_dir.is_dir():
        print(f"error: out_dir {args.out_dir}: results folder not found; pass a folder a study "
              f"wrote, e.g. results/mini", file=sys.stderr)
        return 2
    report = check_folder(out_dir)
    for problem in report.problems:
        print(problem)
    for url in sorted(report.external):
        print(f"external link (not fetched): {url}")
    if args.screenshots is not None:
        for line in screenshots(out_dir, args.screenshots.resolve()):
            print(line)
    if report.problems:
        print(f"{len(report.problems)} problem(s) in the reports of {args.out_dir}", file=sys.stderr)
        return 1
    print(f"{args.out_dir}: {report.pages} page(s), {report.links} link(s), {report.figures} "
          f"figure(s) checked; no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
