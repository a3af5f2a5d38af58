"""Tile grid with overlap, and a cheap foreground test that skips tiles holding nothing.

The grid is one pure function returning a ``(T, 4)`` int array of windows; the last row
and column move inward so every tile is full size (as SAHI's ``get_slice_bboxes``), and
tile results map back to the frame with one vectorised ``boxes += offsets[tile_id]``.
"""
from __future__ import annotations

import cv2
import numpy as np

from .config import Polarity


def _starts(length: int, tile: int, stride: int) -> np.ndarray:
    if length <= tile:
        return np.zeros(1, np.int64)
    starts = np.arange(0, length - tile + 1, stride, dtype=np.int64)
    if starts[-1] + tile < length:
        starts = np.append(starts, length - tile)
    return starts


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> np.ndarray:
    """Windows ``(T, 4)`` int64, x0 y0 x1 y1, row-major; tiles never extend past the frame.

    Neighbouring tiles share at least ``overlap`` pixels. A frame smaller than a tile is one
    window of the frame's own size.
    """
    if tile_size <= overlap:
        raise ValueError(f"tile_size ({tile_size}) must exceed overlap ({overlap})")
    stride = tile_size - overlap
    ys = _starts(height, tile_size, stride)
    xs = _starts(width, tile_size, stride)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    x0, y0 = x0.ravel(), y0.ravel()
    return np.stack([x0, y0, np.minimum(x0 + tile_size, width), np.minimum(y0 + tile_size, height)], 1)


def to_model_input(image: np.ndarray, polarity: Polarity) -> np.ndarray:
    """Float32 in [0, 1] with objects dark on a bright background, whatever the camera.

    Bright-on-dark (UVP) frames are inverted so that one model serves both polarities.
    """
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    x = image.astype(np.float32) * (1.0 / scale)
    return 1.0 - x if polarity == "bright_on_dark" else x


def foreground_map(image: np.ndarray, polarity: Polarity, contrast: float, downsample: int = 4) -> np.ndarray:
    """Downsampled bool map of pixels that stand out from the local background.

    The background is a grey closing (dark objects) or opening (bright objects) with a
    kernel larger than most objects, so vignetting, line-scan streaks and slow drift cancel;
    the edges of objects larger than the kernel still show.
    """
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // downsample), max(1, h // downsample)), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    if image.dtype == np.uint16:
        small *= 255.0 / 65535.0
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    if polarity == "dark_on_bright":
        background = cv2.morphologyEx(small, cv2.MORPH_CLOSE, k)
        diff = background - small
    else:
        background = cv2.morphologyEx(small, cv2.MORPH_OPEN, k)
        diff = small - background
    return diff > contrast


def occupied_tiles(fg: np.ndarray, windows: np.ndarray, downsample: int, min_pixels: int) -> np.ndarray:
    """(T,) bool: tiles whose window holds at least ``min_pixels`` foreground (downsampled) pixels.

    One integral image answers every window in O(1).
    """
    ii = cv2.integral(fg.astype(np.uint8), sdepth=cv2.CV_32S)
    h, w = fg.shape
    x0 = np.clip(windows[:, 0] // downsample, 0, w)
    y0 = np.clip(windows[:, 1] // downsample, 0, h)
    x1 = np.clip(-(-windows[:, 2] // downsample), 0, w)
    y1 = np.clip(-(-windows[:, 3] // downsample), 0, h)
    counts = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return counts >= min_pixels


def component_boxes(fg: np.ndarray, downsample: int, min_pixels: int = 1, pad: int | None = None) -> np.ndarray:
    """(K, 4) float32 frame boxes, x0 y0 x1 y1, of the 8-connected pieces of a foreground map.

    These are the boxes a threshold segmentation (the classic ISIIS pipeline) would cut: on
    clean shadowgraph frames they hold whole organisms that a region proposal network, with
    its fixed anchors, misses when they are long, thin or large. They go to the detector's
    box head as extra proposals; the box head still decides what, if anything, each one is.
    """
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    stats = stats[1:]
    stats = stats[stats[:, cv2.CC_STAT_AREA] >= min_pixels]
    pad = downsample if pad is None else pad
    x0 = stats[:, 0] * downsample - pad
    y0 = stats[:, 1] * downsample - pad
    x1 = (stats[:, 0] + stats[:, 2]) * downsample + pad
    y1 = (stats[:, 1] + stats[:, 3]) * downsample + pad
    return np.stack([x0, y0, x1, y1], 1).astype(np.float32).reshape(-1, 4)


def tile_proposals(boxes: np.ndarray, windows: np.ndarray, min_size: float = 4.0) -> list[np.ndarray]:
    """Per window, the frame boxes that overlap it, clipped and in tile pixels."""
    out = []
    for x0, y0, x1, y1 in windows:
        b = boxes - np.array([x0, y0, x0, y0], np.float32)
        b[:, 0::2] = b[:, 0::2].clip(0, x1 - x0)
        b[:, 1::2] = b[:, 1::2].clip(0, y1 - y0)
        ok = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
        out.append(b[ok])
    return out


def crop_tiles(image: np.ndarray, windows: np.ndarray, tile_size: int) -> np.ndarray:
    """(T, tile, tile) stack of the windows; frames smaller than a tile are padded with edge values."""
    out = np.empty((len(windows), tile_size, tile_size), image.dtype)
    for i, (x0, y0, x1, y1) in enumerate(windows):
        crop = image[y0:y1, x0:x1]
        if crop.shape != (tile_size, tile_size):
            crop = cv2.copyMakeBorder(crop, 0, tile_size - crop.shape[0], 0, tile_size - crop.shape[1],
                                      cv2.BORDER_REPLICATE)
        out[i] = crop
    return out
