"""Line-scan cameras (ISIIS): consecutive frames are cuts of one continuous stream of lines.

Three pieces, each usable alone:

- :func:`stream_ids` says which frames form one stream (same folder, same instrument
  naming, no time jump larger than allowed); a gap ends a stream, with a warning.
- :class:`StreamStitcher` joins objects cut by the boundary between frame k and frame k+1.
  It is the tile stitcher's rule carried over to a cut where the two frames share no
  pixels: the frames meet along one line, so two parts are one object when their masks'
  footprints on the rows either side of the cut (``band`` rows each, dilated by one column:
  8-connectivity) overlap with IoU ≥ ``match_iou``, one is the other's best match there
  (two objects drawn over one another at the cut each keep their own continuation), and
  their boxes overlap in x. Two organisms touching across the cut meet in a column or two
  only, and stay two. Parts are
  grouped (connected components, so an object longer than a frame chains through several
  cuts) and each group becomes one object in **stream rows**, with the union of its
  full-resolution masks, attributed to the frame where its first line lies. Only the open
  objects (touching the last ``band`` rows) and the image rows they lie in are kept: memory
  is bounded by the longest open object, and by ``2 × max_open_frames`` frames whatever
  happens (an object open that long is cut at the next multiple of ``max_open_frames`` in
  its stream).
- :class:`ColumnFlatField` removes the vertical streaks and slow brightness drift of a
  line-scan sensor with a running per-column background, carried from frame to frame
  (``to_bytes`` / ``load_bytes``: what a frame-table row keeps for resumed runs); it never
  stores the stream.

:class:`FrameAssembler` is the engines' bookkeeping around the stitcher: whole objects go
back to the frame of their first line, and a frame is released (written, then marked done)
only when every object that started in it, and in every earlier frame, is closed.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .frames import source_file
from .joins import connected_components, group_boxes, shifted
from .structures import CroppedMasks, Detections, FrameInfo

log = logging.getLogger("segplank")


# --- which frames form one stream --------------------------------------------------------

def stream_key(path: Path, timestamp_regex: str | None = None) -> tuple[str, str]:
    """(folder, name pattern): frames of one stream share both; the timestamp is masked out.

    A video frame (``clip.avi/clip_000012``) belongs to its video's folder and naming.
    """
    path = source_file(path)
    name = path.name
    if timestamp_regex:
        name = re.sub(timestamp_regex, "#", name)
    name = re.sub(r"\d+", "#", name)
    return str(path.parent), name


def stream_ids(frames: Sequence[FrameInfo], max_gap_s: float | None, timestamp_regex: str | None = None,
               warn: bool = True) -> np.ndarray:
    """(N,) int stream number of each frame (frames in time order, as ``find_frames`` gives them).

    A new stream starts at a change of folder or naming, at a frame without a time after
    one with, and where the time from the previous frame exceeds ``max_gap_s`` (None: no
    time limit), or goes backwards. Each gap inside one folder is logged as one warning.
    """
    out = np.zeros(len(frames), np.int64)
    keys = [stream_key(f.path, timestamp_regex) for f in frames]
    sid = 0
    for k in range(1, len(frames)):
        a, b = frames[k - 1], frames[k]
        reason = None
        if keys[k - 1] != keys[k]:
            reason = "other folder or naming"
        elif (a.timestamp is None) != (b.timestamp is None):
            reason = "time missing"
        elif a.timestamp is not None and b.timestamp is not None:
            dt = (b.timestamp - a.timestamp).total_seconds()
            if dt < 0 or (max_gap_s is not None and dt > max_gap_s):
                reason = f"time jump of {dt:.3f} s (max_gap_s {max_gap_s})"
                if warn:
                    log.warning("line stream gap between %s and %s: %s; the stream ends and a new one starts",
                                a.path.name, b.path.name, reason)
        if reason is not None:
            sid += 1
        out[k] = sid
    return out


# --- objects across frame cuts -----------------------------------------------------------

@dataclass(frozen=True)
class ClosedObjects:
    """Whole objects that closed on one push, with the image rows they lie in.

    ``dets`` (CroppedMasks) and ``image`` share coordinates: x in frame columns, y in rows
    of ``image``, whose row 0 is stream row ``row0``. ``owner`` (N,) is the push number
    (0, 1, ...) of the frame holding each object's first line.
    """

    dets: Detections
    owner: np.ndarray
    image: np.ndarray
    row0: int

    def __len__(self) -> int:
        return len(self.dets)


def frame_pieces(bitmap: np.ndarray, origin: tuple[int, int], height: int
                 ) -> list[tuple[int, tuple[int, int], np.ndarray]]:
    """A mask in its frame's coordinates cut at the frame's edges: (frame offset, origin, piece).

    A line stream's object lies in the frame of its first line and may reach the next frames
    (or, grown by refinement, rows of the previous one); per-frame outputs (COCO images,
    annotation frames) hold each frame's piece of it, in that frame's coordinates. Frames of
    one stream have the same height. Pieces with no pixel are left out; a mask inside its
    frame is one piece at offset 0.
    """
    x0, y0 = int(origin[0]), int(origin[1])
    h = bitmap.shape[0]
    if 0 <= y0 and y0 + h <= height:
        return [(0, (x0, y0), bitmap)]
    pieces = []
    for k in range(y0 // height, (y0 + h - 1) // height + 1):
        top, bottom = max(y0, k * height), min(y0 + h, (k + 1) * height)
        piece = bitmap[top - y0:bottom - y0]
        rows, cols = np.flatnonzero(piece.any(1)), np.flatnonzero(piece.any(0))
        if len(rows):  # tight: a piece's box is its own
            pieces.append((k, (x0 + int(cols[0]), top + int(rows[0]) - k * height),
                           piece[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]))
    return pieces


def _bottoms(m: CroppedMasks) -> np.ndarray:
    return np.array([oy + b.shape[0] for (_, oy), b in zip(m.origins, m.bitmaps)], np.int64)


def _rows_hit(m: CroppedMasks, idx: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """(len(idx),) bool: mask idx[k] has a pixel in stream rows [r0, r1)."""
    out = np.zeros(len(idx), bool)
    for k, i in enumerate(idx):
        oy = int(m.origins[i, 1])
        b = m.bitmaps[i]
        a, z = max(r0 - oy, 0), min(r1 - oy, b.shape[0])
        out[k] = z > a and bool(b[a:z].any())
    return out


def _footprints(m: CroppedMasks, idx: np.ndarray, r0: int, r1: int, width: int) -> np.ndarray:
    """(len(idx), width + 2) bool: columns where each mask has pixels in rows [r0, r1), dilated by one."""
    fp = np.zeros((len(idx), width + 2), bool)
    for k, i in enumerate(idx):
        ox, oy = (int(v) for v in m.origins[i])
        b = m.bitmaps[i]
        a, z = max(r0 - oy, 0), min(r1 - oy, b.shape[0])
        if z <= a:
            continue
        cols = np.flatnonzero(b[a:z].any(0)) + ox + 1  # +1: room for the dilation at column 0
        cols = cols[(cols >= 1) & (cols <= width)]
        fp[k, cols] = True
    fp[:, 1:] |= fp[:, :-1].copy()
    fp[:, :-1] |= np.roll(fp, -1, 1)[:, :-1]
    return fp


def cut_links(upper: CroppedMasks, lower: CroppedMasks, cut: int, band: int, width: int,
              match_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i of ``upper``, j of ``lower``) that are one object across the cut at stream row ``cut``.

    Footprint of an upper mask: its columns in rows [cut - band, cut); of a lower mask: in
    [cut, cut + band); each dilated by one column. Returns i (P,), j (P,) int64 and the
    footprint IoU (P,) of the pairs that reach ``match_iou`` and are, for one side at least,
    the other side's best match (a U whose two arms cross the cut links both arms to the
    piece below; two objects drawn over one another at the cut each keep their own part).
    """
    empty = np.zeros(0, np.int64)
    if not len(upper) or not len(lower):
        return empty, empty, np.zeros(0)
    fu = _footprints(upper, np.arange(len(upper)), cut - band, cut, width).astype(np.float32)
    fl = _footprints(lower, np.arange(len(lower)), cut, cut + band, width).astype(np.float32)
    inter = fu @ fl.T  # (U, L): shared dilated columns
    union = fu.sum(1)[:, None] + fl.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    # each part links to its best match on the other side: two objects drawn over one another
    # at the cut share columns, but each continues into its own part best
    best = (iou >= iou.max(1, keepdims=True)) | (iou >= iou.max(0, keepdims=True))
    i, j = np.nonzero((iou >= match_iou) & best)
    return i.astype(np.int64), j.astype(np.int64), iou[i, j]


def merge_parts(dets: Detections, comp: np.ndarray) -> tuple[Detections, np.ndarray]:
    """One detection per component (numpy, CroppedMasks): union mask in the union box,
    highest score with its label (lowest index on ties), other columns from that member,
    ``n_parts`` summed. Returns the merged detections, in order of their first member, and
    each one's first member index."""
    _, first, inv = np.unique(comp, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    first = first[order]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    group = rank[inv]  # (N,) group of each member, groups numbered by first member
    g = len(first)
    if g == len(comp):
        return dets, first
    m = dets.masks
    scores = np.asarray(dets.scores)
    boxes = group_boxes(dets.boxes, group, g)
    origins = m.origins[first].copy()
    bitmaps = [m.bitmaps[k] for k in first]
    lead = first.copy()
    sizes = np.bincount(group, minlength=g)
    for q in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(group == q)
        ox, oy = m.origins[members, 0], m.origins[members, 1]
        hs = np.array([m.bitmaps[k].shape[0] for k in members])
        ws = np.array([m.bitmaps[k].shape[1] for k in members])
        x0, y0 = int(ox.min()), int(oy.min())
        canvas = np.zeros((int((oy + hs).max()) - y0, int((ox + ws).max()) - x0), bool)
        for k, a, b, hh, ww in zip(members, ox, oy, hs, ws):
            canvas[b - y0:b - y0 + hh, a - x0:a - x0 + ww] |= m.bitmaps[k].astype(bool)
        origins[q] = (x0, y0)
        bitmaps[q] = canvas
        lead[q] = members[np.argmax(scores[members])]
    extra = {k: np.asarray(v)[lead] for k, v in dets.extra.items()}
    if "n_parts" in extra:
        v = np.asarray(dets.extra["n_parts"])
        extra["n_parts"] = np.bincount(group, weights=v, minlength=g).astype(v.dtype)
    out = Detections(boxes=boxes, scores=scores[lead].astype(np.float32), labels=np.asarray(dets.labels)[lead],
                     masks=CroppedMasks(origins.astype(np.int64), tuple(bitmaps)), frame=dets.frame, extra=extra)
    return out, first


class StreamStitcher:
    """Frames of one line stream in order → whole objects, each once, in stream rows.

    ``push(dets, image)`` takes one frame's final detections (numpy, ``CroppedMasks`` in
    frame pixels: what the engine holds right before refinement) and its image, and
    returns the objects that closed: every object of this frame that does not reach its
    last ``band`` rows, and every open object that this frame did not continue. ``flush()``
    closes the rest (end of the stream). ``margin`` rows of context are kept above each
    open object (and above the next frame) for refinement's local background.
    """

    def __init__(self, band: int = 2, match_iou: float = 0.3, margin: int = 16,
                 max_open_frames: int = 4) -> None:
        if band < 1 or max_open_frames < 1:
            raise ValueError("band and max_open_frames must be >= 1")
        self.band = band
        self.match_iou = match_iou
        self.margin = margin
        self.max_open_frames = max_open_frames
        self.forced = 0  # objects closed by max_open_frames, over every stream
        self.reset()

    def reset(self, position: int = 0) -> None:
        """Forget the stream (a new one starts); ``position``: where the next frame lies in its
        stream (frames since the stream's first), which places the forced cuts."""
        self.position = position
        self._open: Detections | None = None  # stream rows
        self._owner = np.zeros(0, np.int64)
        self._rows: np.ndarray | None = None  # image rows kept
        self._rows0 = 0  # stream row of self._rows[0]
        self.next_row = 0  # stream row where the next frame starts
        self.pushed = 0  # frames pushed since the stream started

    def open_owners(self) -> np.ndarray:
        """Push numbers of the frames that own an open object."""
        return np.unique(self._owner)

    @property
    def first_kept_row(self) -> int | None:
        """Stream row of the first image row held: objects closed from now on are refined on
        these rows only, so nothing above it can still change (None: no rows yet)."""
        return None if self._rows is None else self._rows0

    @property
    def kept_rows(self) -> int:
        """Image rows held (what bounds this stitcher's memory, with the open masks)."""
        return 0 if self._rows is None else len(self._rows)

    def push(self, dets: Detections, image: np.ndarray) -> ClosedObjects:
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"StreamStitcher needs 2-D grey frames, got shape {image.shape}")
        d = dets.numpy()
        if not isinstance(d.masks, CroppedMasks):
            d = d.replace(masks=d.masks.to_cropped(d.boxes))
        h, w = image.shape
        seq, row0 = self.pushed, self.next_row
        d = shifted(d, 0, row0)
        owner = np.full(len(d), seq, np.int64)
        self._append_rows(image, row0)
        if self._open is not None and len(self._open):
            n_open = len(self._open)
            upper_end = _bottoms(self._open.masks)
            cand_u = np.flatnonzero(upper_end > row0 - self.band)
            cand_l = np.flatnonzero(np.asarray(d.boxes)[:, 1] < row0 + self.band) if len(d) else np.zeros(0, np.int64)
            i, j, _ = cut_links(self._open.masks[cand_u], d.masks[cand_l], row0, self.band, w, self.match_iou) \
                if len(cand_u) and len(cand_l) else (np.zeros(0, np.int64),) * 3
            i, j = cand_u[i], cand_l[j]
            # box x-overlap as well (footprints already imply it up to the dilation)
            ob, nb = np.asarray(self._open.boxes), np.asarray(d.boxes)
            ok = (np.minimum(ob[i, 2], nb[j, 2]) - np.maximum(ob[i, 0], nb[j, 0])) > -1
            i, j = i[ok], j[ok]
            both = Detections.cat([_plain(self._open, d), _plain(d, self._open)])
            all_owner = np.concatenate([self._owner, owner])
            comp = connected_components(len(both), i, j + n_open)
            # the group's owner is its earliest frame (open members come first)
            merged, first = merge_parts(both, comp)
            _, inv = np.unique(comp, return_inverse=True)
            earliest = np.full(inv.max() + 1, np.iinfo(np.int64).max)
            np.minimum.at(earliest, inv, all_owner)
            owner = earliest[inv[first]]
            d = merged
        self.pushed += 1
        self.next_row = row0 + h
        return self._close(d, owner, seq)

    def flush(self) -> ClosedObjects:
        """Close every open object (the stream ended) and forget the stream."""
        d = self._open if self._open is not None else Detections.empty()
        out = self._closed(d, self._owner, np.ones(len(d), bool))
        self.reset()
        return out

    # --- internals ---

    def _append_rows(self, image: np.ndarray, row0: int) -> None:
        if self._rows is None or self._rows0 + len(self._rows) != row0 or self._rows.shape[1:] != image.shape[1:] \
                or self._rows.dtype != image.dtype:
            self._rows, self._rows0 = image, row0
        else:
            self._rows = np.concatenate([self._rows, image])

    def _close(self, d: Detections, owner: np.ndarray, seq: int) -> ClosedObjects:
        end = self.next_row
        if len(d):
            late = np.flatnonzero(_bottoms(d.masks) > end - self.band)
            still = np.zeros(len(d), bool)
            still[late] = _rows_hit(d.masks, late, end - self.band, end)
            # forced cuts lie on a grid of stream positions (every max_open_frames frames), so where
            # a long object is cut does not depend on where a run or a segment began
            on_grid = (self.position + seq + 1) % self.max_open_frames == 0
            too_old = still & (owner <= seq - self.max_open_frames + 1) & on_grid
            if too_old.any():
                self.forced += int(too_old.sum())
                log.warning("%d object(s) open across %d frames were closed by stream.max_open_frames; "
                            "they may continue as separate objects", int(too_old.sum()), self.max_open_frames)
                still &= ~too_old
        else:
            still = np.zeros(0, bool)
        out = self._closed(d, owner, ~still)
        self._open = d[np.flatnonzero(still)] if still.any() else None
        self._owner = owner[still]
        self._trim()
        return out

    def _closed(self, d: Detections, owner: np.ndarray, sel: np.ndarray) -> ClosedObjects:
        idx = np.flatnonzero(sel)
        c = d[idx] if len(d) else d
        if self._rows is None:
            return ClosedObjects(c, owner[idx], np.zeros((0, 0), np.uint8), 0)
        top = self._rows0
        if len(idx):
            top = max(self._rows0, int(np.asarray(c.masks.origins)[:, 1].min()) - self.margin)
        image = self._rows[top - self._rows0:]
        return ClosedObjects(shifted(c, 0, -top), owner[idx], image, top)

    def _trim(self) -> None:
        """Keep the rows the open objects lie in, and ``margin`` rows of context for the next frame."""
        if self._rows is None:
            return
        keep_from = self.next_row - self.margin
        if self._open is not None and len(self._open):
            keep_from = min(keep_from, int(self._open.masks.origins[:, 1].min()) - self.margin)
        keep_from = max(keep_from, self._rows0)
        if keep_from > self._rows0:
            self._rows = self._rows[keep_from - self._rows0:].copy()
            self._rows0 = keep_from


def _plain(d: Detections, other: Detections) -> Detections:
    """``d`` with only the extra columns both have, so the two concatenate."""
    keys = set(d.extra) & set(other.extra)
    return d.replace(extra={k: np.asarray(v) for k, v in d.extra.items() if k in keys})


# --- frames of a stream: whole objects back to the frame of their first line ---------------

# (frame, its processed objects in stream rows) for each batch → the indices each keeps
Selector = Callable[[list[tuple[FrameInfo, Detections]]], list[np.ndarray]]


@dataclass
class _Pending:
    frame: object  # whatever the engine needs to write the frame (e.g. a TiledFrame without pixels)
    info: FrameInfo
    row0: int  # stream row of the frame's first line
    parts: list = field(default_factory=list)  # (Detections, cols) in frame coordinates
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReadyFrame:
    """A frame whose objects are all closed: its objects in its own coordinates (rows may
    reach below its last line, for objects continuing into the next frames)."""

    frame: object
    info: FrameInfo
    parts: list
    payload: dict


class FrameAssembler:
    """Frames of one line stream in, frames whose objects are all whole out, in order.

    ``push(frame, info, dets, image, process)``: ``process(dets, image)`` is called on every
    batch of closed objects (with the rows they lie in) and returns (detections, columns)
    still in those rows' coordinates, with a ``centroid_y`` column (refinement, filters and
    measurement of the whole object happen there); the results are moved into the
    coordinates of each object's first frame. Returns the frames now complete, in order.

    ``select``: after each push, every processed object of the frames not yet released, in
    stream rows, is judged together (``Selector``). Each batch was judged alone when it was
    processed, but one organism's candidates close in different batches: the part that
    continues across the cut with its owner frame's bottom, its fragments below the cut with
    the next frame. Without it a --stream run with a vignette classifier wrote an organism
    and its fragments (held-out cruise: 173 plankton rows for 139 organisms). So that no
    object is judged after the frames it lies on are written, a frame also waits while one
    of its objects lies in the rows the stitcher still holds, which later objects are refined
    on (refinement grows a tail up through them, hundreds of rows on the held-out cruises).
    """

    def __init__(self, stitcher: StreamStitcher, select: Selector | None = None) -> None:
        self.stitcher = stitcher
        self.select = select
        self._pending: list[_Pending] = []
        self._base = 0  # push number of self._pending[0]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def push(self, frame: object, info: FrameInfo, dets: Detections, image: np.ndarray, process,
             payload: dict | None = None) -> list[ReadyFrame]:
        if not self._pending:
            self._base = self.stitcher.pushed
        self._pending.append(_Pending(frame, info, self.stitcher.next_row, payload=payload or {}))
        self._take(self.stitcher.push(dets, image), process)
        owners = self.stitcher.open_owners()
        limit = int(owners.min()) if len(owners) else self.stitcher.pushed
        if self.select is not None:
            limit = min(limit, self._first_reached())
        return self._release(limit)

    def flush(self, process) -> list[ReadyFrame]:
        """End of the stream: close everything, release every frame."""
        self._take(self.stitcher.flush(), process)
        out = self._release(None)
        self._base = 0
        return out

    def drop(self) -> int:
        """Forget the pending frames and the stream (a run stopping mid-stream); returns how many."""
        n = len(self._pending)
        self._pending = []
        self.stitcher.reset()
        return n

    def _take(self, closed: ClosedObjects, process) -> None:
        if not len(closed):
            return
        for o in np.unique(closed.owner):
            sel = np.flatnonzero(closed.owner == o)
            p = self._pending[int(o) - self._base]
            dets, cols = process(closed.dets[sel].replace(frame=p.info), closed.image)
            dy = closed.row0 - p.row0
            cols = dict(cols)
            if "centroid_y" in cols:
                cols["centroid_y"] = np.asarray(cols["centroid_y"], np.float64) + dy
            p.parts.append((shifted(dets, 0, dy), cols))
        if self.select is not None:
            self._select()

    def _first_reached(self) -> int:
        """Push number of the first pending frame with an object in rows a later object may
        still be refined on (the stitcher's held rows: refinement can grow an object through
        any of them, hundreds of rows up): it stays pending, to be judged with what closes there."""
        first = self.stitcher.first_kept_row
        if first is not None:
            for k, p in enumerate(self._pending):
                if any(len(d) and float(np.max(np.asarray(d.boxes)[:, 3])) + p.row0 > first for d, _ in p.parts):
                    return self._base + k
        return self.stitcher.pushed

    def _select(self) -> None:
        where = [(p, k) for p in self._pending for k, (d, _) in enumerate(p.parts) if len(d)]
        if sum(len(p.parts[k][0]) for p, k in where) < 2:
            return
        keeps = self.select([(p.info, shifted(p.parts[k][0], 0, p.row0)) for p, k in where])
        for (p, k), keep in zip(where, keeps):
            d, cols = p.parts[k]
            if len(keep) < len(d):
                p.parts[k] = (d[keep], {c: np.asarray(v)[keep] for c, v in cols.items()})

    def _release(self, limit: int | None) -> list[ReadyFrame]:
        out = []
        while self._pending and (limit is None or self._base < limit):
            p = self._pending.pop(0)
            out.append(ReadyFrame(p.frame, p.info, p.parts, p.payload))
            self._base += 1
        return out


def ordered(parts: list) -> tuple[Detections | None, dict[str, np.ndarray]]:
    """One frame's parts as one set of detections and columns, sorted by (top, left, -score):
    the same order whichever push closed each object."""
    parts = [(d, c) for d, c in parts if len(d)]
    if not parts:
        return None, {}
    d = Detections.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    cols = {k: np.concatenate([np.asarray(p[1][k]) for p in parts]) for k in parts[0][1]}
    b = np.asarray(d.boxes)
    order = np.lexsort((-np.asarray(d.scores), b[:, 0], b[:, 1]))
    return d[order], {k: v[order] for k, v in cols.items()}


# --- flat-fielding along the stream ------------------------------------------------------

class ColumnFlatField:
    """Running per-column background of a line-scan stream; divides it out, block by block.

    Each block of ``block`` lines updates the background with the per-column median of the
    block (robust to the objects in it) as an exponential moving average over about
    ``window`` lines, then is divided by it and scaled to ``level`` (the first block's
    median level unless given): column streaks and slow drift along the stream go, the
    objects' contrast stays. Only the (W,) background is kept, never the stream.
    """

    def __init__(self, block: int = 64, window: int = 2048, level: float | None = None) -> None:
        if block < 1 or window < block:
            raise ValueError("block must be >= 1 and window >= block")
        self.block = block
        self.window = window
        self.level = level
        self.background: np.ndarray | None = None  # (W,) float64

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"ColumnFlatField needs 2-D grey frames, got shape {image.shape}")
        if self.background is not None and len(self.background) != image.shape[1]:
            self.background = None  # another camera width: start afresh
        out = np.empty(image.shape, np.float32)
        for r in range(0, image.shape[0], self.block):
            rows = image[r:r + self.block]
            med = np.median(rows, axis=0).astype(np.float64)
            if self.background is None:
                self.background = med
                if self.level is None:
                    self.level = float(np.median(med))
            else:
                a = min(1.0, len(rows) / self.window)
                self.background = (1 - a) * self.background + a * med
            out[r:r + len(rows)] = rows * (self.level / np.maximum(self.background, 1e-3)).astype(np.float32)
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
        return out.astype(image.dtype)

    def to_bytes(self) -> bytes:
        """The running state, exactly: float64 [level, *background] (NaN: not set yet); block and
        window are the config's."""
        level = np.nan if self.level is None else float(self.level)
        bg = np.zeros(0) if self.background is None else np.asarray(self.background, np.float64)
        return np.concatenate([[level], bg]).astype("<f8").tobytes()

    def load_bytes(self, data: bytes) -> None:
        """Restore what ``to_bytes`` saved."""
        a = np.frombuffer(data, "<f8")
        self.level = None if np.isnan(a[0]) else float(a[0])
        self.background = a[1:].astype(np.float64) if len(a) > 1 else None


# --- what a (resumed) run processes --------------------------------------------------------

def plan_stream_work(frames: Sequence[FrameInfo], todo: Sequence[FrameInfo],
                     sids: np.ndarray, lead_in: int = 1) -> tuple[list[FrameInfo], set[Path]]:
    """The frames to run in order, and those among them only replayed.

    A frame left to do whose predecessors in its stream are not (an earlier run stopped there,
    or another segment writes them) is preceded by up to ``lead_in`` of them, run again but not
    written: they restore the objects open across the cut, so the parts of objects written
    with them are recognised and not written twice (``max_open_frames`` of them also place a
    long object's forced cuts as one uncut stream does).
    """
    pos = {f.path: i for i, f in enumerate(frames)}
    todo_paths = {f.path for f in todo}
    work: list[FrameInfo] = []
    replay: set[Path] = set()
    for f in todo:
        i = pos[f.path]
        before = []
        for j in range(i - 1, max(-1, i - 1 - lead_in), -1):
            if sids[j] != sids[i] or frames[j].path in todo_paths or (work and work[-1].path == frames[j].path):
                break
            before.append(frames[j])
        for b in reversed(before):
            work.append(b)
            replay.add(b.path)
        work.append(f)
    return work, replay
