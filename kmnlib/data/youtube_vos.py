"""YouTube-VOS 2018 reader.

Layout::

    <root>/<split>/meta.json                     {"videos": {vid: {"objects": {"1": {"frames": [...]}}}}}
    <root>/<split>/JPEGImages/<vid>/00000.jpg ...
    <root>/<split>/Annotations/<vid>/00000.png   palette ids; train: every 5th frame,
                                                 valid: only the frame where each object first appears

Object ids come from meta.json. Objects may first appear mid-video: ``seq.first_frame[obj]`` is
the index (into ``seq.frame_paths``) of that object's first annotated frame. Frames without an
annotation have ``mask_paths[i] = None`` and load as all-void (255).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kmnlib.data.masks import read_label_map
from kmnlib.data.video import (DEFAULT_MAX_OBJECTS, VideoDataset, VideoSequence, check_mask_size,
                               frame_sort_key, list_frames_and_masks)


class YouTubeVOSDataset(VideoDataset):
    """Videos of one YouTube-VOS split; ``ds[i]`` or ``ds["vid"]`` gives a lazy ``VideoSequence``.

    ``strict`` (default) also reads each object's first annotation to check the object is there.
    """

    def __init__(self, root: str | os.PathLike, split: str, *,
                 max_objects: int = DEFAULT_MAX_OBJECTS, strict: bool = True) -> None:
        self.root = Path(root)
        self.split, self.max_objects, self.strict = split, max_objects, strict
        self.split_dir = self.root / split
        self.meta_path = self.split_dir / "meta.json"
        if not self.meta_path.is_file():
            raise FileNotFoundError(f"{self.meta_path}: meta.json not found (YouTube-VOS split "
                                    f"{split!r}; see data/README.md)")
        try:
            meta = json.loads(self.meta_path.read_text())
            self._videos: dict[str, Any] = meta["videos"]
            if not isinstance(self._videos, dict):
                raise TypeError("'videos' is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.meta_path}: not a YouTube-VOS meta file ({exc!r})") from exc
        self.names: list[str] = sorted(self._videos)
        for name in self.names:
            folder = self.split_dir / "JPEGImages" / name
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: video folder missing (listed in {self.meta_path})")
        self._cache: dict[str, VideoSequence] = {}

    def __repr__(self) -> str:
        return f"YouTubeVOSDataset({str(self.root)!r}, split={self.split!r}, videos={len(self)})"

    def _unknown(self, key: str) -> str:
        return f"{key!r} is not a video of {self.meta_path}"

    def _load_sequence(self, name: str) -> VideoSequence:
        frame_dir = self.split_dir / "JPEGImages" / name
        mask_dir = self.split_dir / "Annotations" / name
        frames, masks = list_frames_and_masks(frame_dir, mask_dir)
        index = {p.stem: i for i, p in enumerate(frames)}
        try:
            objects = {int(k): v["frames"] for k, v in self._videos[name]["objects"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{self.meta_path}: bad entry for video {name!r} ({exc!r})") from exc
        ids = sorted(objects)
        if not ids:
            raise ValueError(f"{self.meta_path}: video {name!r} lists no objects")
        if len(ids) > self.max_objects:
            raise ValueError(f"{self.meta_path}: video {name!r} has {len(ids)} objects {ids}, "
                             f"more than max_objects={self.max_objects}")
        first_frame: dict[int, int] = {}
        for obj in ids:
            if not objects[obj]:
                raise ValueError(f"{self.meta_path}: object {obj} of video {name!r} lists no frames")
            stem = min(objects[obj], key=lambda s: frame_sort_key(Path(str(s))))
            if stem not in index:
                raise FileNotFoundError(f"{frame_dir / (stem + '.jpg')}: frame missing (first "
                                        f"frame of object {obj} in {self.meta_path})")
            i = index[stem]
            if masks[i] is None:
                raise FileNotFoundError(f"{mask_dir / (stem + '.png')}: annotation missing (first "
                                        f"frame of object {obj} in {self.meta_path})")
            first_frame[obj] = i
        size = check_mask_size(masks[min(first_frame.values())], frames[0])
        if self.strict:  # one read per distinct first frame: the object must really be there
            for i in sorted(set(first_frame.values())):
                present = set(np.unique(read_label_map(masks[i], binary=False)).tolist())
                absent = [o for o, f in first_frame.items() if f == i and o not in present]
                if absent:
                    raise ValueError(f"{masks[i]}: object(s) {absent} missing from their "
                                     f"first annotation (per {self.meta_path})")
        return VideoSequence(name=name, frame_paths=frames, mask_paths=masks, object_ids=ids,
                             size=size, first_frame=first_frame)
