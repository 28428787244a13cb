"""DAVIS 2016 / 2017 readers (semi-supervised: objects are those of the first-frame annotation).

Layout (``resolution`` is a folder name such as ``480p``, ``240p`` or ``Full-Resolution``)::

    <root>/ImageSets/<year>/<split>.txt        one sequence name per line
    <root>/JPEGImages/<resolution>/<seq>/00000.jpg ...
    <root>/Annotations/<resolution>/<seq>/00000.png ...

DAVIS 2016 masks are 0/255 grey PNGs read as {0,1}; 0/1 grey (8- or 16-bit) and palette masks
read the same (:func:`kmnlib.data.masks.read_davis2016_mask` has the rule; a DAVIS-2017 palette
folder read with ``year="2016"`` collapses its objects into one, as the official 2016 protocol
does). DAVIS 2017 masks are palette PNGs (or 8/16-bit grey label maps): ids 1..N as stored,
255 = void.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kmnlib.data.masks import VOID, read_davis2016_mask, read_label_map
from kmnlib.data.video import (DEFAULT_MAX_OBJECTS, VideoDataset, VideoSequence, check_mask_size,
                               check_object_count, list_frames_and_masks)

YEARS = ("2016", "2017")


def split_file(root: str | os.PathLike, year: str | int, split: str) -> Path:
    """``<root>/ImageSets/<year>/<split>.txt``, the list of a split's sequences."""
    return Path(root) / "ImageSets" / str(year) / f"{split}.txt"


def read_split(root: str | os.PathLike, year: str | int, split: str) -> list[str]:
    """Sequence names listed in ``ImageSets/<year>/<split>.txt``, in file order.

    Lines may be bare names or the original DAVIS-2016 style ``/JPEGImages/480p/<seq>/00000.jpg
    /Annotations/...`` frame pairs (a name then repeats once per frame; it is kept once). A UTF-8
    byte-order mark and whitespace around a name are dropped; a bare name is the whole line (a
    space inside it stays, and the folder check then shows the name with ``repr``).
    """
    path = split_file(root, year, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sequence list not found (is the DAVIS root the folder "
                                f"holding ImageSets/, Annotations/, JPEGImages/? year {year}, "
                                f"split {split!r})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
                         f"sequence list as plain UTF-8, one name per line") from None
    names: list[str] = []
    for line in text.splitlines():
        line = line.strip().lstrip("\ufeff").strip()
        if not line:
            continue
        if "/" in line:  # DAVIS-2016 frame-pair line: /JPEGImages/480p/<seq>/00000.jpg ...
            parts = line.split()[0].strip("/").split("/")
            name = parts[2] if len(parts) >= 3 else parts[0]
        else:
            name = line
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"{path}: the sequence list is empty")
    return names


class DAVISDataset(VideoDataset):
    """Sequences of one DAVIS split; ``ds[i]`` or ``ds["name"]`` gives a lazy ``VideoSequence``."""

    def __init__(self, root: str | os.PathLike, year: str | int, split: str, resolution: str, *,
                 max_objects: int = DEFAULT_MAX_OBJECTS) -> None:
        self.year = str(year)
        if self.year not in YEARS:
            raise ValueError(f"DAVIS year must be one of {YEARS}, got {year!r}")
        self.root = Path(root)
        self.split, self.resolution, self.max_objects = split, resolution, max_objects
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: DAVIS root folder not found (see data/README.md)")
        self.names: list[str] = read_split(self.root, self.year, split)
        # Folder checks are cheap stats; doing them now fails early rather than mid-training.
        for name in self.names:
            for kind in ("JPEGImages", "Annotations"):
                self._check_folder(self.root / kind / resolution / name, kind, name)
        self._cache: dict[str, VideoSequence] = {}

    def _check_folder(self, folder: Path, kind: str, name: str) -> None:
        if folder.is_dir():
            return
        others = sorted(p.parent.name for p in (self.root / kind).glob(f"*/{name}") if p.is_dir())
        hint = (f"; the sequence exists at resolution(s) {', '.join(others)} — pass "
                f"resolution={others[0]!r}" if others else "")
        raise FileNotFoundError(f"{folder}: sequence folder missing (sequence {name!r}, listed in "
                                f"ImageSets/{self.year}/{self.split}.txt){hint}")

    def __repr__(self) -> str:
        return (f"DAVISDataset({str(self.root)!r}, year={self.year!r}, split={self.split!r}, "
                f"resolution={self.resolution!r}, sequences={len(self)})")

    def _unknown(self, key: str) -> str:
        return f"{key!r} is not a sequence of DAVIS {self.year} {self.split}"

    def _load_sequence(self, name: str) -> VideoSequence:
        frame_dir = self.root / "JPEGImages" / self.resolution / name
        mask_dir = self.root / "Annotations" / self.resolution / name
        frames, masks = list_frames_and_masks(frame_dir, mask_dir)
        first = masks[0]
        if first is None:
            raise FileNotFoundError(f"{mask_dir / (frames[0].stem + '.png')}: first-frame "
                                    f"annotation missing")
        size = check_mask_size(first, frames[0])
        binary = self.year == "2016"
        labels = read_davis2016_mask(first) if binary else read_label_map(first, binary=False)
        ids = [int(v) for v in np.unique(labels) if v not in (0, VOID)]
        if binary:
            ids = [1] if ids else []
        check_object_count(first, ids, self.max_objects)
        return VideoSequence(name=name, frame_paths=frames, mask_paths=masks, object_ids=ids,
                             size=size, binary=binary)
