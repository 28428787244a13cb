"""J, F and sequence statistics (kmnlib.metrics): edge cases, hand-derived values, and an
independent brute-force formulation of the boundary F-measure."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from kmnlib.metrics import boundary_f, jaccard, seg2bmap, sequence_stats


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------- edge cases
def test_empty_gt_and_pred_score_one():
    z = np.zeros((20, 30), bool)
    assert jaccard(z, z) == 1.0
    assert boundary_f(z, z) == 1.0


def test_only_one_side_empty():
    z = np.zeros((20, 30), bool)
    obj = _rect(z.shape, 5, 10, 5, 12)
    # Toolkit: no predicted boundary → precision 1, recall 0; no GT boundary → 0, 1; F = 0 both ways.
    assert jaccard(obj, z) == 0.0 and jaccard(z, obj) == 0.0
    assert boundary_f(obj, z) == 0.0 and boundary_f(z, obj) == 0.0


def test_full_masks():
    full = np.ones((12, 17), bool)
    z = np.zeros_like(full)
    assert jaccard(full, full) == 1.0
    # A full mask has no boundary pixel (seg2bmap only compares with neighbours inside the image),
    # so against an empty prediction both boundary maps are empty: F = 1 while J = 0, as the toolkit.
    assert not seg2bmap(full).any()
    assert boundary_f(full, full) == 1.0
    assert jaccard(full, z) == 0.0 and boundary_f(full, z) == 1.0


def test_one_pixel_objects():
    a = np.zeros((15, 15), bool)
    a[5, 5] = True
    # The boundary of one pixel is the 2x2 block ending at it (offset towards the origin).
    assert set(zip(*np.nonzero(seg2bmap(a)))) == {(4, 4), (4, 5), (5, 4), (5, 5)}
    assert jaccard(a, a) == 1.0 and boundary_f(a, a) == 1.0
    b = np.roll(a, 1, axis=1)
    assert jaccard(a, b) == 0.0
    assert boundary_f(a, b, bound_th=1) == 1.0  # every boundary pixel has a 4-neighbour match
    c = np.roll(a, 3, axis=1)
    assert boundary_f(a, c, bound_th=1) == 0.0


def test_void_pixels_are_excluded():
    gt = _rect((20, 20), 2, 8, 2, 8)            # 36 px
    void = _rect(gt.shape, 0, 20, 10, 20)       # right half is void
    pred = gt | _rect(gt.shape, 12, 18, 12, 18)  # an extra blob entirely inside void
    assert jaccard(gt, pred, void) == 1.0
    assert boundary_f(gt, pred, void) == 1.0
    assert jaccard(gt, pred) == pytest.approx(36 / 72)
    # Void over part of the object: 36 - 12 = 24 valid GT px, prediction covers 12 of them.
    void2 = _rect(gt.shape, 2, 4, 2, 8)          # rows 2-3 of the object (12 px)
    pred2 = _rect(gt.shape, 2, 6, 2, 8)          # rows 2-5 (24 px); valid part rows 4-5 = 12 px
    assert jaccard(gt, pred2, void2) == pytest.approx(12 / 24)


def test_non_square_images_boundary_orientation():
    # An object touching the right edge has no boundary on the last column, one touching the
    # bottom edge none on the last row (the toolkit's width/height handling).
    h, w = 9, 14
    right = _rect((h, w), 3, 6, 8, w)
    b = seg2bmap(right)
    assert not b[3:5, -1].any() and b[2, -1] and b[5, -1]
    bottom = _rect((h, w), 5, h, 4, 7)
    b = seg2bmap(bottom)
    assert not b[-1, 4:6].any() and b[-1, 3] and b[-1, 6]


def test_stack_matches_single_frames():
    rng = np.random.default_rng(0)
    gt = rng.random((4, 24, 31)) > 0.6
    pred = rng.random((4, 24, 31)) > 0.6
    void = rng.random((4, 24, 31)) > 0.9
    j, f = jaccard(gt, pred, void), boundary_f(gt, pred, void)
    assert j.shape == (4,) and f.shape == (4,) and j.dtype == np.float64
    for t in range(4):
        assert isinstance(jaccard(gt[t], pred[t], void[t]), float)
        assert j[t] == jaccard(gt[t], pred[t], void[t])
        assert f[t] == boundary_f(gt[t], pred[t], void[t])
    # An empty frame inside a stack still gets J = 1.
    gt[2] = pred[2] = False
    assert jaccard(gt, pred)[2] == 1.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differs"):
        jaccard(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="void shape"):
        boundary_f(np.zeros((4, 5)), np.zeros((4, 5)), np.zeros((3, 5)))


# ------------------------------------------------------------------------- hand-derived values
def test_rectangle_overlap_iou():
    gt = _rect((30, 30), 0, 10, 0, 10)
    pred = _rect((30, 30), 5, 15, 5, 15)
    assert jaccard(gt, pred) == pytest.approx(25 / 175, abs=1e-15)


@pytest.mark.parametrize("shift,expected", [(8, 1.0), (9, 0.0)])
def test_relative_radius_is_ceil_of_diagonal_fraction(shift, expected):
    # 480x854: ceil(0.008 * 979.6) = 8 px. A vertical edge moved by `shift` columns matches
    # entirely within 8 px and not at all beyond.
    gt = _rect((480, 854), 0, 480, 0, 300)
    pred = _rect((480, 854), 0, 480, 0, 300 + shift)
    assert boundary_f(gt, pred) == expected


@pytest.mark.parametrize("radius", [1, 2, 5])
def test_bound_th_in_pixels(radius):
    gt = _rect((40, 60), 0, 40, 0, 20)
    assert boundary_f(gt, _rect(gt.shape, 0, 40, 0, 20 + radius), bound_th=radius) == 1.0
    assert boundary_f(gt, _rect(gt.shape, 0, 40, 0, 21 + radius), bound_th=radius) == 0.0


def test_shifted_square_boundary_f():
    # A 10x10 square: its boundary is the outline of an 11x11 block (rows 9 and 19, cols 9 and 19),
    # 40 px. Shift it 2 px right, match within the radius-1 cross:
    #   top/bottom rows: 10 of 11 matched each (all but the left-most pixel);
    #   left column (9 interior px): 0; right column (9 interior px): only the two next to the
    #   shifted square's top and bottom rows.  → 22 / 40 on both sides (symmetric), F = 0.55.
    gt = _rect((40, 40), 10, 20, 10, 20)
    pred = _rect((40, 40), 10, 20, 12, 22)
    assert seg2bmap(gt).sum() == 40
    assert boundary_f(gt, pred, bound_th=1) == pytest.approx(22 / 40, abs=1e-15)


# ------------------------------------------------------ independent brute-force cross-check of F
def _boundary_brute(seg):
    """A pixel is boundary when it differs from an existing E, S or SE neighbour (loops)."""
    h, w = seg.shape
    b = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                yy, xx = y + dy, x + dx
                if yy < h and xx < w and seg[y, x] != seg[yy, xx]:
                    b[y, x] = True
    return b


def _f_brute(gt, pred, void, radius):
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    bg, bp = _boundary_brute(gt), _boundary_brute(pred)
    ng, npred = bg.sum(), bp.sum()
    if ng == 0 and npred == 0:
        return 1.0
    if ng == 0 or npred == 0:
        return 0.0
    # Euclidean distance to the nearest boundary pixel of the other map; skimage's disk(r) holds the
    # offsets with dx² + dy² <= r², i.e. distance <= r.
    d_to_p = ndimage.distance_transform_edt(~bp)
    d_to_g = ndimage.distance_transform_edt(~bg)
    recall = (d_to_p[bg] <= radius).sum() / ng
    precision = (d_to_g[bp] <= radius).sum() / npred
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _blobs(rng, shape, n):
    m = np.zeros(shape, bool)
    for _ in range(n):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        ry, rx = rng.integers(1, 6, size=2)
        m[max(0, y - ry):y + ry, max(0, x - rx):x + rx] ^= True
    return m


def test_boundary_f_matches_distance_transform_formulation():
    rng = np.random.default_rng(42)
    cases = 0
    for shape in [(17, 23), (30, 19), (25, 25)]:
        for _ in range(12):
            gt = _blobs(rng, shape, rng.integers(0, 5))
            pred = _blobs(rng, shape, rng.integers(0, 5)) if rng.random() < 0.5 else \
                ndimage.shift(gt.astype(np.uint8), rng.integers(-3, 4, size=2), order=0) > 0
            void = _blobs(rng, shape, 2) if rng.random() < 0.3 else None
            for th in (1, 2, 3, 0.05):
                radius = th if th >= 1 else math.ceil(th * math.hypot(*shape))
                want = _f_brute(gt, pred, void, radius)
                assert boundary_f(gt, pred, void, bound_th=th) == pytest.approx(want, abs=1e-12), \
                    (shape, th)
                cases += 1
    assert cases == 3 * 12 * 4


# ----------------------------------------------------------------------------- sequence stats
def test_sequence_stats_known_series():
    # n = 7: bin edges round(linspace(1, 7, 5) + 1e-10) - 1 = round([1, 2.5, 4, 5.5, 7]) - 1
    # = [0, 2, 3, 5, 6]; first bin v[0:3] = 0,1,2 (mean 1), last bin v[5:7] = 5,6 (mean 5.5).
    mean, recall, decay = sequence_stats(np.arange(7, dtype=float))
    assert mean == 3.0
    assert recall == pytest.approx(6 / 7)   # values > 0.5: 1..6
    assert decay == pytest.approx(1 - 5.5)
    # A falling series has positive decay: 1,1,1,1,0,0,0,0 → bins v[0:3]=1, v[5:8]=0.
    assert sequence_stats(np.array([1, 1, 1, 1, 0, 0, 0, 0.0])) == (0.5, 0.5, 1.0)


def test_sequence_stats_nan_handling_and_short_series():
    # n = 4: edges [0, 1, 2, 2, 3]; first bin [nan, 1] → 1, last bin [1, 0] → 0.5.
    mean, recall, decay = sequence_stats(np.array([np.nan, 1, 1, 0]))
    assert mean == pytest.approx(2 / 3)
    assert recall == 0.5        # NaN frames count as misses, as the toolkit's nanmean(v > 0.5)
    assert decay == 0.5
    assert sequence_stats(np.array([0.7])) == (0.7, 1.0, 0.0)
    assert math.isnan(sequence_stats(np.array([np.nan, np.nan, 1, 1, 1]))[2])  # all-NaN first bin
    with pytest.raises(ValueError):
        sequence_stats(np.array([]))


def test_leakage_known_fractions_and_empty_twin() -> None:
    from kmnlib.metrics import leakage

    twin = np.zeros((3, 4, 5), bool)
    twin[0, :2, :2] = True                  # 4 twin pixels
    twin[1, 0, :] = True                    # 5 twin pixels; frame 2 has no twin
    pred = np.zeros_like(twin)
    pred[0, 0, :2] = True                   # 2 of 4 leak
    pred[0, 3, 4] = True                    # outside the twin: not leakage
    pred[1, 0, :] = True                    # all 5 leak
    pred[2, :, :] = True                    # no twin: NaN, not 0 or 1
    out = leakage(pred, twin)
    assert out[:2].tolist() == [0.5, 1.0] and np.isnan(out[2])
    assert leakage(pred[0], twin[0]).tolist() == [0.5]
    with pytest.raises(ValueError, match="differ in shape"):
        leakage(pred[:, :3], twin)
