"""Shared fixtures: where the real data lives (skip with a reason when it is absent)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kmnlib.config import resolve_data_root
from kmnlib.denormals import flush_denormals


def _find(name: str, marker: str) -> Path:
    """``<data root>/<name>`` (:func:`kmnlib.config.resolve_data_root`), or skip with the reason."""
    path = resolve_data_root() / name
    if (path / marker).exists():
        return path.resolve()
    pytest.skip(f"{name} not found ({path / marker} missing); run `make data` or set KMN_DATA, "
                f"see data/README.md")


@pytest.fixture(scope="session", autouse=True)
def _flushed_subnormals() -> None:
    """The test session is an entry point like ``python -m kmnlib.train`` and ``open_study``:
    subnormals flushed in every thread (library functions such as ``run_dataset``, ``Trainer.run``
    and ``read_probe`` leave that to their caller). Subprocesses a test starts flush themselves."""
    flush_denormals()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root holding DAVIS-2016 and the static sets (what `make data` links)."""
    return _find("DAVIS-2016", "ImageSets/2016").parent


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """Root of the real DAVIS-2016 copy (ImageSets/2016 inside)."""
    return _find("DAVIS-2016", "ImageSets/2016")


@pytest.fixture(scope="session")
def static_root() -> Path:
    """Folder holding the shared static sets (coco-panoptic-200, weizmann-horse)."""
    return _find("static", "weizmann-horse")


@pytest.fixture
def youtube_valid(tmp_path, davis_root) -> tuple[Path, np.ndarray]:
    """A YouTube-VOS ``valid`` layout under ``tmp_path/data/YouTube-VOS`` from real blackswan frames.

    Video ``vid``: 9 frames named 00000, 00005, … (every 5th, as YouTube-VOS valid); object 1 (the
    swan) first annotated at frame 2, object 3 (a box) at frame 6, no other annotation. Returns the
    YouTube-VOS root and the box label map (90,160).
    """
    from PIL import Image

    from kmnlib.data import DAVISDataset
    from kmnlib.data.masks import write_label_map

    seq = DAVISDataset(davis_root, year="2016", split="val", resolution="480p")["blackswan"]
    root = tmp_path / "data" / "YouTube-VOS"
    d = root / "valid"
    (d / "JPEGImages" / "vid").mkdir(parents=True)
    names = [f"{5 * t:05d}" for t in range(9)]
    for t, name in enumerate(names):
        with Image.open(seq.frame_paths[t]) as im:
            im.resize((160, 90)).save(d / "JPEGImages" / "vid" / f"{name}.jpg")
    swan = np.asarray(Image.fromarray(seq.load_mask(2)).resize((160, 90), Image.NEAREST))
    box = np.zeros((90, 160), np.uint8)
    box[5:25, 110:150] = 3
    write_label_map(d / "Annotations" / "vid" / f"{names[2]}.png", swan)
    write_label_map(d / "Annotations" / "vid" / f"{names[6]}.png", box)
    (d / "meta.json").write_text(json.dumps({"videos": {"vid": {"objects": {
        "1": {"category": "bird", "frames": names[2:]},
        "3": {"category": "box", "frames": names[6:]}}}}}))
    return root, box


def copy_davis(davis_root: Path, root: Path, names: list[str], n_frames: int) -> Path:
    """A DAVIS-2016 val layout at ``root``: real ``names`` cut to their first ``n_frames`` frames
    (a copy, which a test may break)."""
    for name in names:
        for kind, ext in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
            src = sorted((davis_root / kind / "480p" / name).glob(ext))[:n_frames]
            (root / kind / "480p" / name).mkdir(parents=True)
            for p in src:
                shutil.copyfile(p, root / kind / "480p" / name / p.name)
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture
def small_davis(tmp_path, davis_root) -> Path:
    """A DAVIS-2016 val layout with two real sequences cut to 4 frames."""
    return copy_davis(davis_root, tmp_path / "DAVIS-2016", ["blackswan", "car-shadow"], 4)


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core machine two intra-op threads per process
    oversubscribe the CPU and a step runs several times slower (one thread is also what each
    worker and DDP process uses)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hard_rows(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random rows rounded to one decimal (many ties), and rows that are all ties, hold NaNs, are
    all -inf, or hold +inf twice."""
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3).round(decimals=1)
    x = x.to(dtype)
    rows = x.reshape(-1, shape[-1])
    rows[1] = 1.0
    rows[2, 3] = rows[2, 1] = float("nan")
    rows[3] = float("-inf")
    rows[4, 2] = rows[4, 4] = float("inf")
    rows[5, -1] = rows[5].max() + 1     # the maximum in the last column
    return x
