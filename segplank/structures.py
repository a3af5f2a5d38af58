"""The one detection structure that flows through every stage.

A frame's detections are parallel arrays (N rows), in the spirit of detectron2's
``Instances`` but a frozen dataclass with declared fields. Masks always stay cropped to
their boxes: ``RoiMasks`` holds fixed-size soft masks in box coordinates (what the mask
head gives, and what the stitcher merges on the device); ``CroppedMasks`` holds
full-resolution bitmaps, each aligned to its integer box (what measurement and the
writers use). Nothing here ever holds N full-frame bitmaps.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

Array = Union[torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class FrameInfo:
    """Where a frame comes from and how to turn its pixels into micrometres and time."""

    path: Path
    index: int  # position of the frame in the cruise, in time order
    timestamp: datetime | None  # UTC, from the file name
    height: int = 0
    width: int = 0
    pixel_size_um: float = 1.0
    tiles: np.ndarray | None = None  # (T, 4) int x0 y0 x1 y1 of the tile grid used


def _index(a: Array, idx) -> Array:
    if isinstance(a, torch.Tensor) and isinstance(idx, np.ndarray):
        idx = torch.as_tensor(idx, device=a.device)
    if isinstance(a, np.ndarray) and isinstance(idx, torch.Tensor):
        idx = idx.cpu().numpy()
    return a[idx]


@dataclass(frozen=True)
class RoiMasks:
    """(N, M, M) soft masks (probabilities), each spanning its object's float box."""

    probs: torch.Tensor

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def __getitem__(self, idx) -> "RoiMasks":
        p = _index(self.probs, idx)
        return RoiMasks(p if p.dim() == 3 else p[None])

    def to(self, device: torch.device | str) -> "RoiMasks":
        return RoiMasks(self.probs.to(device))

    @staticmethod
    def cat(items: Sequence["RoiMasks"]) -> "RoiMasks":
        return RoiMasks(torch.cat([m.probs for m in items]))

    def to_cropped(self, boxes: np.ndarray, threshold: float = 0.5) -> "CroppedMasks":
        """Resample each soft mask to its integer box at full resolution (cv2, per object).

        Each pixel centre is sampled where it lies on the soft mask, which spans the float box
        (as detectron2 pastes masks): resizing onto the integer box instead would shift and
        stretch the mask by up to a pixel, a fifth of a small object. Outside the float box
        the mask is 0. Cost is proportional to the objects' areas, never to the frame's. A
        detection whose mask falls below ``threshold`` everywhere keeps its most probable
        pixels (half its peak), so no detected object leaves with an empty mask.
        """
        import cv2

        probs = self.probs.detach().float().cpu().numpy()
        boxes = np.asarray(boxes, np.float64)
        x0 = np.floor(boxes[:, 0]).astype(np.int64)
        y0 = np.floor(boxes[:, 1]).astype(np.int64)
        x1 = np.maximum(np.ceil(boxes[:, 2]).astype(np.int64), x0 + 1)
        y1 = np.maximum(np.ceil(boxes[:, 3]).astype(np.int64), y0 + 1)
        bitmaps = []
        for p, b, ox, oy, w, h in zip(probs, boxes, x0, y0, x1 - x0, y1 - y0):
            m = p.shape[-1]
            sx, sy = m / max(b[2] - b[0], 1e-6), m / max(b[3] - b[1], 1e-6)
            # bitmap pixel (u, v) has its centre at (ox + u + 0.5, oy + v + 0.5) in the frame
            to_mask = np.array([[sx, 0, (ox + 0.5 - b[0]) * sx - 0.5], [0, sy, (oy + 0.5 - b[1]) * sy - 0.5]])
            up = cv2.warpAffine(p, to_mask, (int(w), int(h)), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            bm = up >= threshold
            if not bm.any():
                peak = float(up.max())
                bm = up >= peak * 0.5 if peak > 0 else np.ones_like(bm)
            bitmaps.append(bm)
        return CroppedMasks(np.stack([x0, y0], 1) if len(x0) else np.zeros((0, 2), np.int64), tuple(bitmaps))


@dataclass(frozen=True)
class CroppedMasks:
    """Full-resolution bool bitmaps; bitmap i covers rows y0..y0+h, columns x0..x0+w."""

    origins: np.ndarray  # (N, 2) int64: x0, y0 of each bitmap in frame pixels
    bitmaps: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.bitmaps)

    def __getitem__(self, idx) -> "CroppedMasks":
        idx = np.atleast_1d(_index(np.arange(len(self)), idx))  # bool or integer index → positions
        return CroppedMasks(self.origins[idx].reshape(-1, 2), tuple(self.bitmaps[i] for i in idx))

    def to(self, device) -> "CroppedMasks":  # bitmaps live on the host
        return self

    @staticmethod
    def cat(items: Sequence["CroppedMasks"]) -> "CroppedMasks":
        if not items:
            return CroppedMasks.empty()
        return CroppedMasks(
            np.concatenate([m.origins for m in items]).reshape(-1, 2),
            tuple(b for m in items for b in m.bitmaps),
        )

    @staticmethod
    def empty() -> "CroppedMasks":
        return CroppedMasks(np.zeros((0, 2), np.int64), ())

    def areas(self) -> np.ndarray:
        return np.array([int(b.sum()) for b in self.bitmaps], dtype=np.int64)

    def tight_boxes(self) -> np.ndarray:
        """(N, 4) float32 x0 y0 x1 y1 of each bitmap's set pixels (its box if empty)."""
        out = np.zeros((len(self), 4), np.float32)
        for i, (b, (ox, oy)) in enumerate(zip(self.bitmaps, self.origins)):
            rows, cols = np.any(b, 1), np.any(b, 0)
            if rows.any():
                r = np.flatnonzero(rows)
                c = np.flatnonzero(cols)
                out[i] = (ox + c[0], oy + r[0], ox + c[-1] + 1, oy + r[-1] + 1)
            else:
                out[i] = (ox, oy, ox + b.shape[1], oy + b.shape[0])
        return out


Masks = Union[RoiMasks, CroppedMasks]


@dataclass(frozen=True)
class Detections:
    """N detections of one frame, boxes x0 y0 x1 y1 in frame pixels.

    Torch tensors while on the device, numpy once they leave it (``.numpy()``).
    Index like an array: ``kept = dets[dets.scores > 0.5]``.
    """

    boxes: Array  # (N, 4) float32
    scores: Array  # (N,) float32
    labels: Array  # (N,) int64, ids into the model's class map
    masks: Masks
    frame: FrameInfo | None = None
    extra: dict = field(default_factory=dict)  # per-object columns added by later stages, (N,) each

    def __post_init__(self) -> None:
        n = len(self.boxes)
        for name in ("scores", "labels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Detections.{name} has {len(getattr(self, name))} rows, boxes have {n}")
        if len(self.masks) != n:
            raise ValueError(f"Detections.masks has {len(self.masks)} rows, boxes have {n}")
        for k, v in self.extra.items():
            if len(v) != n:
                raise ValueError(f"Detections.extra[{k!r}] has {len(v)} rows, boxes have {n}")

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, idx) -> "Detections":
        if isinstance(idx, (int, np.integer)):
            idx = np.array([idx])
        return Detections(
            boxes=_index(self.boxes, idx).reshape(-1, 4),
            scores=_index(self.scores, idx).reshape(-1),
            labels=_index(self.labels, idx).reshape(-1),
            masks=self.masks[idx],
            frame=self.frame,
            extra={k: _index(v, idx).reshape(-1) for k, v in self.extra.items()},
        )

    def replace(self, **changes) -> "Detections":
        return replace(self, **changes)

    def with_columns(self, **columns: np.ndarray) -> "Detections":
        return replace(self, extra={**self.extra, **columns})

    def to(self, device: torch.device | str) -> "Detections":
        t = lambda a: torch.as_tensor(a).to(device)  # noqa: E731
        return replace(self, boxes=t(self.boxes), scores=t(self.scores), labels=t(self.labels),
                       masks=self.masks.to(device))

    def numpy(self) -> "Detections":
        n = lambda a: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # noqa: E731
        return replace(
            self,
            boxes=n(self.boxes).astype(np.float32).reshape(-1, 4),
            scores=n(self.scores).astype(np.float32),
            labels=n(self.labels).astype(np.int64),
            extra={k: n(v) for k, v in self.extra.items()},
        )

    @staticmethod
    def empty(frame: FrameInfo | None = None) -> "Detections":
        return Detections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            labels=np.zeros(0, np.int64),
            masks=CroppedMasks.empty(),
            frame=frame,
        )

    @staticmethod
    def cat(items: Sequence["Detections"]) -> "Detections":
        """Concatenate detections of the same frame (e.g. from several tiles)."""
        if not items:
            return Detections.empty()
        first = items[0]
        is_t = isinstance(first.boxes, torch.Tensor)
        c = torch.cat if is_t else np.concatenate
        keys = set(first.extra)
        return Detections(
            boxes=c([d.boxes for d in items]),
            scores=c([d.scores for d in items]),
            labels=c([d.labels for d in items]),
            masks=type(first.masks).cat([d.masks for d in items]),
            frame=first.frame,
            extra={k: c([d.extra[k] for d in items]) for k in keys},
        )


class FrameCounts:
    """What one frame's stages counted and dropped: an append-only tally, read as totals.

    Each stage adds what it did (``add(what, n)``, ``n`` a count or a signed per-class array)
    and nothing is rewritten, so the totals say where every detection went: ``per_class``
    counts each detection once per class, written or not (the classifier's names replace the
    box head's, copies judged across a stream's batches are taken out); ``too_small``,
    ``too_large``, ``duplicates`` (parts of organisms that refinement showed to be one) and
    ``rejected`` (refined into no organism: spanning the frame, or background-level grey)
    what the filters dropped; ``tiles_run`` and ``capped_tiles`` (tiles whose candidates
    filled ``detections_per_tile``) what the detector saw. ``written`` is the frame's rows, set
    once they are final.
    """

    SCALARS = ("too_small", "too_large", "duplicates", "rejected", "tiles_run", "capped_tiles")

    def __init__(self, per_class: np.ndarray | None = None, n_classes: int | None = None) -> None:
        self.n_classes = len(per_class) if per_class is not None else int(n_classes or 0)
        self.entries: list[tuple[str, int | np.ndarray]] = []
        self.written = 0
        if per_class is not None:
            self.add("detected", per_class)

    def add(self, what: str, n: int | np.ndarray) -> None:
        """Record ``n`` under ``what``: an int for the filters' counts, a per-class array otherwise."""
        if what not in self.SCALARS:
            n = np.asarray(n, np.int64)
            if n.shape != (self.n_classes,):
                raise ValueError(f"{what}: per-class counts of shape {n.shape}, expected ({self.n_classes},)")
        self.entries.append((what, n))

    def merge(self, other: "FrameCounts") -> None:
        """Take in another tally of the same frame (a batch of its objects closed in a line stream)."""
        self.entries.extend(other.entries)

    @property
    def per_class(self) -> np.ndarray:
        out = np.zeros(self.n_classes, np.int64)
        for what, n in self.entries:
            if what not in self.SCALARS:
                out += n
        return out

    def total(self, what: str) -> int:
        return int(sum(n for w, n in self.entries if w == what))

    too_small = property(lambda self: self.total("too_small"))
    too_large = property(lambda self: self.total("too_large"))
    duplicates = property(lambda self: self.total("duplicates"))
    rejected = property(lambda self: self.total("rejected"))

@dataclass(frozen=True)
class FrameRecord:
    """What every stage after the detector reads and returns: a frame's objects, the pixels
    they lie on, their measurements and the frame's tally.

    ``columns`` are the measurements (one array per declared column, row for row with
    ``dets``), filled by the measure stage. In a line stream a record holds the objects of one
    frame closed at a cut, and ``image`` is the window of the stream they lie in (their boxes
    in its coordinates until they are shifted back).
    """

    dets: Detections
    image: np.ndarray | None
    counts: FrameCounts
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def pixel_size_um(self) -> float:
        """µm per pixel of the objects' frame (1 where the frame is not known: sizes in pixels)."""
        return self.dets.frame.pixel_size_um if self.dets.frame else 1.0

    def __len__(self) -> int:
        return len(self.dets)

    def keep(self, idx) -> "FrameRecord":
        """The record with objects ``idx`` only (an index array or a boolean mask), columns too."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        return replace(self, dets=self.dets[idx], columns={k: np.asarray(v)[idx] for k, v in self.columns.items()})

    def with_dets(self, dets: Detections) -> "FrameRecord":
        """The record with other objects (renamed, refined): measurements must follow them."""
        return replace(self, dets=dets, columns={})
