"""Re-segment each detected object at full resolution inside its predicted mask.

The model's 28×28 mask head is coarse on an organism hundreds of pixels long, and the
morphology is what ecologists publish, so each mask is redrawn from the frame's own grey
levels before measuring, as the ISIIS T-CNN pipeline thresholds inside the CNN's boxes:

1. crop the frame around the predicted mask, with a margin (per object, never full-frame);
2. estimate the local background: median of the crop outside the dilated predicted mask
   (the crop's margin is twice ``dilate_px`` + 2, so a ring of background always remains
   unless the frame's edge cuts it; with too few such pixels, a high or low percentile of
   the whole crop stands in);
3. object = pixels at least ``contrast`` grey levels darker (``dark_on_bright``) or brighter
   (``bright_on_dark``) than that background, inside the predicted mask dilated by
   ``dilate_px``;
4. keep the 8-connected pieces that touch the predicted mask, fill their holes (a
   translucent medusa bell is one object);
5. nothing left (a faint object): keep the predicted mask as it was;
6. with ``grow``, the object may extend past the dilated prediction: the pieces touching it
   are followed through a window up to a few times the object's size (the detector often
   boxes part of an organism: a trunk without its tail, one side of a bell, a chaetognath
   cut into tiles). A piece that reaches the window's edge at its largest size, or fills
   half of it (a background gradient, not an organism), is not trusted: the object keeps
   its dilated-prediction mask.

``split_touching`` cuts a refined mask that holds two organisms touching each other into its
pieces (a morphological opening, then each pixel to its nearest body), for the vignette
classifier to judge against the whole.

``contrast`` is in grey levels of the frame's own dtype: 10 on an 8-bit frame is about 2560
on a 16-bit one. The fixed threshold catches translucent tissue, and so lies about one blur
width outside the half-contrast edge of a sharp, dark object.
"""
from __future__ import annotations

import cv2
import numpy as np

from segplank.config import Polarity
from segplank.structures import CroppedMasks, Detections

_MIN_BACKGROUND_PX = 32  # fewer pixels outside the dilated mask than this: use a percentile
_FALLBACK_PERCENTILE = {"dark_on_bright": 90.0, "bright_on_dark": 10.0}


def refine_masks(dets: Detections, image: np.ndarray, polarity: Polarity, dilate_px: int = 4,
                 contrast: float = 10.0, grow: bool | np.ndarray = False) -> Detections:
    """Detections with each mask re-thresholded from ``image`` and boxes fitted tightly to it.

    Masks come back as ``CroppedMasks`` cropped to the refined object, boxes are their tight
    boxes; scores, labels and extra columns are unchanged.
    """
    if not isinstance(dets.masks, CroppedMasks):
        raise TypeError("refine_masks() needs full-resolution CroppedMasks; convert soft masks first with "
                        "dets.masks.to_cropped(boxes)")
    if polarity not in _FALLBACK_PERCENTILE:
        raise ValueError(f"polarity must be one of {sorted(_FALLBACK_PERCENTILE)}, got {polarity!r}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"refine_masks() needs a 2-D grey frame, got an array of shape {image.shape}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
    origins, bitmaps = [], []
    grows = np.broadcast_to(np.asarray(grow, bool), (len(dets),))
    for bitmap, (ox, oy), g in zip(dets.masks.bitmaps, dets.masks.origins, grows):
        origin, refined = _refine_one(bitmap, int(ox), int(oy), image, polarity, kernel, dilate_px, contrast, bool(g))
        origins.append(origin)
        bitmaps.append(refined)
    masks = CroppedMasks(np.array(origins, np.int64).reshape(-1, 2), tuple(bitmaps))
    return dets.numpy().replace(boxes=_extents(masks), masks=masks)


def _refine_one(bitmap: np.ndarray, ox: int, oy: int, image: np.ndarray, polarity: Polarity,
                kernel: np.ndarray, dilate_px: int, contrast: float,
                grow: bool = False) -> tuple[tuple[int, int], np.ndarray]:
    """(origin, bitmap) of one refined object, cropped to its pixels; the predicted mask,
    cropped likewise, when nothing stands out or it lies outside the frame."""
    margin = 2 * dilate_px + 2
    h, w = bitmap.shape
    x0, y0 = max(ox - margin, 0), max(oy - margin, 0)
    x1, y1 = min(ox + w + margin, image.shape[1]), min(oy + h + margin, image.shape[0])
    if x1 <= x0 or y1 <= y0:  # the mask lies outside the frame: nothing to look at
        return _tight_or_empty(bitmap, ox, oy)
    crop = image[y0:y1, x0:x1]
    predicted = _paste(bitmap, ox - x0, oy - y0, crop.shape)
    if not predicted.any():
        return _tight_or_empty(bitmap, ox, oy)
    allowed = cv2.dilate(predicted, kernel)
    background = _background(crop, allowed, polarity)
    candidate = _contrasted(crop, background, contrast, polarity)
    candidate &= allowed.view(bool)
    kept = _touching(candidate.view(np.uint8), predicted)
    if kept is None:
        return _tight(predicted, x0, y0)
    if grow:
        grown = _grow(kept, x0, y0, image, background, contrast, polarity)
        if grown is not None:
            return grown
    return _tight(fill_holes(kept), x0, y0)


def split_touching(dets: Detections, radius: int) -> Detections:
    """The pieces of each mask that a morphological opening of ``radius`` px pulls apart.

    Touching organisms (an antenna on a tail) refine into one mask, which matches neither at
    IoU 0.5. The opening cuts the thin bridge between their bodies; every pixel of the mask
    then goes to the nearest surviving body, so a piece keeps its own antennae and edges.
    Masks the opening leaves in one piece (or erases: a thin chaetognath) give nothing.
    Each piece inherits its parent's row (label, score, extra columns); the vignette
    classifier is what decides between a fusion and its pieces.
    """
    if not isinstance(dets.masks, CroppedMasks):
        raise TypeError("split_touching() needs CroppedMasks")
    if radius <= 0:
        return dets.numpy()[np.zeros(0, np.int64)]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    parents, origins, bitmaps = [], [], []
    for i, (bitmap, (ox, oy)) in enumerate(zip(dets.masks.bitmaps, dets.masks.origins)):
        if min(bitmap.shape) <= 2 * radius:  # no body fits: nothing to cut apart
            continue
        for x, y, piece in _pieces(np.ascontiguousarray(bitmap, np.uint8), kernel):
            parents.append(i)
            origins.append((int(ox) + x, int(oy) + y))
            bitmaps.append(piece)
    if not parents:
        return dets.numpy()[np.zeros(0, np.int64)]
    masks = CroppedMasks(np.array(origins, np.int64), tuple(bitmaps))
    return dets.numpy()[np.array(parents)].replace(boxes=_extents(masks), masks=masks)


def _pieces(mask: np.ndarray, kernel: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(x, y, cropped bitmap) of each piece of ``mask`` (uint8 0/1) when its opening has two bodies or more."""
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, bodies = cv2.connectedComponents(opened, connectivity=8)
    if count < 3:
        return []
    # every pixel to its nearest body: the label of the nearest zero of ``not body``
    _, nearest = cv2.distanceTransformWithLabels((bodies == 0).view(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    body_of = np.zeros(int(nearest.max()) + 1, np.int32)
    body_of[nearest[bodies > 0]] = bodies[bodies > 0]
    owner = body_of[nearest] * mask
    out = []
    for b in range(1, count):
        (x, y), bitmap = _tight((owner == b).astype(np.uint8), 0, 0)
        out.append((x, y, bitmap))
    return out


def _grow(seed: np.ndarray, sx: int, sy: int, image: np.ndarray, background: float, contrast: float,
          polarity: Polarity, steps: int = 3, fill_limit: float = 0.5) -> tuple[tuple[int, int], np.ndarray] | None:
    """The pieces connected to ``seed`` (placed at sx, sy), followed through growing windows.

    Returns None when the piece is not closed inside the largest window, or fills more
    than ``fill_limit`` of it: then it is background, not an organism.
    """
    h, w = seed.shape
    H, W = image.shape
    pad = max(h, w)
    for _ in range(steps):
        x0, y0 = max(sx - pad, 0), max(sy - pad, 0)
        x1, y1 = min(sx + w + pad, W), min(sy + h + pad, H)
        crop = image[y0:y1, x0:x1]
        kept = _touching(_contrasted(crop, background, contrast, polarity).view(np.uint8),
                         _paste(seed, sx - x0, sy - y0, crop.shape))
        if kept is None:
            return None
        open_edges = ((x0 > 0 and kept[:, 0].any()) or (y0 > 0 and kept[0].any())
                      or (x1 < W and kept[:, -1].any()) or (y1 < H and kept[-1].any()))
        if not open_edges:
            if cv2.countNonZero(kept) > fill_limit * kept.size:
                return None
            return _tight(fill_holes(kept), x0, y0)
        pad *= 2
    return None


def _paste(bitmap: np.ndarray, dx: int, dy: int, shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 canvas of ``shape`` with ``bitmap`` at column dx, row dy (clipped)."""
    canvas = np.zeros(shape, np.uint8)
    h, w = bitmap.shape
    cx0, cy0 = max(dx, 0), max(dy, 0)
    cx1, cy1 = min(dx + w, shape[1]), min(dy + h, shape[0])
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = bitmap[cy0 - dy:cy1 - dy, cx0 - dx:cx1 - dx]
    return canvas


def _background(crop: np.ndarray, allowed: np.ndarray, polarity: Polarity) -> float:
    """Robust local background: median outside the dilated mask, else a percentile of the crop.

    The percentile sits on the background's side (bright for shadowgraphs, dark for lit
    frames) so an object filling its crop does not drag the estimate into itself.
    """
    outside = (allowed == 0).view(np.uint8)
    count = cv2.countNonZero(outside)
    if count < _MIN_BACKGROUND_PX:
        return float(np.percentile(crop, _FALLBACK_PERCENTILE[polarity]))
    if crop.dtype == np.uint8:  # a 256-bin histogram is ~10x faster than a partial sort
        cumulative = np.cumsum(cv2.calcHist([crop], [0], outside, [256], [0, 256]).ravel())
        return float(np.searchsorted(cumulative, count / 2))
    return float(np.median(crop[outside.view(bool)]))


def _contrasted(crop: np.ndarray, background: float, contrast: float, polarity: Polarity) -> np.ndarray:
    """bool mask of the pixels at least ``contrast`` darker/brighter than ``background``.

    Integer frames compare against an integer level of their own dtype (no float copy).
    """
    dark = polarity == "dark_on_bright"
    level = background - contrast if dark else background + contrast
    if np.issubdtype(crop.dtype, np.integer):
        info = np.iinfo(crop.dtype)
        level = np.floor(level) if dark else np.ceil(level)
        if level < info.min or level > info.max:
            return np.zeros(crop.shape, bool)
        level = crop.dtype.type(level)
    return crop <= level if dark else crop >= level


def _touching(candidate: np.ndarray, predicted: np.ndarray) -> np.ndarray | None:
    """uint8 mask of the 8-connected pieces of ``candidate`` that overlap ``predicted``."""
    count, labels = cv2.connectedComponents(candidate, connectivity=8)
    if count < 2:
        return None
    keep = np.zeros(count, np.uint8)
    keep[labels[predicted != 0]] = 1
    keep[0] = 0  # the background label
    if not keep.any():
        return None
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole inside its outer contours filled."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def _extents(masks: CroppedMasks) -> np.ndarray:
    """(N, 4) float32 boxes of bitmaps already cropped to their pixels: ``tight_boxes()``
    without scanning them again."""
    shapes = np.array([b.shape[::-1] for b in masks.bitmaps], np.int64).reshape(-1, 2)
    return np.concatenate([masks.origins, masks.origins + shapes], axis=1).astype(np.float32)


def _tight_or_empty(bitmap: np.ndarray, ox: int, oy: int) -> tuple[tuple[int, int], np.ndarray]:
    """A predicted bitmap kept as it is, but cropped to its pixels if it has any."""
    mask = np.ascontiguousarray(bitmap != 0).view(np.uint8)
    return _tight(mask, ox, oy) if mask.any() else ((ox, oy), bitmap)


def _tight(mask: np.ndarray, x0: int, y0: int) -> tuple[tuple[int, int], np.ndarray]:
    """(frame origin, bool bitmap) of the mask cropped to its set pixels (never empty here)."""
    x, y, w, h = cv2.boundingRect(mask)
    return (x0 + x, y0 + y), mask[y:y + h, x:x + w].astype(bool)
