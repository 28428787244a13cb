"""``VideoSequence``: the lazy per-video object every video reader returns, plus image helpers.

A sequence holds only paths and metadata; pixels are read on demand (``load_frames`` /
``load_masks`` with an optional index subset), so a training sampler can read 3 frames of a video
without decoding the rest.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from kmnlib.data.masks import VOID, read_davis2016_mask, read_label_map

if TYPE_CHECKING:  # torch is only needed by frames_to_tensor; keep plain data reading torch-free
    import torch

# Default cap on objects per video for DAVIS-2017-like data (STM/KMN evaluate with up to 10).
DEFAULT_MAX_OBJECTS = 10
FRAME_EXTENSIONS = (".jpg", ".jpeg")
MASK_EXTENSIONS = (".png",)


def frame_sort_key(path: Path) -> tuple[float, str]:
    """Numeric order for numeric stems (``9`` before ``10``), name order otherwise."""
    stem = path.stem
    return (int(stem) if stem.isdigit() else math.inf, stem)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image from its header only; clear error for a missing or unreadable file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(f"{path}: cannot read image ({exc})") from exc
    return h, w


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8 RGB (H,W,3); grey/CMYK/alpha images are converted to RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode fully here so truncated files fail with this path in the message
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Exception as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc
    return arr


def frames_to_tensor(frames: np.ndarray) -> "torch.Tensor":
    """uint8 frames (T,H,W,3) → float tensor (T,3,H,W) in [0,1]. A single (H,W,3) image gives (3,H,W)."""
    import torch

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"frames_to_tensor expects uint8 (T,H,W,3) or (H,W,3), "
                         f"got {frames.dtype} {frames.shape}")
    t = torch.from_numpy(np.ascontiguousarray(frames))
    return t.movedim(-1, -3).float().div_(255.0)


def _listdir(folder: Path, what: str) -> list[Path]:
    """The entries of ``folder``; an unreadable folder says so (never "no frames/annotations")."""
    try:
        return list(folder.iterdir())
    except PermissionError:
        raise PermissionError(f"{folder}: {what} folder cannot be read (permission denied); give "
                              f"read access to it (chmod -R a+rX) and run again") from None


def list_frames_and_masks(frame_dir: Path, mask_dir: Path) -> tuple[list[Path], list[Path | None]]:
    """Pair ``frame_dir/<stem>.jpg`` with ``mask_dir/<stem>.png`` (None where a frame has no mask).

    An annotation without its frame is an error (the video is incomplete), naming the missing frame.
    """
    if not frame_dir.is_dir():
        raise FileNotFoundError(f"{frame_dir}: frame folder not found")
    frames = sorted((p for p in _listdir(frame_dir, "frame")
                     if p.suffix.lower() in FRAME_EXTENSIONS), key=frame_sort_key)
    if not frames:
        raise FileNotFoundError(f"{frame_dir}: no frames (*.jpg) in folder")
    masks = {}
    if mask_dir.is_dir():
        masks = {p.stem: p for p in _listdir(mask_dir, "annotation")
                 if p.suffix.lower() in MASK_EXTENSIONS}
    stems = {p.stem for p in frames}
    orphans = sorted((s for s in masks if s not in stems), key=lambda s: frame_sort_key(Path(s)))
    if orphans:
        missing = frame_dir / f"{orphans[0]}.jpg"
        raise FileNotFoundError(f"{missing}: frame missing although annotation {masks[orphans[0]]} "
                                f"exists ({len(orphans)} such frame(s))")
    return frames, [masks.get(p.stem) for p in frames]


@dataclass
class VideoSequence:
    """One video: frame/mask paths and object metadata; pixels are loaded on demand.

    ``mask_paths[i]`` is None where frame ``i`` has no annotation (YouTube-VOS); ``load_masks``
    returns such frames as all-void (255) so "unknown" never reads as background.
    ``first_frame[obj]`` is the index of the first annotated frame holding object ``obj``
    (0 for every object of DAVIS). With ``binary`` the masks are DAVIS-2016 style, read by
    :func:`kmnlib.data.masks.read_davis2016_mask`: every object id (and 0/1 or 0/255 grey)
    collapses to object 1, void stays 255.
    """

    name: str
    frame_paths: list[Path]
    mask_paths: list[Path | None]
    object_ids: list[int]
    size: tuple[int, int]
    first_frame: dict[int, int] = field(default_factory=dict)
    binary: bool = False

    def __post_init__(self) -> None:
        if len(self.frame_paths) != len(self.mask_paths):
            raise ValueError(f"{self.name}: {len(self.frame_paths)} frames but "
                             f"{len(self.mask_paths)} mask entries")
        if not self.first_frame:
            self.first_frame = {k: 0 for k in self.object_ids}

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    @property
    def annotated(self) -> list[int]:
        """Indices of the frames that have an annotation file."""
        return [i for i, p in enumerate(self.mask_paths) if p is not None]

    def __len__(self) -> int:
        return len(self.frame_paths)

    def __repr__(self) -> str:
        return (f"VideoSequence({self.name!r}, frames={len(self)}, objects={self.object_ids}, "
                f"size={self.size})")

    def _indices(self, idx: Sequence[int] | None) -> list[int]:
        if idx is None:
            return list(range(len(self)))
        out = []
        for i in idx:
            j = int(i)
            if not -len(self) <= j < len(self):
                raise IndexError(f"{self.name}: frame index {j} out of range (0..{len(self) - 1})")
            out.append(j % len(self))
        return out

    def load_frames(self, idx: Sequence[int] | None = None) -> np.ndarray:
        """uint8 frames (T,H,W,3) for the given indices (all frames when None)."""
        ids = self._indices(idx)
        h, w = self.size
        out = np.empty((len(ids), h, w, 3), dtype=np.uint8)
        for k, i in enumerate(ids):
            img = read_image(self.frame_paths[i])
            if img.shape[:2] != (h, w):
                raise ValueError(f"{self.frame_paths[i]}: frame size {img.shape[0]}x{img.shape[1]} "
                                 f"differs from the sequence size {h}x{w}")
            out[k] = img
        return out

    def load_mask(self, i: int) -> np.ndarray:
        """uint8 label map (H,W) of frame ``i`` (all void where the frame has no annotation)."""
        return self.load_masks([i])[0]

    def load_masks(self, idx: Sequence[int] | None = None) -> np.ndarray:
        """uint8 label maps (T,H,W): 0 background, object ids, 255 void / not annotated."""
        ids = self._indices(idx)
        h, w = self.size
        out = np.full((len(ids), h, w), VOID, dtype=np.uint8)
        for k, i in enumerate(ids):
            path = self.mask_paths[i]
            if path is None:
                continue
            # DAVIS-2016: one foreground object (0/1, 0/255 grey or palette ids), void kept
            m = read_davis2016_mask(path) if self.binary else read_label_map(path, binary=False)
            if m.shape != (h, w):
                raise ValueError(f"{path}: mask size {m.shape[0]}x{m.shape[1]} differs from the "
                                 f"frame size {h}x{w}")
            out[k] = m
        return out


def select_sequences(names: Sequence[str], wanted: Iterable[str] | None, source: str) -> list[str]:
    """``names`` (in their order) restricted to ``wanted``; all of them when ``wanted`` is None.

    A wanted name that is not in ``names`` is a ``ValueError`` naming ``source`` (the split list or
    dataset it should be in) — never silently dropped.
    """
    if wanted is None:
        return list(names)
    if isinstance(wanted, str):
        raise ValueError(f"{source}: sequences must be a list of names, got the string {wanted!r}")
    wanted = list(wanted)
    unknown = [s for s in wanted if s not in set(names)]
    if unknown:
        raise ValueError(f"{source}: sequences {unknown} are not in it")
    keep = set(wanted)
    return [n for n in names if n in keep]


def check_object_count(path: Path, object_ids: list[int], max_objects: int) -> None:
    """Refuse an annotation with no object or with more than ``max_objects`` objects."""
    if not object_ids:
        raise ValueError(f"{path}: first-frame annotation holds no object (only background/void)")
    if len(object_ids) > max_objects:
        raise ValueError(f"{path}: {len(object_ids)} objects {object_ids} exceed "
                         f"max_objects={max_objects}")


def check_mask_size(mask_path: Path, frame_path: Path) -> tuple[int, int]:
    """Header-only check that a mask matches its frame; returns the frame size (H,W)."""
    size = image_size(frame_path)
    msize = image_size(mask_path)
    if msize != size:
        raise ValueError(f"{mask_path}: mask size {msize[0]}x{msize[1]} differs from the frame "
                         f"size {size[0]}x{size[1]} of {frame_path}")
    return size


class VideoDataset:
    """Shared indexing of the video readers: ``names``, ``len()``, iteration, and ``ds[i]`` or
    ``ds["name"]`` returning a cached lazy :class:`VideoSequence` built by ``_load_sequence``."""

    names: list[str]
    _cache: dict[str, VideoSequence]

    def _load_sequence(self, name: str) -> VideoSequence:
        raise NotImplementedError

    def _unknown(self, key: str) -> str:
        return f"{key!r} is not a sequence of {self!r}"

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[VideoSequence]:
        return (self[n] for n in self.names)

    def __getitem__(self, key: int | str) -> VideoSequence:
        if isinstance(key, str):
            if key not in self.names:
                raise KeyError(self._unknown(key))
            name = key
        else:
            name = self.names[key]
        if name not in self._cache:
            self._cache[name] = self._load_sequence(name)
        return self._cache[name]


class SequenceList(VideoDataset):
    """A video reader over given :class:`VideoSequence` objects (subsets, derived test sets)."""

    def __init__(self, sequences: Sequence[VideoSequence], label: str = "sequence list") -> None:
        self.names = [s.name for s in sequences]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{label}: duplicate sequence names {self.names}")
        self._cache = {s.name: s for s in sequences}
        self.label = label

    def __repr__(self) -> str:
        return f"SequenceList({self.label!r}, sequences={len(self)})"
