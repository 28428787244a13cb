"""Mask I/O: DAVIS-style label maps as PNG (L-mode 0/255 binary or palette ids, 255 = void)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from kmnlib.files import atomic_write

VOID = 255
_VOID_RGB = [224, 224, 192]  # the DAVIS/PASCAL palette's colour of id 255


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

    Palette ('P') images keep their indices. Grey ('L'/'1', 16-bit) images are read as binary
    masks (any value > 127 → object 1) when ``binary`` is True or the file only holds {0,255}
    (16-bit: or {0,65535}); otherwise their values are taken as ids. With ``binary=None`` a palette
    image holding only 0 and 255, 255 not drawn in the DAVIS void colour, is such a 0/255 mask
    too. RGB masks are refused (ambiguous colour→id mapping) unless ``binary`` is True: saliency
    sets ship some binary masks as RGB/JPEG, read as grey; otherwise JPEG content is refused
    whatever the file's name (its compression changes ids). DAVIS-2016 ground truth has its own
    stricter reader, :func:`read_davis2016_mask`.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format
            palette = im.getpalette() if im.mode == "P" else None
            if binary and im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                im = im.convert("L")
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask file not found") from None
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(f"{path}: cannot read mask image ({exc})") from exc
    if not binary:  # ids are read exactly: a lossy file cannot hold them (thresholding can cope)
        _refuse_lossy(path, fmt)
    if mode == "P":
        if binary is None and _grey_palette_binary(arr, palette):
            return (arr != 0).astype(np.uint8)
        return arr.astype(np.uint8)
    if mode == "1":
        return arr.astype(np.uint8)
    if mode in ("L", "I", "I;16"):
        arr = arr.astype(np.int64)
        if binary is None:
            binary = bool(((arr == 0) | (arr == 255)).all())  # cheaper than np.unique
            if not binary and mode != "L" and arr.max() == 65535:  # 16-bit 0/65535 binary mask
                binary = bool(((arr == 0) | (arr == 65535)).all())
        if binary:
            return (arr > 127).astype(np.uint8)
        if arr.max() > 255:
            raise ValueError(f"{path}: mask ids exceed 255")
        return arr.astype(np.uint8)
    raise ValueError(f"{path}: unsupported mask mode {mode!r} (expected palette 'P' or grey 'L')")


def _refuse_lossy(path: Path, fmt: str | None) -> None:
    """A mask whose content is JPEG (whatever its name) has compression noise in its values."""
    if fmt in ("JPEG", "MPO"):
        named = ("" if path.suffix.lower() in (".jpg", ".jpeg")
                 else f" although named {path.suffix}")
        raise ValueError(f"{path}: its content is JPEG{named}, whose compression changes mask "
                         f"values; save masks as PNG (palette ids, or 0/255 grey) from the "
                         f"original label maps")


def _grey_palette_binary(arr: np.ndarray, palette: list[int] | None) -> bool:
    """A palette mask holding only indices 0 and 255 with 255 *not* drawn in the DAVIS void colour:
    a 0/255 grey mask saved as palette (``Image.convert("P")``), so 255 is the object."""
    if list((palette or [])[3 * VOID:3 * VOID + 3]) == _VOID_RGB:
        return False
    return [v for v in _present(arr) if v != 0] == [VOID]


def _present(arr: np.ndarray) -> list[int]:
    """The distinct values of an integer array, ascending (bincount: faster than np.unique)."""
    if arr.size == 0:
        return []
    if arr.dtype in (np.bool_, np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(arr.ravel())).tolist()
    return np.unique(arr).tolist()


def _shown(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (" …" if len(values) > 8 else "")


def read_davis2016_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a DAVIS-2016 mask as uint8 (H,W): 0 background, 1 the object, 255 void.

    One rule for every encoding, decided by the values the file holds:

    * grey (8-bit ``L``, 16-bit, 1-bit, or RGB with equal channels): a binary mask — background 0
      and one object value, 1 or 255 (or 65535 in 16-bit): 0/255 is the official encoding, 0/1 a
      label map. Any other set of values (e.g. 0/1/255, or grey edges of a resized mask) is
      refused, naming the file and the values found.
    * palette (``P``): ids as DAVIS-2017 stores them: 0 background, 255 void, every other id the
      object (a DAVIS-2017 annotation collapses into one object, as the 2016 protocol does).
      A palette mask holding only 0 and 255 whose index 255 is *not* drawn in the DAVIS void
      colour is a 0/255 mask saved as palette (``Image.convert("P")``): 255 is the object.
    * colour RGB, and JPEG content whatever the file name, are refused.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            fmt, mode = im.format, im.mode
            palette = im.getpalette() if mode == "P" else None
            arr = np.array(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask file not found") from None
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(f"{path}: cannot read mask image ({exc})") from exc
    _refuse_lossy(path, fmt)
    if mode in ("RGB", "RGBA", "LA"):
        colour = arr[..., :3] if mode != "LA" else arr[..., :1]
        if not (colour == colour[..., :1]).all():
            raise ValueError(f"{path}: colour {mode} mask; save DAVIS-2016 masks as 0/255 grey or "
                             f"palette ids (1 = object, 255 = void)")
        arr, mode = colour[..., 0], "L"
    if mode == "P":
        if _grey_palette_binary(arr, palette):
            return (arr != 0).astype(np.uint8)
        out = arr.astype(np.uint8, copy=True)
        out[(out != 0) & (out != VOID)] = 1
        return out
    values = _present(arr)
    nonzero = [v for v in values if v != 0]
    if mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
        raise ValueError(f"{path}: unsupported mask mode {mode!r} (expected palette 'P' or "
                         f"grey 'L')")
    allowed = (1, 255) if mode in ("1", "L") else (1, 255, 65535)
    if len(nonzero) > 1 or (nonzero and nonzero[0] not in allowed):
        raise ValueError(f"{path}: DAVIS-2016 grey mask holds values {_shown(values)}; expected a "
                         f"binary mask, 0 and one object value ({' or '.join(map(str, allowed))}) "
                         f"— save it as 0/255 grey, or as palette ids (1 = object, 255 = void)")
    return (arr != 0).astype(np.uint8)


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
