"""Mask I/O: DAVIS-style label maps as PNG (L-mode 0/255 binary or palette ids, 255 = void)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from kmnlib.files import atomic_write

VOID = 255


def davis_palette() -> list[int]:
    """The DAVIS/PASCAL colour palette (id → RGB), flattened to 768 ints for ``Image.putpalette``."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal.flatten().tolist()


def read_label_map(path: str | os.PathLike, *, binary: bool | None = None) -> np.ndarray:
    """Read a mask PNG as a uint8 label map (H,W): 0 = background, 1..N = objects, 255 = void.

    Palette ('P') images keep their indices. Grey ('L'/'1') images are read as binary DAVIS-2016
    masks (any value > 127 → object 1) when ``binary`` is True or the file only holds {0,255};
    otherwise their values are taken as ids. RGB masks are refused (ambiguous colour→id mapping)
    unless ``binary`` is True: saliency sets ship some binary masks as RGB/JPEG, read as grey.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if binary and im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                im = im.convert("L")
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask file not found") from None
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(f"{path}: cannot read mask image ({exc})") from exc
    if mode == "P":
        return arr.astype(np.uint8)
    if mode == "1":
        return arr.astype(np.uint8)
    if mode in ("L", "I", "I;16"):
        arr = arr.astype(np.int64)
        if binary is None:
            binary = bool(((arr == 0) | (arr == 255)).all())  # cheaper than np.unique
        if binary:
            return (arr > 127).astype(np.uint8)
        if arr.max() > 255:
            raise ValueError(f"{path}: mask ids exceed 255")
        return arr.astype(np.uint8)
    raise ValueError(f"{path}: unsupported mask mode {mode!r} (expected palette 'P' or grey 'L')")


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label map (H,W) of ids 0..254 as a DAVIS-palette PNG, atomically (temp + rename)."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{path}: label map must be 2-D, got shape {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path}: label ids must lie in 0..255")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(davis_palette())
    # zlib level 1: a palette mask still compresses to a few kB, written several times faster than
    # at the default level 6 (evaluations write every frame of every video).
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG", compress_level=1))
