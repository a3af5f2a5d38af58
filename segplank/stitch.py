"""Tile results → frame detections: objects cut by seams merged, overlap duplicates removed.

Decisions are made where both tiles saw the same pixels. Two detections from neighbouring
tiles are parts of one object when their masks agree inside the tiles' shared window
(mask IoU restricted to that window): an object cut by tile A's border is still whole in
that window for both tiles, while two organisms touching across the seam give disjoint
masks there and stay two. Boxes alone cannot tell those apart for slender plankton.
Detections of one tile that overlap strongly (the same object under two classes) are
duplicates. Matched parts are grouped (connected components), and each group becomes one
detection: union box, highest score and its label, union of the soft masks resampled
into the union box.

Everything is batched torch on the detections' device; shapes are in the docstrings.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .joins import connected_components, group_boxes, shifted
from .structures import Detections, FrameInfo, RoiMasks


def offset_tiles(tile_dets: list[Detections], windows: np.ndarray, tile_ids: np.ndarray) -> Detections:
    """Concatenate per-tile detections into frame pixels; adds the ``tile`` column.

    tile_dets[k] came from tile ``tile_ids[k]`` whose window is ``windows[tile_ids[k]]``.
    """
    if not tile_dets:
        return Detections(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long),
                          masks=RoiMasks(torch.zeros(0, 28, 28)), extra={"tile": torch.zeros(0, dtype=torch.long)})
    dev = tile_dets[0].boxes.device
    counts = torch.tensor([len(d) for d in tile_dets], device=dev)
    tile = torch.repeat_interleave(torch.as_tensor(tile_ids, device=dev), counts)
    dets = Detections.cat([d.replace(extra={}) for d in tile_dets])
    origin = torch.as_tensor(windows[:, :2], dtype=torch.float32, device=dev)[tile]
    extra = {k: torch.cat([d.extra[k] for d in tile_dets]) for k in tile_dets[0].extra}
    return shifted(dets, origin[:, 0], origin[:, 1]).replace(extra={**extra, "tile": tile})


def candidate_pairs(boxes: torch.Tensor, tile: torch.Tensor,
                    windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (i < j) whose boxes overlap inside the window both tiles saw.

    boxes (N, 4) float frame px; tile (N,) long; windows (T, 4) float.
    Returns i (P,), j (P,) long (sorted by i, then j) and the shared windows (P, 4) float.

    Sweep and prune: boxes sorted by left edge, each paired only with the boxes whose left
    edge falls inside its own x-range (one ``searchsorted``), then tested in y. The work
    follows the pairs that share a column of the frame, not all N² pairs, so a frame of
    thousands of objects costs about linear time.
    """
    n = len(boxes)
    dev = boxes.device
    order = torch.argsort(boxes[:, 0], stable=True)
    x0 = boxes[order, 0].contiguous()
    stop = torch.searchsorted(x0, boxes[order, 2].contiguous(), side="left")  # first left edge at or past x1
    first = torch.arange(1, n + 1, device=dev)
    count = (stop - first).clamp(min=0)
    k = torch.repeat_interleave(torch.arange(n, device=dev), count)
    step = torch.arange(len(k), device=dev) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    a, b = order[k], order[first[k] + step]
    i, j = torch.minimum(a, b), torch.maximum(a, b)
    overlap = (torch.minimum(boxes[i, 2:], boxes[j, 2:]) - torch.maximum(boxes[i, :2], boxes[j, :2]) > 0).all(-1)
    i, j = i[overlap], j[overlap]
    key = torch.argsort(i * n + j)
    i, j = i[key], j[key]
    wi, wj = windows[tile[i]], windows[tile[j]]
    shared = torch.cat([torch.maximum(wi[:, :2], wj[:, :2]), torch.minimum(wi[:, 2:], wj[:, 2:])], 1)
    inter = torch.cat([torch.maximum(boxes[i, :2], boxes[j, :2]), torch.minimum(boxes[i, 2:], boxes[j, 2:])], 1)
    seen = torch.cat([torch.maximum(inter[:, :2], shared[:, :2]), torch.minimum(inter[:, 2:], shared[:, 2:])], 1)
    ok = ((seen[:, 2:] - seen[:, :2]) > 0).all(-1)
    return i[ok], j[ok], shared[ok]


def _sample(probs: torch.Tensor, boxes: torch.Tensor, regions: torch.Tensor, k: int) -> torch.Tensor:
    """Sample soft masks on a k × k grid of pixel centres over ``regions``.

    probs (P, M, M) masks spanning ``boxes`` (P, 4); regions (P, 4). Returns (P, k, k);
    points outside a mask's box read 0.
    """
    t = (torch.arange(k, device=probs.device, dtype=torch.float32) + 0.5) / k
    xs = regions[:, 0:1] + t[None] * (regions[:, 2:3] - regions[:, 0:1])
    ys = regions[:, 1:2] + t[None] * (regions[:, 3:4] - regions[:, 1:2])
    w = (boxes[:, 2:3] - boxes[:, 0:1]).clamp_min(1e-3)
    h = (boxes[:, 3:4] - boxes[:, 1:2]).clamp_min(1e-3)
    gx = (xs - boxes[:, 0:1]) / w * 2 - 1
    gy = (ys - boxes[:, 1:2]) / h * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, k, -1), gy[:, :, None].expand(-1, -1, k)], -1)
    return F.grid_sample(probs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def pair_mask_iou(probs: torch.Tensor, boxes: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                  windows: torch.Tensor, k: int = 48, batch: int = 4096) -> torch.Tensor:
    """Mask IoU of pairs (i, j) counted only inside ``windows`` (P, 4). Returns (P,) float."""
    out = torch.zeros(len(i), device=probs.device)
    for s in range(0, len(i), batch):
        a, b, w = i[s:s + batch], j[s:s + batch], windows[s:s + batch]
        union_box = torch.cat([torch.minimum(boxes[a, :2], boxes[b, :2]), torch.maximum(boxes[a, 2:], boxes[b, 2:])], 1)
        region = torch.cat([torch.maximum(union_box[:, :2], w[:, :2]), torch.minimum(union_box[:, 2:], w[:, 2:])], 1)
        ma = _sample(probs[a], boxes[a], region, k) >= 0.5
        mb = _sample(probs[b], boxes[b], region, k) >= 0.5
        inter = (ma & mb).flatten(1).sum(1).float()
        union = (ma | mb).flatten(1).sum(1).float()
        out[s:s + batch] = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    return out


def merge_groups(dets: Detections, comp: torch.Tensor, mask_size: int) -> Detections:
    """One detection per component: union box, max score with its label, union of masks.

    dets.masks RoiMasks (N, M, M); comp (N,) from ``connected_components``.
    Returns G detections with RoiMasks (G, S, S), S = ``mask_size``, in order of first member.
    """
    boxes, scores = dets.boxes, dets.scores
    uniq, group = torch.unique(comp, return_inverse=True)
    g = len(uniq)
    dev = boxes.device
    gb = group_boxes(boxes, group, g)
    best = torch.full((g,), float("-inf"), device=dev).scatter_reduce(0, group, scores, "amax")
    # the member holding the best score gives the label (lowest index on ties)
    is_best = scores >= best[group]
    idx = torch.arange(len(scores), device=dev)
    leader = torch.full((g,), len(scores), device=dev, dtype=torch.long).scatter_reduce(
        0, group, torch.where(is_best, idx, torch.full_like(idx, len(scores))), "amin")
    resampled = _sample(dets.masks.probs.float(), boxes, gb[group], mask_size)
    if "has_mask" in dets.extra:  # box-only members (uncomputed masks) yield to members with a mask
        has = dets.extra["has_mask"].bool()
        group_has = torch.zeros(g, dtype=torch.long, device=dev).scatter_reduce(0, group, has.long(), "amax").bool()
        resampled = resampled * (has | ~group_has[group]).float()[:, None, None]
    gm = torch.zeros(g, mask_size, mask_size, device=dev).scatter_reduce(
        0, group[:, None, None].expand(-1, mask_size, mask_size), resampled, "amax")
    extra = {k: v[leader] for k, v in dets.extra.items() if k != "tile"}
    extra["n_parts"] = torch.bincount(group, minlength=g)
    return Detections(boxes=gb, scores=best, labels=dets.labels[leader], masks=RoiMasks(gm),
                      frame=dets.frame, extra=extra)


class Stitcher:
    """Callable stage: per-tile detections of one frame → that frame's detections."""

    def __init__(self, match_iou: float = 0.3, duplicate_iou: float = 0.6, mask_size: int = 56,
                 batch_pairs: int = 4096) -> None:
        self.match_iou = match_iou
        self.duplicate_iou = duplicate_iou
        self.mask_size = mask_size
        self.batch_pairs = batch_pairs

    def __call__(self, tile_dets: list[Detections], windows: np.ndarray, tile_ids: np.ndarray,
                 frame: FrameInfo | None = None) -> Detections:
        dets = offset_tiles(tile_dets, windows, tile_ids).replace(frame=frame)
        if len(dets) == 0:
            return merge_groups(dets, torch.zeros(0, dtype=torch.long), self.mask_size)
        dev = dets.boxes.device
        win = torch.as_tensor(windows, dtype=torch.float32, device=dev)
        tile = dets.extra["tile"]
        i, j, shared = candidate_pairs(dets.boxes, tile, win)
        iou = pair_mask_iou(dets.masks.probs.float(), dets.boxes, i, j, shared, batch=self.batch_pairs)
        same = tile[i] == tile[j]
        link = torch.where(same, iou >= self.duplicate_iou, iou >= self.match_iou)
        comp = connected_components(len(dets), i[link], j[link])
        return merge_groups(dets, comp, self.mask_size)
