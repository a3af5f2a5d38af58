"""The user's own frames behind composed organisms, their own objects marked "ignore".

A frame of the user's camera shows what no generator draws quite right: its vignetting, its
noise and compression, its marine snow. Drawn behind a library's organisms it makes training
frames that look like the user's, but the objects it already holds are labelled by no one:
learnt as background, the detector would learn to miss them. So each of them (a component
standing out from the frame's own illumination, ``illumination.py``) becomes an ignore
region, a COCO ``iscrowd`` annotation, which ``segplank train`` neither fits nor counts as
background.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..illumination import estimate_illumination

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IGNORE_CONTRAST = 12.0  # grey levels from the frame's illumination that make a pixel an object's
IGNORE_MIN_PX = 4  # smaller specks are noise
IGNORE_GROW_PX = 2  # an object's faint edge is part of its ignore region


@lru_cache(maxsize=4)
def background_files(folder: str) -> tuple[str, ...]:
    files = tuple(sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES))
    if not files:
        raise ValueError(f"{folder}: no frame (.png, .jpg, .tif, .bmp) to draw behind the organisms")
    return files


@lru_cache(maxsize=8)
def _load(path: str, height: int, width: int, polarity: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 frame at (height, width), bool ignore map): cropped at the centre, mirrored to fill."""
    from ..library import decode_grey

    img = decode_grey(Path(path).read_bytes())
    if img is None:
        raise ValueError(f"{path}: not a readable frame; remove it from the backgrounds folder")
    h, w = img.shape
    if h < height or w < width:
        img = cv2.copyMakeBorder(img, 0, max(0, height - h), 0, max(0, width - w), cv2.BORDER_REFLECT)
        h, w = img.shape
    y0, x0 = (h - height) // 2, (w - width) // 2
    img = img[y0:y0 + height, x0:x0 + width]
    light = estimate_illumination(img, polarity)
    contrast = light - img if polarity == "dark_on_bright" else img - light
    fg = (contrast > IGNORE_CONTRAST).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < IGNORE_MIN_PX)
    fg[np.isin(labels, small[small > 0])] = 0
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * IGNORE_GROW_PX + 1,) * 2)
    return img.astype(np.float32), cv2.dilate(fg, k).astype(bool)


def user_background(folder: str, k: int, height: int, width: int, polarity: str,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(float32 background, bool ignore map) of frame ``k``: one of the folder's frames, turned."""
    files = background_files(folder)
    img, ignore = _load(files[int(rng.integers(len(files)))], height, width, polarity)
    if rng.random() < 0.5:
        img, ignore = img[:, ::-1], ignore[:, ::-1]
    if rng.random() < 0.5:
        img, ignore = img[::-1], ignore[::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(ignore)


def ignore_regions(ignore: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(x0, y0, tight bool mask) per connected ignore region."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ignore.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        x, y, w, h = stats[i, :4]
        out.append((int(x), int(y), labels[y:y + h, x:x + w] == i))
    return out


__all__ = ["background_files", "ignore_regions", "user_background"]
