"""Dataset readers: DAVIS 2016/2017, YouTube-VOS 2018, static image folders; mask I/O.

Profiles name datasets as ``"<set>:<split>"`` (``"DAVIS-2016:val"``, ``"DAVIS-2017:train"``,
``"YouTube-VOS:train"``) and static sets by folder name under ``data_root()/static``;
:func:`open_video_dataset` and :func:`open_static_dataset` turn those names into readers.
"""
from __future__ import annotations

import os
from pathlib import Path

from kmnlib.config import data_root
from kmnlib.data.davis import DAVISDataset
from kmnlib.data.masks import VOID, davis_palette, read_label_map, write_label_map
from kmnlib.data.static import StaticImageFolder, detect_layout
from kmnlib.data.video import (DEFAULT_MAX_OBJECTS, VideoSequence, frames_to_tensor, read_image)
from kmnlib.data.youtube_vos import YouTubeVOSDataset

__all__ = [
    "DAVISDataset", "YouTubeVOSDataset", "StaticImageFolder", "VideoSequence", "frames_to_tensor",
    "read_image", "read_label_map", "write_label_map", "davis_palette", "detect_layout", "VOID",
    "DEFAULT_MAX_OBJECTS", "open_video_dataset", "open_static_dataset",
]


def open_video_dataset(spec: str, *, root: str | os.PathLike | None = None,
                       resolution: str = "480p",
                       max_objects: int = DEFAULT_MAX_OBJECTS) -> DAVISDataset | YouTubeVOSDataset:
    """Reader for ``"DAVIS-2016:val"``-style names; ``root`` defaults to ``data_root()/<set>``.

    ``resolution`` applies to DAVIS only (the shared DAVIS-2016 copy holds train at ``240p``).
    """
    name, sep, split = spec.partition(":")
    if not sep or not split:
        raise ValueError(f"video set {spec!r}: expected '<set>:<split>', e.g. 'DAVIS-2016:val'")
    base = Path(root) if root is not None else data_root() / name
    if name in ("DAVIS-2016", "DAVIS-2017"):
        return DAVISDataset(base, year=name[-4:], split=split, resolution=resolution,
                            max_objects=max_objects)
    if name == "YouTube-VOS":
        return YouTubeVOSDataset(base, split=split, max_objects=max_objects)
    raise ValueError(f"video set {spec!r}: unknown set {name!r} "
                     f"(known: DAVIS-2016, DAVIS-2017, YouTube-VOS)")


def open_static_dataset(name: str, *, root: str | os.PathLike | None = None) -> StaticImageFolder:
    """Reader for a static set by folder name: ``root`` or ``data_root()/static/<name>``."""
    return StaticImageFolder(Path(root) if root is not None else data_root() / "static" / name)
