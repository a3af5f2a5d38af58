"""refine_masks(): coarse or wrong-sized predicted masks snap to the object in the frame."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segplank.refine import refine_masks, split_touching
from segplank.structures import CroppedMasks, Detections, RoiMasks

SIZE = (150, 170)  # frame rows, columns
CENTRE = (85.3, 74.6)  # disc centre x, y
RADIUS = 50.0


def disc(centre: tuple[float, float] = CENTRE, radius: float = RADIUS, size: tuple[int, int] = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size[0], :size[1]]
    return (x + 0.5 - centre[0]) ** 2 + (y + 0.5 - centre[1]) ** 2 <= radius ** 2


def frame(truth: np.ndarray, background: float, value: float, noise: float,
          dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """A blurred object on a noisy flat background."""
    img = np.where(truth, value, background).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + np.random.default_rng(seed).normal(0, noise, truth.shape)
    info = np.iinfo(dtype)
    return np.clip(np.rint(img), info.min, info.max).astype(dtype)


def crop(full: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    return (int(cols[0]), int(rows[0])), full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def dets_of(*fulls: np.ndarray, extra: bool = False) -> Detections:
    origins, bitmaps = zip(*(crop(f) for f in fulls))
    masks = CroppedMasks(np.array(origins, np.int64), tuple(bitmaps))
    n = len(fulls)
    return Detections(masks.tight_boxes(), np.linspace(0.5, 0.9, n).astype(np.float32),
                      np.arange(n, dtype=np.int64), masks,
                      extra={"tag": np.arange(n) * 10} if extra else {})


def coarse(full: np.ndarray, shift: int = 3) -> np.ndarray:
    """What a 28×28 mask head gives: the object squeezed to 28×28, pasted back into a box
    `shift` px off."""
    (x, y), bitmap = crop(full)
    probs = cv2.resize(bitmap.astype(np.float32), (28, 28), interpolation=cv2.INTER_AREA)
    h, w = bitmap.shape
    box = np.array([[x + shift, y + shift, x + w + shift, y + h + shift]], np.float32)
    cropped = RoiMasks(torch.from_numpy(probs)[None]).to_cropped(box)
    return paste(cropped, 0, full.shape)


def paste(masks: CroppedMasks, i: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    out = np.zeros(size, bool)
    (x, y), b = masks.origins[i], masks.bitmaps[i]
    out[y:y + b.shape[0], x:x + b.shape[1]] = b[:size[0] - y, :size[1] - x]
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


PREDICTIONS = {
    "coarse 28x28, 3 px off": lambda: coarse(disc()),
    "too small": lambda: disc(radius=RADIUS - 3),
    "too large": lambda: disc(radius=RADIUS + 6),
}


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("polarity, background, value", [("dark_on_bright", 200, 120), ("bright_on_dark", 20, 100)])
def test_refined_mask_matches_the_object(kind: str, polarity: str, background: int, value: int) -> None:
    truth = disc()
    predicted = PREDICTIONS[kind]()
    out = refine_masks(dets_of(predicted), frame(truth, background, value, 3.0), polarity)
    assert iou(paste(out.masks, 0), truth) >= 0.95
    if kind != "coarse 28x28, 3 px off":
        assert iou(predicted, truth) < 0.9  # the refinement did the work


def test_sixteen_bit_frames_use_sixteen_bit_contrast() -> None:
    truth = disc()
    image = frame(truth, 40000, 20000, 300.0, np.uint16)
    out = refine_masks(dets_of(disc(radius=RADIUS - 3)), image, "dark_on_bright", contrast=2000)
    assert iou(paste(out.masks, 0), truth) >= 0.95


def test_object_cut_by_the_frame_edge() -> None:
    truth = disc(centre=(20.4, 74.6))
    predicted = disc(centre=(20.4, 74.6), radius=RADIUS - 3)
    out = refine_masks(dets_of(predicted), frame(truth, 200, 120, 3.0), "dark_on_bright")
    assert iou(paste(out.masks, 0), truth) >= 0.95
    assert out.boxes[0, 0] == 0 and tuple(out.masks.origins[0]) == (0, int(out.boxes[0, 1]))


def test_translucent_interior_is_filled() -> None:
    truth = disc()
    ring = truth & ~disc(radius=RADIUS - 8)  # a medusa bell: only its rim is dark
    out = refine_masks(dets_of(disc(radius=RADIUS - 3)), frame(ring, 200, 120, 3.0), "dark_on_bright")
    assert iou(paste(out.masks, 0), truth) >= 0.95


def test_pieces_not_touching_the_predicted_mask_are_dropped() -> None:
    truth = disc()
    # A speck inside the dilated zone, 4 px clear of the disc, so not joined to it.
    speck = disc(centre=(CENTRE[0] + RADIUS + 5.5, CENTRE[1]), radius=1.2)
    predicted = disc(radius=RADIUS - 1)
    out = refine_masks(dets_of(predicted), frame(truth | speck, 200, 100, 2.0), "dark_on_bright", dilate_px=8)
    refined = paste(out.masks, 0)
    assert not (refined & speck).any()
    assert iou(refined, truth) >= 0.95


def test_faint_object_keeps_its_predicted_mask() -> None:
    truth = disc()
    dets = dets_of(disc(radius=RADIUS - 3))
    out = refine_masks(dets, frame(truth, 200, 195, 1.0), "dark_on_bright", contrast=10)
    assert np.array_equal(out.masks.origins, dets.masks.origins)
    assert np.array_equal(out.masks.bitmaps[0], dets.masks.bitmaps[0])
    np.testing.assert_array_equal(out.boxes, dets.boxes)


def test_boxes_are_tight_and_other_fields_unchanged() -> None:
    a, b = disc(centre=(40.2, 40.7), radius=20), disc(centre=(120.6, 100.1), radius=25)
    dets = dets_of(disc(centre=(40.2, 40.7), radius=23), disc(centre=(120.6, 100.1), radius=22), extra=True)
    out = refine_masks(dets, frame(a | b, 200, 100, 2.0), "dark_on_bright")
    np.testing.assert_array_equal(out.boxes, out.masks.tight_boxes())
    for bitmap in out.masks.bitmaps:  # cropped to the object: every border row/column is used
        assert bitmap[0].any() and bitmap[-1].any() and bitmap[:, 0].any() and bitmap[:, -1].any()
    np.testing.assert_array_equal(out.scores, dets.scores)
    np.testing.assert_array_equal(out.labels, dets.labels)
    np.testing.assert_array_equal(out.extra["tag"], dets.extra["tag"])
    # Small discs: the fixed threshold sits ~1 px outside the blurred edge (see refine's notes).
    assert iou(paste(out.masks, 0), a) >= 0.85 and iou(paste(out.masks, 1), b) >= 0.9


def test_empty_detections() -> None:
    out = refine_masks(Detections.empty(), np.zeros((10, 10), np.uint8), "dark_on_bright")
    assert len(out) == 0 and out.boxes.shape == (0, 4) and isinstance(out.masks, CroppedMasks)


def test_one_pixel_object() -> None:
    image = np.full((20, 20), 200, np.uint8)
    image[7, 4] = 50
    out = refine_masks(dets_of(np.pad(np.ones((1, 1), bool), ((7, 12), (4, 15)))), image, "dark_on_bright")
    assert tuple(out.masks.origins[0]) == (4, 7) and out.masks.bitmaps[0].shape == (1, 1)


def test_masks_outside_the_frame_or_empty_are_kept() -> None:
    outside = np.ones((4, 4), bool)
    empty = np.zeros((3, 5), bool)
    masks = CroppedMasks(np.array([[500, 500], [2, 3]], np.int64), (np.pad(outside, 1), empty))
    dets = Detections(np.array([[500, 500, 506, 506], [2, 3, 7, 6]], np.float32), np.ones(2, np.float32),
                      np.zeros(2, np.int64), masks)
    out = refine_masks(dets, np.full((20, 20), 200, np.uint8), "dark_on_bright")
    assert tuple(out.masks.origins[0]) == (501, 501) and np.array_equal(out.masks.bitmaps[0], outside)
    assert tuple(out.masks.origins[1]) == (2, 3) and out.masks.bitmaps[1].shape == (3, 5)
    np.testing.assert_array_equal(out.boxes, out.masks.tight_boxes())


def test_grow_follows_an_organism_boxed_in_part():
    """A detector that boxes only the trunk of a long organism: growth recovers the whole."""


    img = np.full((400, 600), 210, np.uint8)
    whole = np.zeros_like(img)
    cv2.ellipse(whole, (300, 200), (250, 12), 0, 0, 360, 1, -1)
    img[whole == 1] = 90
    part = whole[188:213, 50:150].astype(bool)  # the left end only
    dets = Detections(boxes=np.array([[50, 188, 150, 213]], np.float32), scores=np.ones(1, np.float32),
                      labels=np.ones(1, np.int64), masks=CroppedMasks(np.array([[50, 188]]), (part,)))
    plain = refine_masks(dets, img, "dark_on_bright", 4, 10.0)
    grown = refine_masks(dets, img, "dark_on_bright", 4, 10.0, grow=True)
    b = grown.masks.bitmaps[0]
    assert b.sum() == pytest.approx(whole.sum(), rel=0.02)
    assert plain.masks.bitmaps[0].sum() < 0.5 * whole.sum()


def test_grow_refuses_a_background_gradient():

    img = np.tile(np.linspace(230, 120, 600).astype(np.uint8), (400, 1))  # strong vignetting
    img[190:210, 100:140] = 60
    part = np.ones((20, 40), bool)
    dets = Detections(boxes=np.array([[100, 190, 140, 210]], np.float32), scores=np.ones(1, np.float32),
                      labels=np.ones(1, np.int64), masks=CroppedMasks(np.array([[100, 190]]), (part,)))
    grown = refine_masks(dets, img, "dark_on_bright", 4, 10.0, grow=True)
    assert grown.masks.bitmaps[0].sum() < 3 * part.sum()


def two_touching() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two discs (r 20 and 25) and the 3 px-wide bridge (an antenna) that joins them."""
    size = (120, 200)
    a, b = disc(centre=(50.4, 60.2), radius=20, size=size), disc(centre=(140.7, 58.9), radius=25, size=size)
    bridge = np.zeros(size, bool)
    bridge[58:61, 60:130] = True
    return a, b, bridge


def test_split_cuts_touching_organisms_apart():
    a, b, bridge = two_touching()
    joined = dets_of(a | b | bridge, extra=True)
    out = split_touching(joined, 8)
    assert len(out) == 2
    pieces = sorted((paste(out.masks, i, a.shape) for i in range(2)), key=lambda m: np.argwhere(m)[:, 1].mean())
    # each body gets its own half of the bridge; nothing of the mask is lost or doubled
    assert iou(pieces[0], a) >= 0.8 and iou(pieces[1], b) >= 0.85
    assert not (pieces[0] & pieces[1]).any() and np.array_equal(pieces[0] | pieces[1], a | b | bridge)
    np.testing.assert_array_equal(out.boxes, out.masks.tight_boxes())
    # the pieces inherit their parent's row
    assert out.labels.tolist() == [0, 0] and out.extra["tag"].tolist() == [0, 0]


def test_split_leaves_single_and_thin_organisms_alone():
    a, _, _ = two_touching()
    ellipse = np.zeros((120, 400), np.uint8)
    cv2.ellipse(ellipse, (200, 60), (150, 30), 10, 0, 360, 1, -1)  # elongated but one body
    thin = np.zeros((120, 400), np.uint8)
    cv2.ellipse(thin, (200, 60), (180, 5), 0, 0, 360, 1, -1)  # a chaetognath narrower than the opening
    out = split_touching(dets_of(a, ellipse.astype(bool), thin.astype(bool)), 8)
    assert len(out) == 0 and out.boxes.shape == (0, 4)
    assert len(split_touching(dets_of(a), 0)) == 0
