"""Link the shared datasets into ``data/`` (the first step of ``make study`` / ``make test``).

``data/DAVIS-2016`` → ``../shared/data/DAVIS-2016`` and ``data/static`` → ``../shared/data/static`` when
the shared folder sits beside the checkout. Nothing is copied and an existing path is never replaced.
With ``$KMN_DATA`` set, that folder is used as is and nothing is linked.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from kmnlib.cli import run_command
from kmnlib.config import DATA_ENV, REPO_ROOT, resolve_data_root

DATASETS = ("DAVIS-2016", "static")
DOWNLOAD_HINT = """\
DAVIS-2016 was not found. Either
  * place the shared data folder beside the checkout (../shared/data/DAVIS-2016), or
  * download DAVIS 2016 from https://davischallenge.org/davis2016/code.html and lay it out as
      <root>/DAVIS-2016/{JPEGImages,Annotations}/480p/<sequence>/*.{jpg,png}
      <root>/DAVIS-2016/ImageSets/2016/{train,val}.txt
    then `export KMN_DATA=<root>` (see data/README.md for every supported layout)."""


def link_shared_data(repo_root: Path = REPO_ROOT, shared: Path | None = None) -> list[str]:
    """Create the data links; return a list of human-readable lines describing what was done."""
    if os.environ.get(DATA_ENV):
        return [f"using {DATA_ENV}={resolve_data_root()} (no links made)"]
    shared = shared or repo_root.parent / "shared" / "data"
    data_dir = repo_root / "data"
    data_dir.mkdir(exist_ok=True)
    report = []
    for name in DATASETS:
        link, target = data_dir / name, shared / name
        if link.exists() or link.is_symlink():
            report.append(f"data/{name}: present")
        elif target.is_dir():
            link.symlink_to(os.path.relpath(target, data_dir), target_is_directory=True)
            report.append(f"data/{name} -> {os.path.relpath(target, data_dir)}")
        else:
            report.append(f"data/{name}: not found at {target}")
    return report


def main() -> int:
    def work() -> int:
        for line in link_shared_data():
            print(line)
        root = resolve_data_root()
        if not (root / "DAVIS-2016" / "ImageSets" / "2016").is_dir():
            print(DOWNLOAD_HINT, file=sys.stderr)
            return 1
        return 0

    return run_command(work, debug=False, status=1)  # one line on Ctrl-C, exit 130


if __name__ == "__main__":
    sys.exit(main())
