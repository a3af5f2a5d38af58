"""Parts of one object that meet along a line: the pure functions both joins share.

Two places cut objects: tile seams inside a frame (``stitch.py``, torch, soft ``RoiMasks``)
and frame cuts of a line stream (``stream.py``, numpy, full-resolution ``CroppedMasks``).
Each decides which parts meet in its own way (mask agreement in a shared window; footprints
on the cut); from there the steps are the same and live here: move detections by an offset
into a common frame of reference, group the linked parts (connected components), and give
each group its tight box.
"""
from __future__ import annotations

import numpy as np
import torch

from .structures import CroppedMasks, Detections


def connected_components(n: int, i, j):
    """(n,) component id (the smallest member index) of the graph on ``n`` nodes with edges (i, j).

    Torch tensors (on any device) or numpy arrays, answered in kind. Min-label propagation with
    pointer jumping: a few batched scatters, no Python loop over edges.
    """
    as_numpy = isinstance(i, np.ndarray)
    ti = torch.as_tensor(np.asarray(i, np.int64)) if as_numpy else i
    tj = torch.as_tensor(np.asarray(j, np.int64)) if as_numpy else j
    comp = torch.arange(n, device=ti.device)
    while len(ti):
        m = torch.minimum(comp[ti], comp[tj])
        new = comp.clone()
        new.scatter_reduce_(0, ti, m, reduce="amin")
        new.scatter_reduce_(0, tj, m, reduce="amin")
        new = new[new]
        if torch.equal(new, comp):
            break
        comp = new
    return comp.numpy() if as_numpy else comp


def shifted(dets: Detections, dx, dy) -> Detections:
    """The detections moved by (dx, dy) pixels: scalars, or one offset per detection.

    Boxes move; ``CroppedMasks`` origins move with them; ``RoiMasks`` are box-relative and stay.
    """
    if len(dets) == 0 or (np.ndim(dx) == 0 and np.ndim(dy) == 0 and dx == 0 and dy == 0):
        return dets
    boxes = dets.boxes
    if isinstance(boxes, torch.Tensor):
        off = torch.stack(torch.broadcast_tensors(torch.as_tensor(dx, dtype=boxes.dtype, device=boxes.device),
                                                  torch.as_tensor(dy, dtype=boxes.dtype, device=boxes.device)), -1)
        boxes = boxes + off.reshape(-1, 2).repeat(1, 2)
    else:
        off = np.stack(np.broadcast_arrays(np.asarray(dx), np.asarray(dy)), -1).reshape(-1, 2)
        boxes = np.asarray(boxes, np.float32) + np.tile(off, 2).astype(np.float32)
    m = dets.masks
    if isinstance(m, CroppedMasks):
        step = np.asarray(off.cpu() if isinstance(off, torch.Tensor) else off, np.int64).reshape(-1, 2)
        m = CroppedMasks(m.origins + step, m.bitmaps)
    return dets.replace(boxes=boxes, masks=m)


def group_boxes(boxes, group, g: int):
    """(g, 4) tight box of each group: ``boxes`` (N, 4) x0 y0 x1 y1, ``group`` (N,) in [0, g)."""
    if isinstance(boxes, torch.Tensor):
        dev, idx = boxes.device, group[:, None].expand(-1, 2)
        out = torch.empty(g, 4, device=dev, dtype=boxes.dtype)
        out[:, :2] = torch.full((g, 2), float("inf"), device=dev, dtype=boxes.dtype).scatter_reduce(
            0, idx, boxes[:, :2], "amin")
        out[:, 2:] = torch.full((g, 2), float("-inf"), device=dev, dtype=boxes.dtype).scatter_reduce(
            0, idx, boxes[:, 2:], "amax")
        return out
    boxes = np.asarray(boxes, np.float32)
    out = np.empty((g, 4), np.float32)
    out[:, :2], out[:, 2:] = np.inf, -np.inf
    np.minimum.at(out[:, :2], group, boxes[:, :2])
    np.maximum.at(out[:, 2:], group, boxes[:, 2:])
    return out
