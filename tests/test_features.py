"""zooprocess_features(): drawn shapes with known answers, one test per feature family.

Shapes are drawn by pixel-centre inclusion with a sub-pixel offset, so digitisation is
realistic; tolerances are about 2 % for sizes of shapes >= 30 px unless ImageJ's own
estimator has a known bias, which the test then states.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from segplank.features import COLUMNS, MM_COLUMNS, THRESHOLD_DEPENDENT, zooprocess_features
from segplank.structures import CroppedMasks

FRAME = (400, 400)


def draw(kind: str, a: float, b: float | None = None, angle_deg: float = 0.0, hole: float = 0.0,
         dx: float = 0.37, dy: float = 0.21) -> np.ndarray:
    """Pixels whose centre lies in the shape, cropped: `a` along the axis at `angle_deg`
    (counter-clockwise as displayed, rows grow downwards), `b` across it; `hole` a radius."""
    b = a if b is None else b
    n = int(math.ceil(math.hypot(a, b))) + 6
    y, x = np.mgrid[:n, :n].astype(np.float64)
    x, y = x - n / 2 + dx, y - n / 2 + dy
    t = math.radians(angle_deg)
    u, v = x * math.cos(t) - y * math.sin(t), x * math.sin(t) + y * math.cos(t)
    if kind == "ellipse":
        inside = (u / (a / 2)) ** 2 + (v / (b / 2)) ** 2 <= 1
    elif kind == "triangle":  # base of length b across the axis at u = -a/2, apex at u = +a/2
        inside = (np.abs(u) <= a / 2) & (np.abs(v) <= b / 2 * (0.5 - u / a))
    else:
        inside = (np.abs(u) <= a / 2) & (np.abs(v) <= b / 2)
    inside &= u ** 2 + v ** 2 > hole ** 2
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    return inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def features(bitmaps, image=None, origins=None, pixel_size_um=10.0, **kw):
    image = np.full(FRAME, 200, np.uint8) if image is None else image
    origins = [(20, 30)] * len(bitmaps) if origins is None else origins
    masks = CroppedMasks(np.array(origins, np.int64).reshape(-1, 2), tuple(bitmaps))
    return zooprocess_features(masks, image, pixel_size_um, **kw)


def paint(bitmap: np.ndarray, values, origin=(20, 30), background=200) -> np.ndarray:
    image = np.full(FRAME, background, np.uint8)
    h, w = bitmap.shape
    image[origin[1]:origin[1] + h, origin[0]:origin[0] + w][bitmap] = np.asarray(values)[bitmap] \
        if np.ndim(values) else values
    return image


def close(value, expected, rel=0.02, abs_=0.0):
    assert value == pytest.approx(expected, rel=rel, abs=abs_)


# ------------------------------------------------------------------ grey statistics


def test_grey_statistics_of_a_constant_disc_and_a_linear_ramp():
    disc = draw("ellipse", 40)
    ramp = np.ones((20, 100), bool)
    levels = 10 + np.tile(np.arange(100), (20, 1))  # 10..109 along x, each level 20 times
    df = features([disc, ramp], image=paint(ramp, levels, origin=(20, 30)), origins=[(250, 250), (20, 30)])
    c, r = df.iloc[0], df.iloc[1]

    n = int(disc.sum())
    assert (c["mean"], c["stddev"], c["mode"], c["min"], c["max"], c["median"]) == (200, 0, 200, 200, 200, 200)
    assert c["intden"] == 200 * n and c["range"] == 0 and c["cv"] == 0
    assert math.isnan(c["skew"]) and math.isnan(c["kurt"])  # no spread: undefined, as in ImageJ
    assert math.isnan(c["meanpos"]) and math.isnan(c["sr"])  # ZooProcess writes NaN when mean == min, max == min
    assert c["xm"] == pytest.approx(c["x"]) and c["centroids"] == pytest.approx(0, abs=1e-9)

    x = np.arange(100)
    g = 10.0 + x
    assert r["mean"] == pytest.approx(59.5)
    assert r["stddev"] == pytest.approx(math.sqrt((100 ** 2 - 1) / 12 * 2000 / 1999))  # ImageJ: n - 1
    assert (r["min"], r["max"], r["mode"], r["range"]) == (10, 109, 10, 99)  # mode: lowest of tied levels
    assert r["median"] == 60  # ImageJ's integer median: lowest level with more than half below or at it
    assert r["skew"] == pytest.approx(0, abs=1e-12)
    assert r["kurt"] == pytest.approx(-6 * (100 ** 2 + 1) / (5 * (100 ** 2 - 1)))  # uniform, excess
    assert r["intden"] == pytest.approx(2000 * 59.5)
    assert r["x"] == pytest.approx(20 + 50) and r["y"] == pytest.approx(30 + 10)
    assert r["xm"] == pytest.approx(20 + (g * (x + 0.5)).sum() / g.sum()) and r["ym"] == pytest.approx(40)
    assert r["centroids"] == pytest.approx(r["xm"] - r["x"])
    assert r["cdexc"] == pytest.approx(r["centroids"] / math.sqrt(2000))
    assert r["meanpos"] == pytest.approx((59.5 - 109) / (59.5 - 10))  # ZooProcess: (mean-max)/(mean-min)
    assert r["cv"] == pytest.approx(100 * r["stddev"] / 59.5) and r["sr"] == pytest.approx(100 * r["stddev"] / 99)
    assert r["median_mean"] == pytest.approx(0.5) and r["median_mean_range"] == pytest.approx(0.5 / 99)
    assert r["kurt_mean"] == pytest.approx(r["kurt"] / 59.5) and r["skew_mean"] == pytest.approx(0, abs=1e-12)


def test_grey_histogram_features_and_dark_part_counts():
    ramp = np.ones((20, 100), bool)
    levels = 10 + np.tile(np.arange(100), (20, 1))
    bar = np.ones((20, 60), bool)
    spots = np.full(bar.shape, 200)
    for x0 in (5, 25, 45):  # three dark 6x6 spots on a bright body
        spots[7:13, x0:x0 + 6] = 10
    image = paint(ramp, levels, origin=(20, 30))
    image[200:220, 100:160] = spots
    disc = draw("ellipse", 40)
    image[300:300 + disc.shape[0], 300:300 + disc.shape[1]][disc] = 90
    df = features([ramp, bar, disc], image=image, origins=[(20, 30), (100, 200), (300, 300)])
    r, s, c = df.iloc[0], df.iloc[1], df.iloc[2]

    # histcum_q: the highest level whose cumulative fraction is still below q.
    assert (r["histcum1"], r["histcum2"], r["histcum3"]) == (33, 58, 83)
    hist = np.zeros(255)
    hist[10:110] = 20
    assert r["slope"] == pytest.approx(hist.std(ddof=1) / np.arange(255).std(ddof=1))
    assert r["nb1"] == r["nb2"] == r["nb3"] == 1  # the dark end of the ramp: one piece

    # 108 dark pixels of 1200: histcum1-3 all fall at 199; histcum3 moves up to 200, the next
    # level holding pixels, as ZooProcess does, and then takes in the whole body.
    assert (s["histcum1"], s["histcum2"], s["histcum3"]) == (199, 199, 200)
    assert (s["nb1"], s["nb2"], s["nb3"]) == (3, 3, 1)
    assert s["nb1_area"] == pytest.approx(3 / 1200) and s["nb1_range"] == pytest.approx(3 / 190)

    # A constant object: one bin of N pixels among 255.
    n = int(disc.sum())
    stdg = n / math.sqrt(255)
    stda = math.sqrt(255 * (255 ** 2 - 1) / 12 / 254)
    assert c["slope"] == pytest.approx(stdg / stda)
    assert (c["histcum1"], c["histcum3"]) == (89, 90) and c["fcons"] == 0


def macro_histcum_and_fcons(lv: np.ndarray) -> tuple[list[int], float]:
    """A line-by-line transcription of ZooProcess's histcum and Fcons loops, for checking."""
    hist = np.bincount(lv.ravel(), minlength=256)
    histcum, sumg = [], 0
    cum = []
    for k in range(255):
        sumg += hist[k]
        cum.append(sumg)
    cuts = [0, 0, 0]
    hh = 0
    while hh < 256:
        dat = cum[hh] / sumg
        for i, q in enumerate((0.25, 0.5, 0.75)):
            if dat < q:
                cuts[i] = hh
        if dat > 0.75:
            hh = 256
        hh += 1
    picks = [0, 0, 0]
    for k in range(255):
        for i in range(3):
            if hist[k] != 0 and hist[k] <= cuts[i]:
                picks[i] = k
    s = np.zeros(256)
    f, count = 0.0, 1
    h, w = lv.shape
    for x in range(1, w - 1):
        for y in range(1, h - 1):
            p = int(lv[y, x])
            if p in picks:
                around = [lv[y + j, x + i] for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j]
                s[p] += abs(p - sum(around) / 8)
                count += 1
                f += s[p] * hist[p] / 256
    histcum = list(cuts)
    while hist[histcum[2]] == 0:
        histcum[2] += 1
    return histcum, f / count


def test_histogram_features_follow_the_macro_line_by_line():
    rng = np.random.default_rng(3)
    blob = draw("ellipse", 18, 11, 25)
    levels = rng.integers(40, 230, blob.shape)
    df = features([blob], image=paint(blob, levels, origin=(20, 30)))
    lv = np.where(blob, levels, 255)  # ZooProcess's vignette: the object on a white background
    histcum, fcons = macro_histcum_and_fcons(lv)
    row = df.iloc[0]
    assert [row["histcum1"], row["histcum2"], row["histcum3"]] == histcum
    assert row["fcons"] == pytest.approx(fcons)
    assert fcons > 0  # the random object does pick levels, so the loop is exercised


# ------------------------------------------------------------------ ellipse


def test_fitted_ellipse_of_ellipses_discs_and_rectangles():
    df = features([draw("ellipse", 80, 32, 30), draw("ellipse", 60), draw("ellipse", 70, 20, 135),
                   draw("rect", 60, 20)])
    e, d, e2, rect = df.iloc[0], df.iloc[1], df.iloc[2], df.iloc[3]
    close(e["major"], 80, 0.01)
    close(e["minor"], 32, 0.01)
    assert e["angle"] == pytest.approx(30, abs=0.5)  # counter-clockwise as displayed
    assert e2["angle"] == pytest.approx(135, abs=0.5)
    close(e["elongation"], 80 / 32, 0.02)
    close(e["esd"], 2 * math.sqrt(40 * 16), 0.01)
    close(d["major"], 60, 0.01)
    close(d["minor"], 60, 0.01)
    close(d["esd"], 60, 0.01)
    close(d["elongation"], 1, 0.01)
    # ImageJ scales the moment ellipse to the object's area: pi/4 major minor = area.
    assert math.pi / 4 * rect["major"] * rect["minor"] == pytest.approx(rect["area"])
    # A 60 x 20 rectangle's second moments (each pixel with its own 1/12) give the axis ratio.
    assert rect["major"] / rect["minor"] == pytest.approx(math.sqrt(60 ** 2 / 20 ** 2))
    assert rect["angle"] == 0


# ------------------------------------------------------------------ perimeter and Feret


def ij_perimeter_reference(piece: np.ndarray) -> float:
    """Walks the outline pixel edge by pixel edge (inside on the right, diagonal neighbours
    kept together), from the top-right corner of the top row's first run, then applies
    ImageJ's corner rule: an independent check of the vectorised version."""
    h, w = piece.shape

    def inside(c, r):
        return 0 <= c < w and 0 <= r < h and bool(piece[r, c])

    def flanks(x, y, d):  # (pixel right of the edge leaving (x, y) along d, pixel left of it)
        if d == (1, 0):
            return inside(x, y), inside(x, y - 1)
        if d == (-1, 0):
            return inside(x - 1, y - 1), inside(x - 1, y)
        if d == (0, 1):
            return inside(x - 1, y), inside(x, y)
        return inside(x, y - 1), inside(x - 1, y - 1)

    c0 = int(np.argmax(piece[0]))
    while inside(c0 + 1, 0):
        c0 += 1
    start = (c0 + 1, 0)
    x, y, d, prev, corners = *start, (0, 1), (1, 0), []
    while True:
        if d != prev:
            corners.append((x, y))
        x, y, prev = x + d[0], y + d[1], d
        for turn in ((d[1], -d[0]), d, (-d[1], d[0])):  # left first: 8-connected
            right, left = flanks(x, y, turn)
            if right and not left:
                d = turn
                break
        if (x, y) == start and prev == (1, 0):
            break
    pts = np.array(corners, np.float64)
    side = np.abs(np.roll(pts, -1, 0) - pts).sum(1)  # side i leaves corner i
    counted, total = False, 0
    for i in range(len(pts)):
        if side[i - 1] > 1 or not counted:
            counted, total = True, total + 1
        else:
            counted = False
    return side.sum() - total * (2 - math.sqrt(2))


def test_perimeter_and_feret_of_rectangles_diamonds_discs_and_a_thin_bar():
    k = 12
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    diamond = (np.abs(xx) + np.abs(yy)) <= k
    shapes = [draw("rect", 40, 25), diamond, draw("ellipse", 60), draw("ellipse", 200), draw("rect", 100, 4, 30),
              np.ones((1, 1), bool)]
    rect, dia, disc, big, bar, px = (row for _, row in features(shapes, image=np.full((600, 600), 200, np.uint8))
                                     .iterrows())
    # ImageJ: pixel-edge length less 2 - sqrt(2) per counted corner; exact on these two.
    assert rect["perim."] == pytest.approx(2 * (40 + 25) - 4 * (2 - math.sqrt(2)))
    # The diamond's outline is 2(2k+1) diagonal steps of sqrt(2): the edge |x| + |y| = k + 1/2.
    assert dia["perim."] == pytest.approx(4 * math.sqrt(2) * (k + 0.5))
    assert px["perim."] == pytest.approx(4 - 2 * (2 - math.sqrt(2)))
    # On round outlines ImageJ's count runs 3-6 % long (its Circ. of a digital disc is ~0.9).
    assert 1.02 < disc["perim."] / (math.pi * 60) < 1.06
    assert 1.02 < big["perim."] / (math.pi * 200) < 1.06
    assert 0.88 < big["circ."] < 0.94
    assert 1.0 < bar["perim."] / (2 * (100 + 4)) < 1.07
    # Feret: the farthest two corners of the outline's pixels.
    assert rect["feret"] == pytest.approx(math.hypot(40, 25))
    assert px["feret"] == pytest.approx(math.sqrt(2))
    assert abs(disc["feret"] - 61) < 1 and abs(big["feret"] - 201) < 1  # centres within r: corners reach r + 1/2
    assert abs(bar["feret"] - math.hypot(100, 4)) < 1.5
    close(bar["perimferet"], bar["perim."] / bar["feret"], 1e-12)


def test_perimeter_matches_an_edge_by_edge_trace_on_random_blobs():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(7)
    blobs = []
    for _ in range(60):
        n = int(rng.integers(2, 14))
        m = ndi.binary_fill_holes(rng.random((n, n)) < rng.uniform(0.35, 0.8))
        labels, count = ndi.label(m, np.ones((3, 3), bool))
        if count:
            big = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
            rows, cols = np.flatnonzero(big.any(1)), np.flatnonzero(big.any(0))
            blobs.append(big[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    df = features(blobs)
    expected = [ij_perimeter_reference(b) for b in blobs]
    np.testing.assert_allclose(df["perim."].to_numpy(), expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ holes


def test_holes_from_the_mask_or_from_the_grey_threshold():
    ring = draw("ellipse", 60, hole=15)
    disc = draw("ellipse", 60)
    grey = np.where(ring, 40, 220)  # a dark ring around a bright hole
    image = paint(disc, grey, origin=(20, 30), background=220)
    by_mask = features([ring], image=image).iloc[0]
    by_grey = features([disc], image=image, threshold=128).iloc[0]
    for row in (by_mask, by_grey):
        close(row["area"], math.pi * 30 ** 2, 0.01)  # holes included
        close(row["area_exc"], math.pi * (30 ** 2 - 15 ** 2), 0.02)  # holes excluded
        close(row["%area"], 100 * 15 ** 2 / 30 ** 2, 0.03)  # percentage of holes
        assert row["area"] * (1 - row["%area"] / 100) == pytest.approx(row["area_exc"])
        close(row["circex"] / row["circ."], 0.75, 0.02)  # same outline, three quarters of its area
        close(row["convarea"], math.pi * 30 ** 2, 0.02)
        close(row["area_exc_mm2"], row["area_exc"] * 1e-4, 1e-12)
        assert row["mean"] == pytest.approx((40 * row["area_exc"] + 220 * (row["area"] - row["area_exc"]))
                                            / row["area"])  # grey statistics inside the outline
    assert by_mask["perim."] == by_grey["perim."] and by_mask["skelarea"] == by_grey["skelarea"]

    # No threshold, no holes in the mask: nothing is excluded.
    plain = features([disc], image=image).iloc[0]
    assert plain["area_exc"] == plain["area"] and plain["%area"] == 0

    # Bright-on-dark (UVP): the object is the side above the threshold; grey levels stay raw.
    uvp = paint(disc, np.where(ring, 210, 15), origin=(20, 30), background=15)
    bright = features([disc], image=uvp, threshold=100, polarity="bright_on_dark").iloc[0]
    assert bright["area_exc"] == by_mask["area_exc"] and bright["max"] == 210 and bright["min"] == 15
    with pytest.raises(ValueError, match="polarity"):
        features([disc], polarity="white")


def test_threshold_changes_only_the_columns_marked_as_depending_on_it():
    disc = draw("ellipse", 50)
    rng = np.random.default_rng(5)
    grey = np.where(draw("ellipse", 50, hole=12), rng.integers(20, 90, disc.shape), 230)
    image = paint(disc, grey, origin=(20, 30), background=230)
    a = features([disc], image=image).iloc[0]
    b = features([disc], image=image, threshold=150).iloc[0]
    changed = {c for c in COLUMNS if not (a[c] == pytest.approx(b[c], nan_ok=True))}
    assert changed and changed <= THRESHOLD_DEPENDENT
    assert {"area_exc", "%area", "circex"} <= changed


# ------------------------------------------------------------------ ratios


def test_derived_ratios_follow_zooprocess_definitions():
    r = 30
    df = features([draw("ellipse", 2 * r), draw("ellipse", 2 * r, hole=r / 2)])
    disc, ring = df.iloc[0], df.iloc[1]
    assert disc["circ."] == pytest.approx(4 * math.pi * disc["area"] / disc["perim."] ** 2)
    close(disc["perimferet"], math.pi, 0.06)  # ImageJ's perimeter of round outlines is a few % long
    close(disc["perimmajor"], math.pi, 0.06)
    close(disc["feretareaexc"], 2 / math.sqrt(math.pi), 0.03)  # feret / sqrt(area_exc)
    close(disc["perimareaexc"], 2 * math.sqrt(math.pi), 0.06)  # perim / sqrt(area_exc), not / area_exc
    assert disc["perimareaexc"] == pytest.approx(disc["perim."] / math.sqrt(disc["area_exc"]))
    assert disc["circex"] == pytest.approx(disc["circ."])
    assert ring["circex"] == pytest.approx(4 * math.pi * ring["area_exc"] / ring["perim."] ** 2)
    close(ring["circex"], 0.75 * 4 * math.pi * math.pi * r * r / ring["perim."] ** 2, 0.02)
    close(ring["feretareaexc"], 2 * r / math.sqrt(math.pi * 0.75 * r * r), 0.03)
    assert ring["convarea_area"] == pytest.approx(ring["convarea"] / ring["area"])
    assert ring["convperim_perim"] == pytest.approx(ring["convperim"] / ring["perim."])
    assert ring["skeleton_area"] == pytest.approx(ring["skelarea"] / ring["area"])
    assert ring["symetrieh_area"] == pytest.approx(ring["symetrieh"] / ring["area"])


# ------------------------------------------------------------------ skeleton, fractal, hull, symmetry


def test_skeleton_fractal_hull_symmetry_and_thickness():
    bar = draw("rect", 120, 3, 30)
    big = np.ones((240, 300), bool)
    plus = np.zeros((30, 100), bool)
    plus[10:20, :] = True
    plus[:, 45:55] = True
    tri = draw("triangle", 80, 40, 0, dy=0.5)
    rect = draw("rect", 40, 25)
    image = np.full((700, 700), 200, np.uint8)
    df = features([bar, big, plus, tri, rect, draw("ellipse", 120)], image=image, pixel_size_um=100.0,
                  origins=[(10, 10), (300, 300), (10, 200), (10, 300), (10, 450), (150, 10)])
    b, g, p, t, r, d = (row for _, row in df.iterrows())

    # The skeleton of a thin bar is one pixel per column along it.
    assert abs(b["skelarea"] - 120 * math.cos(math.radians(30))) <= 4
    # Straight edges: the sausage grows linearly with its width, dimension 1.
    assert g["fractal"] == pytest.approx(1.0, abs=0.02)
    assert d["fractal"] == pytest.approx(1.0, abs=0.06)
    # Convex hull of a rectangle: itself; its outline pixels, ImageJ's Outline.
    assert (r["convarea"], r["convperim"]) == (1000, 2 * (40 + 25) - 4)
    close(d["convperim"], 4 * 120, 0.02)  # a 4-connected outline counts |dx| + |dy| per step
    # Symmetry: canvas pixels equal to the mirror image / 2 / area; a shape symmetric about
    # both axes leaves only the canvas: int(1.2 * box diagonal)^2 / 2 / area.
    side = int(1.2 * math.hypot(40, 25))
    assert r["symetrieh"] == r["symetriev"] == pytest.approx(side ** 2 / 2 / 1000)
    # A triangle along x is symmetric top-bottom (v); left-right it overlaps its mirror by 2/3.
    n = t["area"]
    side = int(1.2 * math.hypot(t["width"], t["height"]))
    assert t["symetriev"] == pytest.approx(side ** 2 / 2 / n)
    close(t["symetrieh"], (side ** 2 - 2 * n / 3) / 2 / n, 0.01)
    # Thickness ratio: columns 0.1 mm apart (1 px here) through the plus: 90 columns 10 px
    # thick, 10 columns 30 px; max / mean of the others.
    assert p["thickr"] == pytest.approx(30 / ((90 * 10 + 9 * 30) / 99))
    assert r["thickr"] == 1


# ------------------------------------------------------------------ positions, edges, empties, units


def test_positions_are_frame_pixels_and_crops_are_clipped_to_the_frame():
    bitmap = np.zeros((12, 10), bool)
    bitmap[2:7, 3:9] = True
    bitmap[2, 3] = False  # the top row starts at column 4
    edge = np.ones((10, 10), bool)
    df = features([bitmap, edge], origins=[(100, 50), (-4, 395)])
    a, e = df.iloc[0], df.iloc[1]
    assert (a["bx"], a["by"], a["width"], a["height"]) == (103, 52, 6, 5)
    assert (a["xstart"], a["ystart"]) == (104, 52)
    assert a["x"] == pytest.approx((bitmap.nonzero()[1] + 0.5).mean() + 100)
    assert a["y"] == pytest.approx((bitmap.nonzero()[0] + 0.5).mean() + 50)
    assert (e["bx"], e["by"], e["width"], e["height"], e["area"]) == (0, 395, 6, 5, 30)  # the in-frame part


def test_empty_frame_empty_bitmap_and_one_pixel():
    empty = zooprocess_features(CroppedMasks.empty(), np.zeros((8, 8), np.uint8), 10.0)
    assert list(empty.columns) == list(COLUMNS) and len(empty) == 0
    assert dict(empty.dtypes) == COLUMNS
    df = features([np.zeros((3, 3), bool), np.ones((1, 1), bool)])
    none, one = df.iloc[0], df.iloc[1]
    assert none["area"] == 0 and none["area_exc"] == 0 and math.isnan(none["mean"]) and math.isnan(none["perim."])
    assert one["area"] == 1 and one["mean"] == 200 and one["stddev"] == 0
    assert one["perim."] == pytest.approx(2 * math.sqrt(2)) and one["feret"] == pytest.approx(math.sqrt(2))
    assert one["major"] == pytest.approx(2 / math.sqrt(math.pi)) == one["minor"]
    assert (one["skelarea"], one["convarea"], one["convperim"], one["nb1"]) == (1, 1, 1, 0)
    assert dict(df.dtypes) == COLUMNS


def test_millimetre_columns_scale_the_pixel_ones():
    df = features([draw("ellipse", 60, 30, 20)], pixel_size_um=25.0).iloc[0]
    assert set(MM_COLUMNS) <= set(df.index)
    for name, (source, power) in MM_COLUMNS.items():
        assert name.endswith("_mm2" if power == 2 else "_mm")
        assert df[name] == pytest.approx(df[source] * 0.025 ** power)
    assert df["perim_mm"] == pytest.approx(df["perim."] * 0.025)
