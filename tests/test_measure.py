"""measure(): hand-drawn shapes of known size, exact grey statistics, µm scaling."""
from __future__ import annotations

import math

import numpy as np
import pytest

from segplank.measure import COLUMNS, measure
from segplank.structures import CroppedMasks, Detections, RoiMasks

# Sub-pixel offset of the drawn shapes, so no shape sits symmetrically on the pixel grid.
DX, DY = 0.37, 0.21


def shape_bitmap(kind: str, a: float, b: float, angle_deg: float = 0.0) -> np.ndarray:
    """Bitmap of pixels whose centre lies in the shape; `a` along the axis at `angle_deg`
    (counter-clockwise as displayed, image rows grow downwards), `b` across it."""
    n = int(math.ceil(math.hypot(a, b))) + 6
    y, x = np.mgrid[:n, :n].astype(np.float64)
    x, y = x - n / 2 + DX, y - n / 2 + DY
    t = math.radians(angle_deg)
    u = x * math.cos(t) - y * math.sin(t)
    v = x * math.sin(t) + y * math.cos(t)
    if kind == "ellipse":
        inside = (u / (a / 2)) ** 2 + (v / (b / 2)) ** 2 <= 1
    else:
        inside = (np.abs(u) <= a / 2) & (np.abs(v) <= b / 2)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    return inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def dets_of(bitmaps: list[np.ndarray], origins: list[tuple[int, int]]) -> Detections:
    o = np.array(origins, np.int64).reshape(-1, 2)
    boxes = np.array([(x, y, x + b.shape[1], y + b.shape[0]) for b, (x, y) in zip(bitmaps, origins)],
                     np.float32).reshape(-1, 4)
    n = len(bitmaps)
    return Detections(boxes, np.ones(n, np.float32), np.zeros(n, np.int64), CroppedMasks(o, tuple(bitmaps)))


def measure_one(bitmap: np.ndarray, px: float = 1.0, image: np.ndarray | None = None,
                origin: tuple[int, int] = (3, 5)) -> dict[str, float]:
    if image is None:
        image = np.full((bitmap.shape[0] + 10, bitmap.shape[1] + 10), 100, np.uint8)
    cols = measure(dets_of([bitmap], [origin]), image, px)
    return {k: v[0] for k, v in cols.items()}


def close(value: float, expected: float, rel: float = 0.02) -> bool:
    return abs(value - expected) <= rel * expected


@pytest.mark.parametrize("d", [40, 100, 300])
def test_disc(d: int) -> None:
    m = measure_one(shape_bitmap("ellipse", d, d))
    assert close(m["area_px"], math.pi * d * d / 4)
    assert close(m["esd_um"], d)
    assert close(m["major_um"], d) and close(m["minor_um"], d)
    assert close(m["perimeter_um"], math.pi * d)
    assert close(m["feret_min_um"], d) and close(m["feret_max_um"], d)
    assert m["solidity"] > 0.99
    assert m["eccentricity"] < 0.1


@pytest.mark.parametrize("angle", [0, 30, 45, 90, 135, 160])
def test_ellipse(angle: float) -> None:
    a, b = 200, 60
    m = measure_one(shape_bitmap("ellipse", a, b, angle))
    assert close(m["area_px"], math.pi * a * b / 4)
    assert close(m["major_um"], a) and close(m["minor_um"], b)
    assert close(m["feret_max_um"], a) and close(m["feret_min_um"], b)
    ramanujan = math.pi * (3 * (a + b) / 2 - math.sqrt((3 * a + b) * (a + 3 * b)) / 2)
    assert close(m["perimeter_um"], ramanujan)
    assert abs((m["angle_deg"] - angle + 90) % 180 - 90) < 1.0
    assert close(m["eccentricity"], math.sqrt(1 - (b / a) ** 2), 0.01)
    assert m["solidity"] > 0.99


@pytest.mark.parametrize("angle", [0, 30])
def test_rectangle(angle: float) -> None:
    a, b = 150, 40
    m = measure_one(shape_bitmap("rect", a, b, angle))
    assert close(m["area_px"], a * b)
    assert close(m["feret_max_um"], math.hypot(a, b))
    assert close(m["feret_min_um"], b)
    # The ellipse with a rectangle's second moments has axes 2/sqrt(3) times its sides.
    assert close(m["major_um"], a * 2 / math.sqrt(3)) and close(m["minor_um"], b * 2 / math.sqrt(3))
    assert close(m["perimeter_um"], 2 * (a + b), 0.03)
    assert abs((m["angle_deg"] - angle + 90) % 180 - 90) < 1.0
    assert m["solidity"] > 0.99


def test_matches_scikit_image_moments() -> None:
    from skimage.measure import regionprops
    from skimage.morphology import convex_hull_image

    rng = np.random.default_rng(1)
    blob = np.zeros((60, 80), bool)
    for cx, cy, r in rng.uniform((15, 15, 5), (65, 45, 14), (5, 3)):
        y, x = np.ogrid[:60, :80]
        blob |= (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    m = measure_one(blob, origin=(0, 0))
    ref = regionprops(blob.astype(np.uint8))[0]
    assert m["area_px"] == ref.area
    assert m["major_um"] == pytest.approx(ref.axis_major_length, rel=1e-9)
    assert m["minor_um"] == pytest.approx(ref.axis_minor_length, rel=1e-9)
    assert m["eccentricity"] == pytest.approx(ref.eccentricity, rel=1e-9)
    assert m["centroid_x"] == pytest.approx(ref.centroid[1] + 0.5)
    assert m["centroid_y"] == pytest.approx(ref.centroid[0] + 0.5)
    # Our hull joins pixel centres (skimage's joins pixel corners, so reads lower).
    hull = convex_hull_image(blob, offset_coordinates=False)
    assert m["solidity"] == pytest.approx(blob.sum() / hull.sum(), rel=1e-9)


def test_one_pixel_object() -> None:
    image = np.zeros((20, 20), np.uint8)
    image[7, 4] = 42
    m = measure_one(np.ones((1, 1), bool), image=image, origin=(4, 7))
    assert m["area_px"] == 1 and m["area_um2"] == 1
    assert m["esd_um"] == pytest.approx(2 / math.sqrt(math.pi))
    assert m["feret_max_um"] == 0.5 and m["feret_min_um"] == 0.5  # centre hull + 1/2 px
    assert m["major_um"] == 0 and m["minor_um"] == 0
    assert m["solidity"] == 1
    assert m["perimeter_um"] == pytest.approx(math.pi)
    assert (m["centroid_x"], m["centroid_y"]) == (4.5, 7.5)
    assert (m["mean_grey"], m["sd_grey"], m["min_grey"], m["max_grey"]) == (42, 0, 42, 42)


def test_empty_detections_give_typed_empty_columns() -> None:
    cols = measure(Detections.empty(), np.zeros((10, 10), np.uint8), 10.0)
    assert list(cols) == list(COLUMNS)
    for name, dtype in COLUMNS.items():
        assert cols[name].shape == (0,) and cols[name].dtype == dtype


def test_empty_bitmap_is_zero_size_and_nan() -> None:
    m = measure_one(np.zeros((4, 5), bool))
    assert m["area_px"] == 0 and m["esd_um"] == 0 and m["feret_max_um"] == 0
    assert math.isnan(m["mean_grey"]) and math.isnan(m["solidity"]) and math.isnan(m["centroid_x"])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grey_statistics_are_exact(dtype: type) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, (50, 60)).astype(dtype)
    mask = rng.random((12, 15)) < 0.5
    mask[0, 0] = True
    ox, oy = 20, 30
    m = measure_one(mask, image=image, origin=(ox, oy))
    under = image[oy:oy + 12, ox:ox + 15][mask].astype(np.float64)
    assert m["mean_grey"] == pytest.approx(under.mean(), rel=1e-9)
    assert m["sd_grey"] == pytest.approx(under.std(), rel=1e-6)
    assert (m["min_grey"], m["max_grey"]) == (under.min(), under.max())


def test_mask_partly_outside_the_frame_uses_the_in_frame_pixels() -> None:
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    m = measure_one(np.ones((4, 4), bool), image=image, origin=(8, 8))
    assert m["area_px"] == 16
    assert (m["min_grey"], m["max_grey"]) == (88, 99)


def test_pixel_size_scales_lengths_and_areas() -> None:
    bitmap = shape_bitmap("ellipse", 80, 30, 20)
    one, scaled = measure_one(bitmap, 1.0), measure_one(bitmap, 2.5)
    for name in ("esd_um", "perimeter_um", "major_um", "minor_um", "feret_max_um", "feret_min_um"):
        assert scaled[name] == pytest.approx(one[name] * 2.5)
    assert scaled["area_um2"] == pytest.approx(one["area_px"] * 2.5 ** 2)
    for name in ("area_px", "angle_deg", "solidity", "eccentricity", "centroid_x", "centroid_y", "mean_grey"):
        assert scaled[name] == pytest.approx(one[name])


def test_pieces_are_measured_as_their_union() -> None:
    square = np.ones((10, 10), bool)
    pair = np.zeros((10, 40), bool)
    pair[:, :10] = pair[:, 30:] = True
    one, two = measure_one(square), measure_one(pair)
    assert two["area_px"] == 200
    assert two["perimeter_um"] == pytest.approx(2 * one["perimeter_um"] - math.pi)
    assert two["feret_max_um"] == pytest.approx(math.hypot(39, 9) + 0.5)
    assert two["feret_min_um"] == pytest.approx(9.5)
    assert two["solidity"] == pytest.approx(0.5)


def test_several_objects_keep_their_order() -> None:
    bitmaps = [np.ones((3, 3), bool), np.ones((5, 2), bool), shape_bitmap("ellipse", 20, 20)]
    cols = measure(dets_of(bitmaps, [(0, 0), (10, 10), (30, 5)]), np.zeros((60, 60), np.uint8), 1.0)
    assert list(cols["area_px"]) == [9, 10, int(bitmaps[2].sum())]
    assert cols["centroid_x"][1] == pytest.approx(11.0)


def test_soft_masks_are_refused() -> None:
    import torch

    dets = Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64),
                      RoiMasks(torch.zeros(1, 28, 28)))
    with pytest.raises(TypeError, match="to_cropped"):
        measure(dets, np.zeros((10, 10), np.uint8), 1.0)
