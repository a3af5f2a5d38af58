"""Shared test helpers: a perfect model that sees ground-truth masks cut into tiles."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from segplank.structures import Detections, RoiMasks


def perfect_tile_detections(masks: list, windows: np.ndarray, labels: list[int] | None = None,
                            mask_size: int = 28) -> tuple[list[Detections], np.ndarray]:
    """What an ideal model would return per tile: each object's visible part, box and mask.

    masks are full-frame bool arrays, or (x0, y0, bitmap) crops for big frames.
    """
    out, tile_ids = [], []
    crops = [m if isinstance(m, tuple) else (0, 0, m) for m in masks]
    for t, (x0, y0, x1, y1) in enumerate(windows):
        boxes, rois, labs = [], [], []
        for k, (ox, oy, bm) in enumerate(crops):
            h, w = bm.shape
            if ox >= x1 or oy >= y1 or ox + w <= x0 or oy + h <= y0:
                continue
            part = np.zeros((y1 - y0, x1 - x0), bool)
            sy0, sx0 = max(oy, y0), max(ox, x0)
            sy1, sx1 = min(oy + h, y1), min(ox + w, x1)
            part[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = bm[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox]
            if not part.any():
                continue
            ys, xs = np.nonzero(part)
            bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            crop = part[by0:by1, bx0:bx1].astype(np.float32)
            rois.append(cv2.resize(crop, (mask_size, mask_size), interpolation=cv2.INTER_AREA))
            boxes.append([bx0, by0, bx1, by1])
            labs.append(1 if labels is None else labels[k])
        n = len(boxes)
        out.append(Detections(
            boxes=torch.tensor(np.array(boxes, np.float32).reshape(-1, 4)),
            scores=torch.linspace(0.9, 0.8, n) if n else torch.zeros(0),
            labels=torch.tensor(labs, dtype=torch.long),
            masks=RoiMasks(torch.tensor(np.array(rois, np.float32).reshape(-1, mask_size, mask_size))),
        ))
        tile_ids.append(t)
    return out, np.array(tile_ids)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def paste(origin: np.ndarray, bitmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    full = np.zeros(shape, bool)
    x0, y0 = int(origin[0]), int(origin[1])
    h, w = bitmap.shape
    ys, xs = slice(max(0, y0), min(shape[0], y0 + h)), slice(max(0, x0), min(shape[1], x0 + w))
    full[ys, xs] = bitmap[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return full
