"""Per-frame illumination of area cameras: estimate it, divide (or subtract) it out.

An area camera's frame is lit unevenly: a shadowgraph's corners can fall to 60 % of its
centre, and a lit frame's dark level drifts. Every later test is in grey levels from the
background (the empty-tile test, the model's input, refinement's threshold, the size of a
mask), so on an uncorrected frame the corners hide faint organisms and a refined mask can
run down the brightness gradient as if it were an organism. This is the area camera's
counterpart of the line stream's running column flat-field (``stream.ColumnFlatField``).

The estimate is the background with the objects taken out: the frame averaged down by
``scale``, a grey closing (dark objects on a bright field) or opening (lit objects) that
removes anything smaller than ``object_px``, smoothed, and brought back to full size. A
shadowgraph is divided by it (the objects' transmission stays), a lit frame has it
subtracted (the objects' light stays); both are set to the frame's median background level.
"""
from __future__ import annotations

import cv2
import numpy as np

from .config import Polarity

SCALE = 8  # px of the frame per px of the estimate
OBJECT_PX = 160  # objects up to this size (px) are taken out of the estimate


def estimate_illumination(image: np.ndarray, polarity: Polarity, scale: int = SCALE,
                          object_px: int = OBJECT_PX) -> np.ndarray:
    """float32 (H, W) background level of the frame, without its objects."""
    h, w = image.shape
    sh, sw = max(1, round(h / scale)), max(1, round(w / scale))
    small = cv2.resize(image.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
    k = max(3, int(object_px / scale) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    op = cv2.MORPH_CLOSE if polarity == "dark_on_bright" else cv2.MORPH_OPEN
    # continue the frame's slope past its edges (odd reflection): a closing against a
    # replicated edge would take the brighter level a kernel inside for the edge's own
    # (a median first: odd reflection turns a dark object near the edge into a bright one,
    # which the closing would keep)
    p = k // 2 + 1
    smooth = cv2.medianBlur(small, 5) if min(sh, sw) >= 5 else small
    padded = np.pad(smooth, p, mode="reflect", reflect_type="odd") if min(sh, sw) > p else \
        np.pad(smooth, p, mode="edge")
    bg = cv2.morphologyEx(padded, op, kernel)[p:-p, p:-p]
    bg = cv2.GaussianBlur(bg, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)


def correct_illumination(image: np.ndarray, polarity: Polarity, scale: int = SCALE,
                         object_px: int = OBJECT_PX) -> np.ndarray:
    """The frame with its illumination divided out (shadowgraph) or subtracted (lit), in its dtype."""
    image = np.asarray(image)
    bg = estimate_illumination(image, polarity, scale, object_px)
    level = float(np.median(bg))
    if polarity == "dark_on_bright":
        out = image.astype(np.float32) * (level / np.maximum(bg, 1.0))
    else:
        out = image.astype(np.float32) - bg + level
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)


__all__ = ["correct_illumination", "estimate_illumination"]
