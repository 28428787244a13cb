"""The environment description and the data-link step agree with the package."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from kmnlib.config import REPO_ROOT, get_profile
from kmnlib.setup_data import link_shared_data


def _names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", r.strip())
        if m and not r.strip().startswith("-e"):
            out[m.group(1).lower()] = m.group(2).replace(" ", "")
    return out


def test_environment_yml_matches_pyproject() -> None:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env_lines = [ln.strip()[2:] for ln in (REPO_ROOT / "environment.yml").read_text().splitlines()
                 if ln.startswith("      - ")]
    assert _names(deps) == _names(env_lines)
    assert _names(deps)["torch"] == "==2.14.1" and _names(deps)["torchvision"] == "==0.29.1"


def test_link_shared_data_links_and_never_replaces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KMN_DATA", raising=False)
    repo, shared = tmp_path / "repo", tmp_path / "shared" / "data"
    (shared / "DAVIS-2016" / "ImageSets").mkdir(parents=True)
    repo.mkdir()
    link_shared_data(repo, shared)
    link = repo / "data" / "DAVIS-2016"
    assert link.is_symlink() and (link / "ImageSets").is_dir()
    assert not (repo / "data" / "static").exists()  # absent in shared → not linked
    # A user's own folder is left alone.
    own = repo / "data" / "static"
    own.mkdir()
    (own / "mine.txt").write_text("x")
    link_shared_data(repo, shared)
    assert (own / "mine.txt").read_text() == "x" and not own.is_symlink()


def test_profiles_are_consistent() -> None:
    for name in ("mini", "paper", "test"):
        p = get_profile(name)
        # A Hide-and-Seek cell stays one key-feature cell (stride 16).
        assert p.pretrain.crop_size == 16 * p.pretrain.hide_grid
        assert p.pretrain.crop_size % 16 == 0 and p.main.crop_size % 16 == 0
    paper = get_profile("paper")
    assert (paper.pretrain.lr, paper.main.lr, paper.main.batch_size) == (1e-5, 1e-5, 4)
    assert (paper.main.crop_size, paper.pretrain.hide_grid, paper.pretrain.hide_p_end) == (384, 24, 0.5)
    assert paper.main.gap_end == 25 and paper.inference.sigma == 7.0 and paper.inference.mem_every == 5
