"""The ZooProcess / EcoTaxa feature set, per object, from a mask and the frame's grey levels.

EcoTaxa users classify and compare plankton with the features ZooProcess (ImageJ macros)
writes, so we compute those, named as ZooProcess names them (``area``, ``perim.``,
``circ.``, ``%area`` …) and defined as its macros define them, with ImageJ's conventions
for what ImageJ measures. docs/features.md has one row per column: unit, formula, whether
it depends on a grey threshold, and where tools disagree.

The pixel sets every feature is computed on (per object, in its tight box):

- ``F``, the object: the mask with its holes filled (ImageJ's traced outline with
  "include holes"). ``area``, centroid, ellipse, perimeter, Feret and all grey statistics
  are of ``F``; ZooProcess measures grey levels inside the outline, holes included.
- ``O``, the object's pixels: the mask itself, and if a ``threshold`` is given only its
  pixels on the object's side of it (``grey <= threshold`` dark-on-bright, ``grey >
  threshold`` bright-on-dark). Holes are ``F - O``. ``area_exc``, ``%area`` and the
  ZooProcess texture/shape extras (fractal, skeleton, symmetries, convex hull, grey
  histogram, nb1-3, fcons, thickr) are of ``O``, as ZooProcess computes them on its
  thresholded vignette.

Grey levels are the frame's raw values: nothing is inverted, whatever the polarity
(ZooProcess's dark organisms then have low ``mean``; UVP's ZooProcess-like exports also use
raw levels). Histogram features bin integer levels (0-255 for 8-bit frames, 0-65535 for
16-bit; other dtypes are rounded into 0-255).

Sizes are in pixels, as ZooProcess exports them; ``*_mm`` / ``*_mm2`` columns repeat the
lengths and areas in millimetres. Objects without pixels get 0 counts and NaN elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.measure import find_contours
from skimage.morphology import skeletonize

from segplank.structures import CroppedMasks

Polarity = Literal["dark_on_bright", "bright_on_dark"]
POLARITIES: tuple[str, ...] = ("dark_on_bright", "bright_on_dark")

_I, _F = np.dtype(np.int64), np.dtype(np.float64)
_COUNT_COLUMNS = ("area", "bx", "by", "width", "height", "xstart", "ystart", "area_exc", "skelarea",
                  "convperim", "convarea")
# ZooProcess's PID order, then its derived variables, then the UVP exports' extra ratios.
_NAMES = (
    "area", "mean", "stddev", "mode", "min", "max", "x", "y", "xm", "ym", "perim.", "bx", "by", "width",
    "height", "major", "minor", "angle", "circ.", "feret", "intden", "median", "skew", "kurt", "%area",
    "xstart", "ystart", "area_exc", "fractal", "skelarea", "slope", "histcum1", "histcum2", "histcum3",
    "nb1", "nb2", "nb3", "symetrieh", "symetriev", "symetriehc", "symetrievc", "convperim", "convarea",
    "fcons", "thickr",
    "esd", "elongation", "range", "meanpos", "centroids", "cv", "sr", "perimareaexc", "feretareaexc",
    "perimferet", "perimmajor", "circex", "cdexc",
    "kurt_mean", "skew_mean", "convperim_perim", "convarea_area", "symetrieh_area", "symetriev_area",
    "nb1_area", "nb2_area", "nb3_area", "nb1_range", "nb2_range", "nb3_range", "median_mean",
    "median_mean_range", "skeleton_area",
)
# Millimetre twins: name -> (pixel column, power of the pixel size).
MM_COLUMNS: dict[str, tuple[str, int]] = {
    "area_mm2": ("area", 2), "area_exc_mm2": ("area_exc", 2), "convarea_mm2": ("convarea", 2),
    "perim_mm": ("perim.", 1), "major_mm": ("major", 1), "minor_mm": ("minor", 1), "feret_mm": ("feret", 1),
    "esd_mm": ("esd", 1), "width_mm": ("width", 1), "height_mm": ("height", 1), "centroids_mm": ("centroids", 1),
}
COLUMNS: dict[str, np.dtype] = {**{n: (_I if n in _COUNT_COLUMNS else _F) for n in _NAMES},
                                **{n: _F for n in MM_COLUMNS}}
# Columns that change with ``threshold`` (what is object and what is hole inside the outline).
THRESHOLD_DEPENDENT: frozenset[str] = frozenset({
    "%area", "area_exc", "fractal", "skelarea", "slope", "histcum1", "histcum2", "histcum3", "nb1", "nb2", "nb3",
    "symetrieh", "symetriev", "symetriehc", "symetrievc", "convperim", "convarea", "fcons", "thickr",
    "perimareaexc", "feretareaexc", "circex", "cdexc", "convperim_perim", "convarea_area", "symetrieh_area",
    "symetriev_area", "nb1_area", "nb2_area", "nb3_area", "nb1_range", "nb2_range", "nb3_range",
    "skeleton_area", "area_exc_mm2", "convarea_mm2",
})

_CORNER = 2 - math.sqrt(2)  # ImageJ's traced perimeter: each counted corner cuts 2 - √2
_SAUSAGE_RADII = np.unique(np.floor(1.1 ** np.arange(1, 41) + 0.5))  # ZooProcess's fractal radii, 1..45 px
_MEASURED = ("area", "mean", "stddev", "mode", "min", "max", "x", "y", "xm", "ym", "perim.", "bx", "by", "width",
             "height", "major", "minor", "angle", "feret", "median", "skew", "kurt", "xstart", "ystart",
             "area_exc", "fractal", "skelarea", "slope", "histcum1", "histcum2", "histcum3", "nb1", "nb2", "nb3",
             "symetrieh", "symetriev", "symetriehc", "symetrievc", "convperim", "convarea", "fcons", "thickr")
_EIGHT = np.ones((3, 3), bool)


def zooprocess_features(masks: CroppedMasks, image: np.ndarray, pixel_size_um: float,
                        threshold: float | None = None, polarity: Polarity = "dark_on_bright") -> pd.DataFrame:
    """One row per object, the columns of ``COLUMNS`` in that order (names without ``object_``).

    ``image`` is the 2-D frame the masks index (raw grey levels); ``pixel_size_um`` the side
    of a pixel; ``threshold`` the grey level separating object from background, or None to
    take the mask alone as the object's pixels; ``polarity`` says which side of it is object.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"zooprocess_features() needs a 2-D grey frame, got shape {image.shape}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    levels = _levels(image.dtype)
    step = max(1, int(math.floor(100.0 / pixel_size_um)))  # thickr samples every 0.1 mm
    rows = [_measure_one(b, int(ox), int(oy), image, threshold, polarity, levels, step)
            for b, (ox, oy) in zip(masks.bitmaps, masks.origins)]
    table = {name: np.array([r[name] for r in rows], np.float64) for name in _MEASURED}
    table.update(_derived(table))
    px_mm = pixel_size_um / 1000.0
    table.update({mm: table[src] * px_mm ** power for mm, (src, power) in MM_COLUMNS.items()})
    return pd.DataFrame({name: table[name].astype(dtype) for name, dtype in COLUMNS.items()})


def _levels(dtype: np.dtype) -> int:
    """Number of grey levels the histogram features bin: the frame's bit depth, else 8-bit."""
    if dtype.kind == "u" and dtype.itemsize <= 2:
        return 1 << (8 * dtype.itemsize)
    return 256


def _integer_levels(values: np.ndarray, levels: int) -> np.ndarray:
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
        return values.astype(np.int64)
    return np.clip(np.floor(values.astype(np.float64) + 0.5), 0, levels - 1).astype(np.int64)


# ---------------------------------------------------------------- one object


def _measure_one(bitmap: np.ndarray, ox: int, oy: int, image: np.ndarray, threshold: float | None,
                 polarity: str, levels: int, step: int) -> dict[str, float]:
    """Every measured (not derived) feature of one object; its bitmap is clipped to the frame."""
    bitmap, ox, oy = _tight_in_frame(np.asarray(bitmap, bool), ox, oy, image.shape)
    out = dict.fromkeys(_MEASURED, math.nan)
    if bitmap is None:
        out.update(dict.fromkeys(_COUNT_COLUMNS, 0), bx=ox, by=oy, xstart=ox, ystart=oy)
        return out
    h, w = bitmap.shape
    grey = image[oy:oy + h, ox:ox + w]
    filled = ndi.binary_fill_holes(bitmap)
    if threshold is None:
        obj = bitmap
    else:
        obj = bitmap & ((grey <= threshold) if polarity == "dark_on_bright" else (grey > threshold))
    out.update(_outline_features(filled, grey, ox, oy))
    out.update(_object_pixel_features(obj, grey, levels, step))
    return out


def _tight_in_frame(bitmap: np.ndarray, ox: int, oy: int,
                    shape: tuple[int, ...]) -> tuple[np.ndarray | None, int, int]:
    """The bitmap's part inside the frame, cropped to its set pixels, and its new origin."""
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + bitmap.shape[1], shape[1]), min(oy + bitmap.shape[0], shape[0])
    part = bitmap[y0 - oy:max(y1 - oy, y0 - oy), x0 - ox:max(x1 - ox, x0 - ox)]
    rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
    if not len(rows):
        return None, ox, oy
    part = part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.ascontiguousarray(part), x0 + int(cols[0]), y0 + int(rows[0])


def _outline_features(filled: np.ndarray, grey: np.ndarray, ox: int, oy: int) -> dict[str, float]:
    """What ImageJ measures on the traced outline (holes included): size, grey statistics,
    centroids, box, fitted ellipse, perimeter and Feret."""
    ys, xs = np.nonzero(filled)
    n = len(xs)
    g = grey[ys, xs].astype(np.float64)
    mean = g.mean()
    dev = g - mean
    var = (dev ** 2).mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = (dev ** 3).mean() / var ** 1.5
        kurt = (dev ** 4).mean() / var ** 2 - 3.0
    values, counts = np.unique(g, return_counts=True)
    gsum = g.sum()
    x, y = xs.mean() + 0.5, ys.mean() + 0.5
    major, minor, angle = _fit_ellipse(xs, ys)
    return {
        "area": n, "mean": mean, "stddev": math.sqrt(var * n / (n - 1)) if n > 1 else 0.0,
        "mode": values[np.argmax(counts)], "min": g.min(), "max": g.max(),
        "median": np.partition(g, n // 2)[n // 2],  # ImageJ: the lowest level holding more than half
        "skew": skew, "kurt": kurt,
        "x": ox + x, "y": oy + y,
        "xm": ox + ((xs + 0.5) * g).sum() / gsum if gsum else ox + x,
        "ym": oy + ((ys + 0.5) * g).sum() / gsum if gsum else oy + y,
        "bx": ox, "by": oy, "width": filled.shape[1], "height": filled.shape[0],
        "xstart": ox + int(np.argmax(filled[0])), "ystart": oy,
        "major": major, "minor": minor, "angle": angle,
        "perim.": _traced_perimeter(filled), "feret": _feret(filled),
    }


def _fit_ellipse(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float]:
    """ImageJ's Fit Ellipse: the second moments' axis ratio (each pixel adds 1/12, its own
    moment), scaled so the ellipse's area equals the pixel count; angle counter-clockwise
    as displayed, in [0, 180)."""
    n = len(xs)
    cxx, cyy = xs.var() + 1 / 12, ys.var() + 1 / 12
    cxy = ((xs - xs.mean()) * (ys - ys.mean())).mean()
    root = math.hypot((cxx - cyy) / 2, cxy)
    l1, l2 = (cxx + cyy) / 2 + root, (cxx + cyy) / 2 - root
    size = 2 * math.sqrt(n / math.pi)
    ratio = (l1 / l2) ** 0.25
    angle = (-math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy))) % 180.0
    return size * ratio, size / ratio, (0.0 if angle >= 180.0 else angle)


def _pieces(mask: np.ndarray) -> list[np.ndarray]:
    """Each 8-connected piece, cropped to its box (ImageJ particles are 8-connected)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, count):
        x, y, w, h = stats[k, :4]
        out.append(labels[y:y + h, x:x + w] == k)
    return out


def _traced_perimeter(filled: np.ndarray) -> float:
    """ImageJ's Perim. of traced outlines, summed over the pieces: the length of the outer
    pixel-edge polygon less 2 - √2 per corner, where a corner counts if the side before it
    is longer than one pixel or the corner before it did not count (so a staircase of unit
    steps counts every other corner and measures √2 per step). Holes do not count."""
    return float(sum(_piece_perimeter(p) for p in _pieces(filled)))


def _piece_perimeter(piece: np.ndarray) -> float:
    sides = _outline_sides(piece)
    n = len(sides)
    unit = np.roll(sides, 1) == 1  # the side arriving at corner i is sides[i - 1]
    idx = np.arange(n)
    starts = unit & ((idx == 0) | ~np.roll(unit, 1))
    run = idx - np.maximum.accumulate(np.where(starts, idx, 0))  # position in its run of unit sides
    # A run follows a counted corner, so counts its 2nd, 4th ... corners; the run at corner 0
    # starts from ImageJ's initial "previous corner not counted", so counts its 1st, 3rd ...
    first_run = unit[0] & (idx - run == 0)
    counted = ~unit | np.where(first_run, run % 2 == 0, run % 2 == 1)
    return float(sides.sum() - _CORNER * counted.sum())


def _outline_sides(piece: np.ndarray) -> np.ndarray:
    """Side lengths of a piece's outer pixel-edge polygon, clockwise as displayed, from the
    corner where ImageJ's particle tracing (legacy wand) starts: the top-right corner of the
    first run of pixels on the top row; the last side is that run's top edge."""
    up = np.pad(np.repeat(np.repeat(piece, 2, 0), 2, 1), 1).astype(np.float32)
    # Marching squares on the 2x image runs along the pixel edges, cutting each corner by
    # a quarter pixel; 'high' keeps diagonal neighbours in one outline (8-connectivity).
    contour = max(find_contours(up, 0.5, fully_connected="high"), key=len)[:-1]
    x, y = (contour[:, 1] - 0.5) / 2, (contour[:, 0] - 0.5) / 2
    if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # make it clockwise as displayed
        x, y = x[::-1], y[::-1]
    vertical = np.abs(x - np.round(x)) < 1e-6
    # The unit pixel edge each point lies on: (vertical?, its line, its first pixel along it).
    edge = np.stack([vertical, np.where(vertical, np.round(x), np.round(y)),
                     np.floor(np.where(vertical, y, x))], 1)
    edge = edge[np.any(edge != np.roll(edge, 1, 0), 1)]
    rest = piece[0, int(np.argmax(piece[0])):]
    run_end = piece.shape[1] - len(rest) + (int(np.argmin(rest)) if not rest.all() else len(rest))
    begin = int(np.flatnonzero((edge[:, 0] == 1) & (edge[:, 1] == run_end) & (edge[:, 2] == 0))[0])
    kind = np.roll(edge[:, 0], -begin)  # edges from the start corner on
    starts = np.flatnonzero(kind != np.roll(kind, 1))
    return np.diff(np.append(starts, len(kind))).astype(np.float64)


def _feret(filled: np.ndarray) -> float:
    """ImageJ's Feret: the largest distance between two corners of the outline's pixels."""
    edge = filled & ~ndi.binary_erosion(filled, _EIGHT, border_value=0)
    ys, xs = np.nonzero(edge)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    hull = cv2.convexHull(corners.astype(np.int32)).reshape(-1, 2).astype(np.float64)
    d = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1).max()))


# ---------------------------------------------------------------- object pixels (ZooProcess extras)


def _object_pixel_features(obj: np.ndarray, grey: np.ndarray, levels: int, step: int) -> dict[str, float]:
    """What ZooProcess computes on its thresholded vignette: area without holes, fractal
    dimension, skeleton, symmetries and thickness ratio, convex hull, grey histogram,
    dark-part counts and fcons."""
    out: dict[str, float] = {"area_exc": int(obj.sum()), "skelarea": 0, "convperim": 0, "convarea": 0}
    if not obj.any():
        return out
    out["fractal"] = _fractal(obj)
    out["skelarea"] = int(skeletonize(obj).sum())
    out["convarea"], out["convperim"] = _convex_pixels(obj)
    sym = _symmetry(obj, step)
    out["symetrieh"], out["symetriev"], out["thickr"] = sym.h, sym.v, sym.thickr
    out.update(_histogram_features(obj, grey, levels, step))
    return out


def _fractal(obj: np.ndarray) -> float:
    """ZooProcess's 'sausage' (Minkowski) dimension of the boundary, Berube & Jebrak 1999.

    The mask sits in ZooProcess's enlarged canvas (2x its size if both sides are >= 200 px,
    else 4x); each pixel gets its rounded distance to the boundary on its side (object:
    to the nearest background pixel; background: to the nearest object pixel), both at
    least 1. A(r) counts pixels with the sum <= r for r = round(1.1^k), k = 1..40; the
    dimension is 2 - sd(log A) / sd(log 2r) (ZooProcess's ratio of deviations, not a
    least-squares slope). Margins beyond 46 px change no count, so the canvas is cut there.
    """
    h, w = obj.shape
    factor = 2 if (w >= 200 and h >= 200) else 4
    left, top = int(math.floor(factor * w / 2 - w / 2)), int(math.floor(factor * h / 2 - h / 2))
    right, bottom = factor * w - left - w, factor * h - top - h
    pad = [(min(top, 46), min(bottom, 46)), (min(left, 46), min(right, 46))]
    canvas = np.pad(obj, pad)
    inside = np.floor(ndi.distance_transform_edt(canvas) + 0.5)
    outside = np.floor(ndi.distance_transform_edt(~canvas) + 0.5)
    total = (inside + outside).ravel()
    areas = np.array([np.count_nonzero(total <= r) for r in _SAUSAGE_RADII], np.float64)
    return float(2.0 - np.log(areas).std() / np.log(2 * _SAUSAGE_RADII).std())


def _convex_pixels(obj: np.ndarray) -> tuple[int, int]:
    """ZooProcess's Convarea and Convperim: the convex hull of the pixel centres drawn and
    filled, its pixel count, and the count of its outline (ImageJ's Outline: pixels with a
    background pixel among their 8 neighbours)."""
    ys, xs = np.nonzero(obj)
    hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32) + 1)
    canvas = np.zeros((obj.shape[0] + 2, obj.shape[1] + 2), np.uint8)
    cv2.fillConvexPoly(canvas, hull, 1)
    cv2.polylines(canvas, [hull], True, 1)
    filled = canvas.astype(bool)
    outline = filled & ~ndi.binary_erosion(filled, _EIGHT, border_value=0)
    return int(filled.sum()), int(outline.sum())


@dataclass(frozen=True)
class _Symmetry:
    h: float
    v: float
    thickr: float


def _symmetry(mask: np.ndarray, step: int) -> _Symmetry:
    """ZooProcess's symmetry indices and thickness ratio of the mask's largest piece.

    ZooProcess centres the piece (holes kept) on a square canvas of side
    int(1.2 x its box's diagonal), turns its major axis horizontal, mirrors it left-right
    (symetrieh) and top-bottom (symetriev), and counts canvas pixels equal in both images,
    background included: index = that count / 2 / area (area with holes filled). We mirror
    the pixels across the ellipse's minor (h) and major (v) axes through the centroid
    instead of rotating the raster, so a shape symmetric about an axis scores exactly.
    thickr: on the turned piece, the thickness (first run of object pixels from the top)
    of columns every ``step`` px; max / mean of the others (ZooProcess's definition).
    """
    piece = max(_pieces(mask), key=lambda p: int(p.sum()))
    full = ndi.binary_fill_holes(piece)
    ys, xs = np.nonzero(full)
    area = len(xs)
    cx, cy = xs.mean(), ys.mean()
    _, _, angle = _fit_ellipse(xs, ys)
    t = math.radians(angle)
    d = np.array([math.cos(t), -math.sin(t)])  # major axis, image coordinates (rows grow down)
    side = int(1.2 * math.hypot(*piece.shape))
    py, px = np.nonzero(piece)
    rel = np.stack([px - cx, py - cy], 1)
    along = rel @ d
    h = _mirror_matches(piece, cx, cy, rel - 2 * along[:, None] * d)  # across the minor axis
    v = _mirror_matches(piece, cx, cy, 2 * along[:, None] * d - rel)  # across the major axis
    equal = side * side - 2 * (len(px) - np.array([h, v]))  # canvas pixels equal in both images
    index = equal / 2 / area
    return _Symmetry(float(index[0]), float(index[1]), _thickness_ratio(piece, cx, cy, angle, side, step))


def _mirror_matches(piece: np.ndarray, cx: float, cy: float, mirrored: np.ndarray) -> int:
    """How many pixels land, mirrored, on a pixel of the piece."""
    mx = np.floor(mirrored[:, 0] + cx + 0.5).astype(np.int64)
    my = np.floor(mirrored[:, 1] + cy + 0.5).astype(np.int64)
    ok = (mx >= 0) & (my >= 0) & (mx < piece.shape[1]) & (my < piece.shape[0])
    return int(piece[my[ok], mx[ok]].sum())


def _thickness_ratio(piece: np.ndarray, cx: float, cy: float, angle: float, side: int, step: int) -> float:
    """thickr on the piece turned onto ZooProcess's canvas (nearest neighbour, whole-pixel shift)."""
    t = math.radians(-angle)  # turn clockwise by the angle: the major axis becomes horizontal
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    shift = np.round((side - 1) / 2 - rot @ np.array([cx, cy]))
    matrix = np.hstack([rot, shift[:, None]])
    turned = cv2.warpAffine(piece.astype(np.uint8), matrix, (side, side), flags=cv2.INTER_NEAREST).astype(bool)
    cols = turned[:, ::step]
    started = np.maximum.accumulate(cols, axis=0)
    ended = np.maximum.accumulate(started & ~cols, axis=0)
    thick = (cols & ~ended).sum(0)
    thick = thick[thick > 0].astype(np.float64)
    if len(thick) < 2:
        return 1.0  # ZooProcess writes 1 when the ratio is undefined
    rest = np.delete(thick, np.argmax(thick))
    return float(thick.max() / rest.mean())


def _histogram_features(obj: np.ndarray, grey: np.ndarray, levels: int, step: int) -> dict[str, float]:
    """Grey-histogram features of the object's pixels, as ZooProcess's macro computes them.

    The histogram leaves out the top level (ZooProcess paints the background with it).
    histcum_q: the highest level whose cumulative fraction is still below q (0 if none);
    histcum3 is then raised to the next level that holds pixels, as the macro does before
    using it. slope: sd of the histogram's bin counts / sd of the levels. nb_q: pieces of at
    least 5 px (holes included) left after one 8-neighbour erosion of the pixels at or
    below histcum_q. symetriehc/vc: the symmetry indices of those pixels for histcum3.
    """
    top = levels - 1
    every = _integer_levels(grey, levels)  # once for the whole box: the histogram and the vignette
    hist = np.bincount(every[obj], minlength=levels)[:top].astype(np.float64)
    total = hist.sum()
    if total == 0:
        return {}
    cum = np.cumsum(hist) / total
    raw = [int(np.flatnonzero(cum < q)[-1]) if (cum < q).any() else 0 for q in (0.25, 0.5, 0.75)]
    h3 = raw[2]
    while h3 < top - 1 and hist[h3] == 0:
        h3 += 1
    cuts = (raw[0], raw[1], h3)
    lv = np.where(obj, every, top)  # ZooProcess's vignette: background at top
    out: dict[str, float] = {
        "histcum1": cuts[0], "histcum2": cuts[1], "histcum3": cuts[2],
        "slope": float(hist.std(ddof=1) / np.arange(top, dtype=np.float64).std(ddof=1)),
        "fcons": _fcons(lv, hist, raw),
    }
    for k, cut in enumerate(cuts, 1):
        out[f"nb{k}"] = _count_dark_pieces(lv <= cut)
    dark = lv <= cuts[2]
    if dark.any():
        sym = _symmetry(dark, step)
        out["symetriehc"], out["symetrievc"] = sym.h, sym.v
    return out


def _count_dark_pieces(dark: np.ndarray) -> int:
    """ZooProcess's nb: erode once (ImageJ, 8 neighbours, outside = background), then count
    8-connected pieces of >= 5 px with holes filled (pieces inside holes are not counted)."""
    eroded = ndi.binary_erosion(dark, _EIGHT, border_value=0)
    labels, count = ndi.label(ndi.binary_fill_holes(eroded), _EIGHT)
    return int((np.bincount(labels.ravel())[1:] >= 5).sum()) if count else 0


def _fcons(lv: np.ndarray, hist: np.ndarray, cuts: list[int]) -> float:
    """ZooProcess's Fcons, transcribed from the macro (its meaning is not documented).

    Levels A, B, C: the highest level whose pixel *count* is nonzero and <= histcum1, 2, 3
    (the macro compares counts with levels; 0 if none). Over the vignette's interior pixels
    of those levels, taken column by column, S[p] accumulates |p - mean of the 8
    neighbours| and F adds S[p] * hist[p] / 256 at each pixel; Fcons = F / (1 + pixels).
    """
    picks = []
    for cut in cuts:
        ok = np.flatnonzero((hist != 0) & (hist <= cut))
        picks.append(int(ok[-1]) if len(ok) else 0)
    inner = lv[1:-1, 1:-1].T  # the macro's loops: x outer, y inner
    if inner.size == 0:
        return 0.0
    padded = lv.astype(np.float64)
    ring = sum(padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx).T / 8.0
    total, count = 0.0, 1
    for level in set(picks):
        sel = inner == level
        d = np.abs(level - ring[sel])
        count += len(d)
        total += float(np.cumsum(d).sum()) * hist[level] / 256.0
    return total / count


# ---------------------------------------------------------------- derived columns (all objects at once)


def _derived(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ZooProcess's derived variables (its pid-to-EcoTaxa macro) and the UVP exports' ratios."""
    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)

    area, area_exc, perim = t["area"], t["area_exc"], t["perim."]
    rng = t["max"] - t["min"]
    centroids = np.hypot(t["xm"] - t["x"], t["ym"] - t["y"])
    root_exc = np.sqrt(area_exc)
    return {
        "circ.": np.minimum(ratio(4 * math.pi * area, perim ** 2), 1.0),  # ImageJ caps Circ. at 1
        "intden": area * t["mean"],
        "%area": ratio(100.0 * (area - area_exc), area),
        "esd": 2 * np.sqrt(area / math.pi),
        "elongation": ratio(t["major"], t["minor"]),
        "range": rng,
        "meanpos": ratio(t["mean"] - t["max"], t["mean"] - t["min"]),
        "centroids": centroids,
        "cv": ratio(100 * t["stddev"], t["mean"]),
        "sr": ratio(100 * t["stddev"], rng),
        "perimareaexc": ratio(perim, root_exc),
        "feretareaexc": ratio(t["feret"], root_exc),
        "perimferet": ratio(perim, t["feret"]),
        "perimmajor": ratio(perim, t["major"]),
        "circex": ratio(4 * math.pi * area_exc, perim ** 2),
        "cdexc": ratio(centroids, root_exc),
        "kurt_mean": ratio(t["kurt"], t["mean"]),
        "skew_mean": ratio(t["skew"], t["mean"]),
        "convperim_perim": ratio(t["convperim"], perim),
        "convarea_area": ratio(t["convarea"], area),
        "symetrieh_area": ratio(t["symetrieh"], area),
        "symetriev_area": ratio(t["symetriev"], area),
        **{f"nb{k}_area": ratio(t[f"nb{k}"], area) for k in (1, 2, 3)},
        **{f"nb{k}_range": ratio(t[f"nb{k}"], rng) for k in (1, 2, 3)},
        "median_mean": t["median"] - t["mean"],
        "median_mean_range": ratio(t["median"] - t["mean"], rng),
        "skeleton_area": ratio(t["skelarea"], area),
    }
