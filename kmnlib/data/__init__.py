"""Dataset readers: DAVIS 2016/2017, YouTube-VOS 2018, static image folders; mask I/O.

Profiles name datasets as ``"<set>:<split>"`` (``"DAVIS-2016:val"``, ``"DAVIS-2017:train"``,
``"YouTube-VOS:train"``) and static sets by folder name under ``<data root>/static``;
:func:`open_video_dataset` and :func:`open_static_dataset` turn those names into readers. The data
root is always an argument (:func:`kmnlib.config.resolve_data_root` resolves it once, at the edge).
"""
from __future__ import annotations

import os
from pathlib import Path

from kmnlib.data.davis import DAVISDataset
from kmnlib.data.masks import (VOID, davis_palette, read_davis2016_mask, read_label_map,
                               write_label_map)
from kmnlib.data.static import StaticImageFolder, detect_layout
from kmnlib.data.video import (DEFAULT_MAX_OBJECTS, VideoSequence, frames_to_tensor, read_image)
from kmnlib.data.youtube_vos import YouTubeVOSDataset

__all__ = [
    "DAVISDataset", "YouTubeVOSDataset", "StaticImageFolder", "VideoSequence", "frames_to_tensor",
    "read_image", "read_label_map", "read_davis2016_mask", "write_label_map", "davis_palette",
    "detect_layout", "VOID",
    "DEFAULT_MAX_OBJECTS", "open_video_dataset", "open_static_dataset",
]


def open_video_dataset(spec: str, data_root: str | os.PathLike, *, resolution: str,
                       max_objects: int = DEFAULT_MAX_OBJECTS) -> DAVISDataset | YouTubeVOSDataset:
    """Reader for ``"DAVIS-2016:val"``-style names, found at ``<data_root>/<set>``.

    ``resolution`` is the DAVIS frame folder (the shared DAVIS-2016 copy holds train at ``240p``);
    YouTube-VOS ignores it.
    """
    name, sep, split = spec.partition(":")
    if not sep or not split:
        raise ValueError(f"video set {spec!r}: expected '<set>:<split>', e.g. 'DAVIS-2016:val'")
    base = Path(data_root) / name
    if name in ("DAVIS-2016", "DAVIS-2017"):
        return DAVISDataset(base, year=name[-4:], split=split, resolution=resolution,
                            max_objects=max_objects)
    if name == "YouTube-VOS":
        return YouTubeVOSDataset(base, split=split, max_objects=max_objects)
    raise ValueError(f"video set {spec!r}: unknown set {name!r} "
                     f"(known: DAVIS-2016, DAVIS-2017, YouTube-VOS)")


def open_static_dataset(name: str, data_root: str | os.PathLike) -> StaticImageFolder:
    """Reader for a static set by folder name: ``<data_root>/static/<name>``."""
    return StaticImageFolder(Path(data_root) / "static" / name)
