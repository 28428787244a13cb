"""Training clips: Hide-and-Seek, static-image clip synthesis, video clip sampling, Datasets.

Static pre-training (STM §3.4, KMN §3.3) turns one image + instance mask into a 3-frame clip.
Every frame gets its own geometry — rotation, scale, shear, a random resized crop — and the clip
one horizontal flip (a per-frame flip would make the object jump to its mirror image, which no
video does). The geometry of a frame is ONE composed 2×3 matrix (affine about the image centre,
then flip, then crop + resize to the training size) applied by a single ``cv2.warpAffine`` to the
image (bilinear) and to the mask (nearest): image and mask are aligned by construction.
Colour jitter (brightness, contrast, saturation, hue) is drawn per frame.

Hide-and-Seek (KMN §3.3). The crop is split into ``grid × grid`` cells — 24 × 24 at 384², i.e.
one cell per key-feature position at stride 16; the mini profile uses 12 at 192². Cell edges
follow ``np.array_split``: when the side ``n`` is not divisible by ``grid`` the first ``n % grid``
cells are one pixel larger (:func:`cell_edges`). Each cell is hidden independently with
probability ``p``: its pixels become ``fill`` — the backbone's input-normalisation mean
(:func:`kmnlib.model.backbones.input_normalisation`), which the network's normalisation maps to
exactly 0, so a hidden cell is "nothing" to it, as Hide-and-Seek fills with the data mean — and its
mask pixels background, so
the object boundaries created by hiding are clean straight cuts. ``p`` ramps from 0 to 0.5 over
pre-training (:func:`has_probability`).

Which frames are hidden — all of them, each with its own independently drawn cells. The
paper hides patches in the synthesised clip so that the straight boundaries created by hiding
become segmentation targets; hiding only the query frames would teach that, but hiding the
reference frame too means the memory also holds objects with cut-off parts, and a part hidden
in frame 0 but visible in frame 1 (or vice versa) is exactly the occlusion / re-appearance case
that memory matching must handle. The one constraint: frame 0 is the reference whose mask is
given, so every chosen object must keep at least one pixel there. Frame 0's cells are re-drawn
up to ``AugmentConfig.hide_tries`` times until that holds; if it never does (only possible for
tiny objects or p near 1), frame 0 is left unhidden.

Objects. Up to ``max_objects`` (3, as STM trains) instance ids are chosen at random among those
visible in frame 0 with at least ``min_object_fraction`` of the crop area, relabelled 1..K in
the chosen order, every other instance (and void, 255) becomes background; the same mapping is
used for every frame. If frame 0 shows no object, its geometry is re-drawn (``crop_tries``).

Video clips (main training). Three frames in time order ``f0 < f1 < f2`` from one video with
``f1 - f0`` and ``f2 - f1`` each uniform in ``[1, g]``, ``g = max(1, max_gap)``, where
``max_gap`` ramps from 0 to 25 (:func:`max_gap`). Clamp to the video: ``g`` is reduced to
``(T - 1) // (n_frames - 1)`` so that the clip always fits a ``T``-frame video; then ``f0`` is
uniform over the starts that fit. For readers with unannotated frames (YouTube-VOS) the indices
count annotated frames only. Geometry: one affine + flip + crop per clip plus a mild per-frame
perturbation (rotation, scale, shift); colour jitter per frame. A clip whose reference frame
shows no object is re-drawn (``clip_tries``), then a ``ValueError`` names the sequence.

Datasets. :class:`StaticClipDataset` and :class:`VideoClipDataset` are map-style and
deterministic: item ``index`` is drawn with ``np.random.default_rng([seed, index])`` and belongs
to global training step ``index // batch_size`` (that step drives the ramps). Iterating a
``DataLoader(ds, batch_size=B, sampler=range(start * B, total * B))`` therefore yields the same
batches for any number of workers and after a resume from ``start``. Images (sequences) are
visited in a fresh seeded permutation per pass over the data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import cv2
import numpy as np
import torch

from kmnlib.config import AugmentConfig, StageConfig

RGB = tuple[float, float, float]
from kmnlib.data.masks import VOID


class NoObjectError(ValueError):
    """The mask (after augmentation) shows no object in the reference frame."""


# --------------------------------------------------------------------------------------- ramps
def _progress(step: int, total: int, ramp_fraction: float) -> float:
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction}")
    return min(1.0, step / (ramp_fraction * total))


def has_probability(step: int, total: int, p_start: float, p_end: float,
                    ramp_fraction: float) -> float:
    """Hide-and-Seek probability at ``step``: linear from ``p_start`` (step 0) to ``p_end``
    (reached at ``ramp_fraction * total`` and held after)."""
    return p_start + (p_end - p_start) * _progress(step, total, ramp_fraction)


def max_gap(step: int, total: int, start: int, end: int, ramp_fraction: float) -> int:
    """Maximum frame gap at ``step``: linear from ``start`` to ``end`` over
    ``ramp_fraction * total`` steps, rounded half up (so it is non-decreasing in ``step``)."""
    return int(math.floor(start + (end - start) * _progress(step, total, ramp_fraction) + 0.5))


# ------------------------------------------------------------------------------ Hide-and-Seek
def cell_edges(n: int, grid: int) -> np.ndarray:
    """Pixel edges (grid+1,) of ``grid`` cells over ``n`` pixels, ``np.array_split`` style:
    the first ``n % grid`` cells are one pixel larger."""
    if grid < 1 or n < grid:
        raise ValueError(f"cannot split {n} pixels into {grid} grid cells")
    sizes = np.full(grid, n // grid, dtype=np.int64)
    sizes[: n % grid] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def hidden_pixels(hidden: np.ndarray, height: int, width: int) -> np.ndarray:
    """Expand a boolean (grid, grid) cell map to a boolean (height, width) pixel map."""
    rows = np.diff(cell_edges(height, hidden.shape[0]))
    cols = np.diff(cell_edges(width, hidden.shape[1]))
    return np.repeat(np.repeat(hidden, rows, axis=0), cols, axis=1)


def check_image(image: np.ndarray, what: str = "image") -> None:
    """An RGB image: uint8 (H,W,3), or float (H,W,3) finite in [0,1] (``ValueError`` otherwise)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (H,W,3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be (H,W,3), got shape {image.shape}")
    if image.dtype == np.uint8:
        return
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 or float in [0,1], got dtype {image.dtype} "
                         f"(16-bit images: convert to 8 bits or scale to [0,1] first)")
    if not np.isfinite(image).all():
        raise ValueError(f"{what} holds NaN or inf values")
    if image.size and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"{what} is float but not in [0,1] (range {image.min():g}..{image.max():g});"
                         f" pass uint8 or divide by 255")


def check_fill(fill: Any) -> None:
    """The fill colour: three finite values in [0,1]."""
    values = np.asarray(fill, dtype=np.float64) if np.ndim(fill) == 1 else None
    if values is None or values.shape != (3,) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"fill must be an RGB triple in [0,1], got {fill!r}")


def _as_float_image(image: np.ndarray) -> np.ndarray:
    check_image(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=True)


def hide_and_seek(image: np.ndarray, mask: np.ndarray, *, grid: int, p: float,
                  rng: np.random.Generator, fill: RGB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hide each of ``grid × grid`` cells with probability ``p``.

    ``image``: (H,W,3) uint8 or float in [0,1]; ``mask``: integer (H,W). Returns new arrays
    ``(image float32 (H,W,3) in [0,1], mask (H,W) same dtype, hidden bool (grid,grid))``:
    hidden cells are ``fill`` (RGB in [0,1]) in the image and 0 in the mask. Cells follow
    :func:`cell_edges`, so H and W need not be divisible by ``grid``.
    """
    if not isinstance(grid, (int, np.integer)) or isinstance(grid, bool) or grid < 1:
        raise ValueError(f"hide_and_seek: grid must be an integer >= 1 (cells per side), "
                         f"got {grid!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"hiding probability must be in [0, 1], got {p}")
    check_fill(fill)
    out = _as_float_image(image)
    if mask.shape != out.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {out.shape[:2]}")
    if grid > min(out.shape[:2]):
        raise ValueError(f"hide_and_seek: grid={grid} cells per side exceeds the image's shorter "
                         f"side ({min(out.shape[:2])} pixels); pass a grid of at most that")
    hidden = rng.random((grid, grid)) < p  # p=0 hides nothing, p=1 everything ([0,1) draws)
    pix = hidden_pixels(hidden, *out.shape[:2])
    out[pix] = fill
    mask = mask.copy()
    mask[pix] = 0
    return out, mask, hidden


# ----------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Geometry:
    """Parameters of one frame's warp (angles in radians, crop window in source pixels)."""

    angle: float
    scale: float
    shear_x: float
    shear_y: float
    flip: bool
    x0: float  # left edge of the crop window (pixel-edge coordinates: pixel i spans i±0.5)
    y0: float
    crop_w: float
    crop_h: float
    shift_x: float = 0.0
    shift_y: float = 0.0


def _draw_geometry(rng: np.random.Generator, hw: tuple[int, int], aug: AugmentConfig,
                   flip: bool) -> _Geometry:
    h, w = hw
    short = min(h, w)
    area = rng.uniform(*aug.crop_area)
    aspect = math.exp(rng.uniform(math.log(aug.crop_aspect[0]), math.log(aug.crop_aspect[1])))
    crop_w = min(w, short * math.sqrt(area * aspect))
    crop_h = min(h, short * math.sqrt(area / aspect))
    return _Geometry(
        angle=math.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg)),
        scale=rng.uniform(*aug.scale_range),
        shear_x=math.radians(rng.uniform(-aug.shear_deg, aug.shear_deg)),
        shear_y=math.radians(rng.uniform(-aug.shear_deg, aug.shear_deg)),
        flip=flip,
        x0=rng.uniform(0.0, w - crop_w) - 0.5,
        y0=rng.uniform(0.0, h - crop_h) - 0.5,
        crop_w=crop_w, crop_h=crop_h,
    )


def _jitter_geometry(g: _Geometry, rng: np.random.Generator, aug: AugmentConfig) -> _Geometry:
    """A mild per-frame perturbation of a per-clip geometry (video clips)."""
    r = math.radians(aug.video_rotation_jitter_deg)
    s = aug.video_scale_jitter
    t = aug.video_shift_jitter
    return _Geometry(
        angle=g.angle + rng.uniform(-r, r), scale=g.scale * (1.0 + rng.uniform(-s, s)),
        shear_x=g.shear_x, shear_y=g.shear_y, flip=g.flip, x0=g.x0, y0=g.y0,
        crop_w=g.crop_w, crop_h=g.crop_h,
        shift_x=rng.uniform(-t, t) * g.crop_w, shift_y=rng.uniform(-t, t) * g.crop_h)


def _warp_matrix(g: _Geometry, hw: tuple[int, int], size: int) -> np.ndarray:
    """The 2×3 source→output matrix: affine about the centre, flip, crop + resize."""
    h, w = hw
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    rot = np.array([[math.cos(g.angle), -math.sin(g.angle)],
                    [math.sin(g.angle), math.cos(g.angle)]])
    shear = np.array([[1.0, math.tan(g.shear_x)], [math.tan(g.shear_y), 1.0]])
    lin = rot @ shear * g.scale
    affine = np.eye(3)
    affine[:2, :2] = lin
    affine[:2, 2] = np.array([cx + g.shift_x, cy + g.shift_y]) - lin @ np.array([cx, cy])
    flip = np.eye(3)
    if g.flip:
        flip[0, 0], flip[0, 2] = -1.0, 2.0 * cx
    sx, sy = size / g.crop_w, size / g.crop_h
    # Pixel-edge convention: the window's left edge x0 maps to output edge -0.5.
    crop = np.array([[sx, 0.0, -0.5 - g.x0 * sx], [0.0, sy, -0.5 - g.y0 * sy], [0, 0, 1.0]])
    return (crop @ flip @ affine)[:2]


def _warp_image(image: np.ndarray, m: np.ndarray, size: int, fill: RGB) -> np.ndarray:
    """Warp an image; pixels from outside it take ``fill`` (RGB in [0,1])."""
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(c * scale for c in fill))
    return np.multiply(out, np.float32(1 / 255), dtype=np.float32) if out.dtype == np.uint8 else out


def _warp_mask(mask: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _mask_for_warp(mask: np.ndarray, image_hw: tuple[int, ...]) -> np.ndarray:
    if mask.ndim != 2 or mask.shape != tuple(image_hw):
        raise ValueError(f"mask shape {mask.shape} does not match image shape {tuple(image_hw)}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be an integer label map, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise ValueError("mask ids must be in 0..65535")
    # cv2 warps 8/16-bit integers, not int32/int64.
    return mask.astype(np.uint8 if mask.size == 0 or mask.max() <= 255 else np.uint16)


_LUMA = np.array([0.299, 0.587, 0.114])
# RGB → YIQ: Y is luma, (I, Q) the chroma plane; a hue shift is a rotation of that plane.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def color_matrix(rng: np.random.Generator, aug: AugmentConfig, mean_rgb: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random brightness, contrast, saturation and hue as one affine colour map ``x ↦ Ax + b``.

    Brightness scales, contrast blends towards the image's mean luma, saturation towards each
    pixel's luma, hue rotates the YIQ chroma plane (the linear form of a hue shift). All four are
    linear, so a frame is jittered in one pass; unlike torchvision there is no clipping between
    the steps, only at the end.
    """
    eye = np.eye(3)
    bright = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
    con = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    sat = rng.uniform(1 - aug.saturation, 1 + aug.saturation)
    theta = 2 * math.pi * rng.uniform(-aug.hue, aug.hue)
    rot = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)],
                    [0, math.sin(theta), math.cos(theta)]])
    hue = np.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ
    saturation = sat * eye + (1 - sat) * np.outer(np.ones(3), _LUMA)
    a = hue @ saturation @ (con * bright * eye)
    # contrast: x ↦ con·x + (1 - con)·mean luma of the brightened image; then the linear maps.
    b = hue @ saturation @ np.full(3, (1 - con) * bright * float(_LUMA @ mean_rgb))
    return a, b


def color_jitter(image: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Colour-jitter a float32 (H,W,3) RGB image in [0,1] (see :func:`color_matrix`)."""
    a, b = color_matrix(rng, aug, np.asarray(cv2.mean(image)[:3]))
    out = cv2.transform(image, np.hstack([a, b[:, None]]).astype(np.float32))
    return np.clip(out, 0.0, 1.0, out=out)


# ----------------------------------------------------------------------------------- objects
def _object_counts(mask: np.ndarray) -> np.ndarray:
    """Pixel count per id, background and void zeroed."""
    counts = np.bincount(mask.ravel(), minlength=VOID + 1)
    counts[0] = counts[VOID] = 0
    return counts


def _choose_objects(mask0: np.ndarray, min_pixels: int, max_objects: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Random subset (≤ max_objects) of the instance ids with ≥ min_pixels in mask0."""
    counts = _object_counts(mask0)
    ids = np.flatnonzero(counts >= max(1, min_pixels))
    if ids.size == 0:
        return ids
    return rng.choice(ids, size=min(max_objects, ids.size), replace=False)


def _relabel(masks: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map ids[k] → k+1, everything else (other instances, void) → 0."""
    lut = np.zeros(int(max(masks.max(initial=0), ids.max(initial=0))) + 1, dtype=np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[masks]


def _pick_reference(mask: np.ndarray, matrices_for_try: Any, size: int, min_pixels: int,
                    tries: int) -> tuple[Any, np.ndarray, int]:
    """Draw geometries until frame 0 shows an object of ≥ min_pixels; fall back to the try
    with the largest visible object (≥ 1 pixel). Returns (draw, warped mask 0, min pixels)."""
    best: tuple[int, Any, np.ndarray] | None = None
    for _ in range(max(1, tries)):
        draw = matrices_for_try()
        m0 = _warp_mask(mask, draw[0], size)
        counts = _object_counts(m0)
        largest = int(counts.max(initial=0))
        if largest >= min_pixels:
            return draw, m0, min_pixels
        if best is None or largest > best[0]:
            best = (largest, draw, m0)
    assert best is not None
    if best[0] == 0:
        raise NoObjectError("no object visible in the reference frame")
    return best[1], best[2], 1


def _hide_frames(frames: np.ndarray, masks: np.ndarray, *, grid: int, p: float,
                 rng: np.random.Generator, tries: int, fill: RGB) -> np.ndarray:
    """Hide-and-Seek on every frame, in place (the draws of :func:`hide_and_seek`); frame 0's
    cells are re-drawn until every object keeps a pixel, else frame 0 stays unhidden."""
    n, h, w = masks.shape
    hidden = np.zeros((n, grid, grid), dtype=bool)
    k = int(masks[0].max(initial=0))
    for t in range(n):
        for _ in range(max(1, tries) if t == 0 else 1):
            hid = rng.random((grid, grid)) < p
            pix = hidden_pixels(hid, h, w)
            if t == 0 and not (np.bincount(masks[0][~pix], minlength=k + 1)[1:k + 1] > 0).all():
                continue  # an object of the reference frame would vanish: re-draw
            frames[t][pix] = fill
            masks[t][pix] = 0
            hidden[t] = hid
            break
    return hidden


# ----------------------------------------------------------------------------- static clips
def synthesize_clip(image: np.ndarray, mask: np.ndarray, *, size: int, n_frames: int,
                    hide_p: float, rng: np.random.Generator, grid: int, max_objects: int,
                    aug: AugmentConfig, fill: RGB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training clip from one static image + instance mask (see the module docstring).

    ``image``: uint8 (H,W,3) or float in [0,1]; ``mask``: integer (H,W) ids, 0 = background,
    255 = void. Returns ``(frames float32 (n,size,size,3) in [0,1], masks int64
    (n,size,size) ids 0..K, hidden bool (n,grid,grid))`` with 1 ≤ K ≤ ``max_objects`` and every
    id 1..K present in frame 0. Raises :class:`NoObjectError` if no crop shows an object.
    The hiding draws come after every geometry and colour draw, so the same rng state with
    ``hide_p=0`` gives the same clip without the hidden cells (``kmnlib.train`` relies on it).
    """
    if not 0.0 <= hide_p <= 1.0:
        raise ValueError(f"hiding probability must be in [0, 1], got {hide_p}")
    check_image(image)
    check_fill(fill)
    for name, value in (("size", size), ("n_frames", n_frames), ("grid", grid),
                        ("max_objects", max_objects)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    mask = _mask_for_warp(mask, image.shape[:2])
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
    hw = image.shape[:2]
    flip = bool(rng.random() < aug.flip_p)
    min_pixels = max(1, int(round(aug.min_object_fraction * size * size)))

    def draw() -> list[np.ndarray]:
        return [_warp_matrix(_draw_geometry(rng, hw, aug, flip), hw, size)]

    (m_first,), mask0, min_pixels = _pick_reference(mask, draw, size, min_pixels, aug.crop_tries)
    ids = _choose_objects(mask0, min_pixels, max_objects, rng)
    mats = [m_first] + [draw()[0] for _ in range(n_frames - 1)]
    frames = np.stack([color_jitter(_warp_image(image, m, size, fill), rng, aug) for m in mats])
    masks = _relabel(np.stack([mask0] + [_warp_mask(mask, m, size) for m in mats[1:]]), ids)
    if hide_p > 0:
        hidden = _hide_frames(frames, masks, grid=grid, p=hide_p, rng=rng, tries=aug.hide_tries,
                              fill=fill)
    else:
        cell_edges(size, grid)  # same validation as with hiding
        hidden = np.zeros((n_frames, grid, grid), dtype=bool)
    return frames, masks, hidden


# ------------------------------------------------------------------------------ video clips
class SequenceLike(Protocol):
    name: str

    def load_frames(self, idx: Sequence[int] | None = None) -> np.ndarray: ...
    def load_masks(self, idx: Sequence[int] | None = None) -> np.ndarray: ...
    def __len__(self) -> int: ...


def sample_frame_indices(length: int, n_frames: int, gap: int,
                         rng: np.random.Generator) -> list[int]:
    """``n_frames`` increasing indices in ``[0, length)`` with consecutive differences uniform in
    ``[1, g]``, ``g = min(max(1, gap), (length-1) // (n_frames-1))`` (clamped to fit)."""
    if length < n_frames:
        raise ValueError(f"need at least {n_frames} frames, got {length}")
    if n_frames == 1:
        return [int(rng.integers(length))]
    g = min(max(1, gap), (length - 1) // (n_frames - 1))
    steps = rng.integers(1, g + 1, size=n_frames - 1)
    start = int(rng.integers(0, length - int(steps.sum())))
    return [start] + (start + np.cumsum(steps)).tolist()


def _annotated_indices(seq: SequenceLike) -> list[int]:
    paths = getattr(seq, "mask_paths", None)
    if paths is None:
        return list(range(len(seq)))
    return [i for i, p in enumerate(paths) if p is not None]


def sample_video_clip(seq: SequenceLike, *, size: int, gap: int, rng: np.random.Generator,
                      n_frames: int, max_objects: int, aug: AugmentConfig, fill: RGB
                      ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A training clip from a video (see the module docstring).

    Returns ``(frames float32 (n,size,size,3) in [0,1], masks int64 (n,size,size) ids 0..K,
    frame indices)``; every id 1..K is visible in frame 0. ``ValueError`` naming the sequence
    when it is too short or no draw shows an object in the reference frame.
    """
    name = getattr(seq, "name", repr(seq))
    usable = _annotated_indices(seq)
    if len(usable) < n_frames:
        raise ValueError(f"{name}: {len(usable)} annotated frames, a clip needs {n_frames}")
    min_pixels = max(1, int(round(aug.min_object_fraction * size * size)))
    for _ in range(max(1, aug.clip_tries)):
        idx = [usable[i] for i in sample_frame_indices(len(usable), n_frames, gap, rng)]
        raw = seq.load_masks(idx)
        if raw.shape[0] != n_frames or raw.ndim != 3:
            raise ValueError(f"{name}: load_masks returned shape {raw.shape} for {n_frames} frames")
        raw = raw.astype(np.uint8 if raw.max(initial=0) <= 255 else np.uint16)
        hw = raw.shape[1:]
        base = _draw_geometry(rng, hw, aug, flip=bool(rng.random() < aug.flip_p))
        mats = [_warp_matrix(_jitter_geometry(base, rng, aug), hw, size) for _ in idx]
        masks = np.stack([_warp_mask(m, a, size) for m, a in zip(raw, mats)])
        ids = _choose_objects(masks[0], min_pixels, max_objects, rng)
        if ids.size == 0:
            continue
        frames_raw = seq.load_frames(idx)
        if frames_raw.shape[:3] != raw.shape:
            raise ValueError(f"{name}: frames {frames_raw.shape} and masks {raw.shape} differ")
        frames = np.stack([color_jitter(_warp_image(f, a, size, fill), rng, aug)
                           for f, a in zip(frames_raw, mats)])
        return frames, _relabel(masks, ids), idx
    raise ValueError(f"{name}: no object of >= {min_pixels} px in the reference frame after "
                     f"{aug.clip_tries} clip draws (empty annotations?)")


# ---------------------------------------------------------------------------------- datasets
def _epoch_choice(index: int, n: int, seed: int, cache: dict[int, np.ndarray]) -> int:
    """Item ``index`` → element of a seeded permutation of range(n), a new one per pass."""
    epoch, pos = divmod(index, n)
    if epoch not in cache:
        cache.clear()  # one pass at a time; keeps worker memory flat
        cache[epoch] = np.random.default_rng([seed, epoch, 1]).permutation(n)
    return int(cache[epoch][pos])


def _to_item(frames: np.ndarray, masks: np.ndarray, hidden: np.ndarray, **extra: Any
             ) -> dict[str, Any]:
    return dict(frames=torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
                masks=torch.from_numpy(masks.astype(np.int64)),
                num_objects=int(masks.max()), hidden=torch.from_numpy(hidden), **extra)


class StaticClipDataset(torch.utils.data.Dataset):
    """Hide-and-Seek clips from static image folders (``len(f)``, ``f[i] -> (image, labels,
    name)``), drawn as pre-training ``stage`` says (crop size, grid, ramp, objects, augmentation,
    ``iterations`` × ``batch_size`` items). Item ``index`` belongs to step ``index // batch_size``;
    see the module docstring. ``hide=False`` is the no-HaS arm (p = 0 throughout).

    Items: ``frames`` float (T,3,S,S) in [0,1], ``masks`` long (T,S,S) ids 0..K, ``num_objects``
    K, ``hidden`` bool (T,grid,grid), ``name`` (folder root / image name).
    """

    def __init__(self, folders: Sequence[Any], stage: StageConfig, *, hide: bool, seed: int,
                 fill: RGB) -> None:
        self.folders = list(folders)
        self.sizes = np.array([len(f) for f in self.folders], dtype=np.int64)
        if self.sizes.sum() == 0:
            raise ValueError(f"no images in the static folders {[_root(f) for f in self.folders]}")
        cell_edges(stage.crop_size, stage.hide_grid)  # fail early on an impossible grid
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.stage, self.hide, self.seed, self.fill = stage, hide, seed, fill
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.stage.iterations * self.stage.batch_size

    def hide_p(self, index: int) -> float:
        """The Hide-and-Seek probability used for item ``index``."""
        if not self.hide:
            return 0.0
        st = self.stage
        return has_probability(index // st.batch_size, st.iterations, st.hide_p_start,
                               st.hide_p_end, st.ramp_fraction)

    def _load(self, flat: int) -> tuple[np.ndarray, np.ndarray, str]:
        f = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        image, labels, name = self.folders[f][flat - int(self.offsets[f])]
        return image, labels, f"{_root(self.folders[f])}/{name}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            raise IndexError(f"negative clip index {index}")
        st = self.stage
        rng = np.random.default_rng([self.seed, index])
        total = int(self.offsets[-1])
        flat = _epoch_choice(index, total, self.seed, self._perm)
        p = self.hide_p(index)
        tried = []
        for _ in range(10):  # images without a visible object: draw another image
            image, labels, name = self._load(flat)
            try:
                frames, masks, hidden = synthesize_clip(
                    image, labels, size=st.crop_size, n_frames=st.n_frames, hide_p=p, rng=rng,
                    grid=st.hide_grid, max_objects=st.max_objects, aug=st.augment, fill=self.fill)
            except NoObjectError:
                tried.append(name)
                flat = int(rng.integers(total))
                continue
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
            return _to_item(frames, masks, hidden, name=name)
        raise ValueError(f"{tried[0]}: no object visible in any crop; also failed: {tried[1:]}")


class VideoClipDataset(torch.utils.data.Dataset):
    """Main-training clips from videos (:class:`kmnlib.data.video.VideoSequence`-like), drawn as
    the video ``stage`` says. Item ``index`` belongs to step ``index // batch_size``, whose
    :func:`max_gap` bounds the gaps.

    Items as :class:`StaticClipDataset` (``hidden`` all False on the stage's ``hide_grid``) plus
    ``frame_indices`` long (T,).
    """

    def __init__(self, sequences: Sequence[SequenceLike], stage: StageConfig, *, seed: int,
                 fill: RGB) -> None:
        self.sequences = list(sequences)
        if not self.sequences:
            raise ValueError("VideoClipDataset needs at least one sequence")
        self.stage, self.seed, self.fill = stage, seed, fill
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.stage.iterations * self.stage.batch_size

    def max_gap(self, index: int) -> int:
        """The maximum frame gap used for item ``index``."""
        st = self.stage
        return max_gap(index // st.batch_size, st.iterations, st.gap_start, st.gap_end,
                       st.ramp_fraction)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            raise IndexError(f"negative clip index {index}")
        st = self.stage
        rng = np.random.default_rng([self.seed, index])
        seq = self.sequences[_epoch_choice(index, len(self.sequences), self.seed, self._perm)]
        frames, masks, idx = sample_video_clip(
            seq, size=st.crop_size, gap=self.max_gap(index), rng=rng, n_frames=st.n_frames,
            max_objects=st.max_objects, aug=st.augment, fill=self.fill)
        hidden = np.zeros((st.n_frames, st.hide_grid, st.hide_grid), dtype=bool)
        return _to_item(frames, masks, hidden, name=getattr(seq, "name", repr(seq)),
                        frame_indices=torch.tensor(idx, dtype=torch.long))


def _root(folder: Any) -> str:
    return str(getattr(folder, "root", folder))


def collate_clips(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clip items; pad objects to the batch's largest K.

    Returns ``frames`` (B,T,3,S,S), ``masks`` (B,T,S,S), ``hidden`` (B,T,g,g), ``num_objects``
    long (B,), ``obj_valid`` bool (B,Kmax) (True for k < K_b), ``obj_masks`` float
    (B,T,Kmax,S,S) one-hot of ids 1..Kmax (all-zero for padded objects), ``name`` list and,
    for video clips, ``frame_indices`` (B,T).
    """
    if not batch:
        raise ValueError("collate_clips got an empty batch")
    masks = torch.stack([b["masks"] for b in batch])
    k = torch.tensor([b["num_objects"] for b in batch], dtype=torch.long)
    k_max = int(k.max())
    ids = torch.arange(1, k_max + 1).view(1, 1, k_max, 1, 1)
    out = dict(frames=torch.stack([b["frames"] for b in batch]), masks=masks,
               hidden=torch.stack([b["hidden"] for b in batch]), num_objects=k,
               obj_valid=torch.arange(k_max).view(1, -1) < k.view(-1, 1),
               obj_masks=(masks.unsqueeze(2) == ids).float(),
               name=[b.get("name", "") for b in batch])
    if all("frame_indices" in b for b in batch):
        out["frame_indices"] = torch.stack([b["frame_indices"] for b in batch])
    return out
