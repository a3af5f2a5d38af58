"""A line stream (ISIIS) run in segments: the same code for one machine and for Ray.

A run's frames to do are cut into segments of consecutive frames; each segment is run by
one worker, alone, and gives exactly the objects an uncut stream gives its frames:

- an object belongs to the frame where its first line lies (``stream.FrameAssembler``);
- a segment's first frame is preceded by up to ``stream.max_open_frames`` frames of its
  stream, run again but never written (``replay``): they restore the objects open across the
  cut, which belong to the frames before and are written by whoever writes those
  (``stream.plan_stream_work``, as for a resumed run);
- after a segment's last frame, the frames that follow in its stream are run, never written
  (``run_on``), only until every object of the written frames is closed. They are the next
  segment's, or a later run's; a frame that an earlier run did as the start of a stream (its
  predecessor was unusable then) ends the run-on, and the replay, as the stream ended there.

An organism longer than ``stream.max_open_frames`` frames is cut into pieces by the stitcher
(with a warning), at multiples of ``max_open_frames`` frames in its stream: the replay is long
enough for every segment, and every resumed run, to cut it where one uncut stream does.

The flat-field (``stream.flat_field``) runs from frame to frame: a segment restores the state
saved with a replayed frame that an earlier run wrote; a replayed frame of this run's other
segments starts the background afresh (never what a neighbour happens to have written by
then, so that a run's output does not depend on the order its segments ran in).
"""
from __future__ import annotations

import logging
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from ..frames import SkippedFrame, relative_path
from ..stream import ColumnFlatField, FrameAssembler, StreamStitcher, ordered, plan_stream_work
from ..structures import Detections, FrameCounts, FrameInfo, FrameRecord
from .prefetch import Decoded, decode_and_tile, prefetch
from .timing import timed, untimed

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from .local import FrameOutput, FrameSummary, RowMaker, Stages

log = logging.getLogger("segplank")


@dataclass(frozen=True)
class StreamSegment:
    """Consecutive frames that one worker writes, with the frames it runs around them.

    ``work``: the frames to run from the decoders, in order (those to write, each preceded by
    its ``replay`` predecessor where needed). ``run_on``: after ``work[k]``, the frames of its
    stream to run while an object of a written frame is still open (decoded on demand), and
    whether the stream ends after them (False: the run-on was cut at its most frames).
    ``first``: the position of the first frame to write in the run's work list; shards are
    named from it, so that segments written in parallel never share a name.
    """

    work: tuple[FrameInfo, ...]
    replay: frozenset[Path]
    run_on: dict[int, tuple[tuple[FrameInfo, ...], bool]] = field(default_factory=dict)
    continues: frozenset[int] = frozenset()  # positions in ``work`` that continue the frame before
    positions: tuple[int, ...] = ()  # each work frame's place in its stream (frames since its first)
    first: int = 0
    restore: frozenset[Path] = frozenset()  # replayed frames an earlier run wrote (flat-field states saved)

    @property
    def written(self) -> int:
        return len(self.work) - len(self.replay)


def plan_segments(frames: Sequence[FrameInfo], todo: Sequence[FrameInfo], sids: np.ndarray,
                  size: int | None, done: dict[Path, bool | None], max_open_frames: int) -> list[StreamSegment]:
    """The run's frames to do (``todo``, in stream order) cut into segments of ``size`` frames (None: one).

    ``frames``: every frame of the cruise in order, ``sids`` their stream ids; ``done``: the
    frames earlier runs did, each with whether it continued its stream (None: not recorded).
    Each segment replays up to ``max_open_frames`` frames before it and runs on at most
    ``2 × max_open_frames + 2`` after it.
    """
    pos = {f.path: i for i, f in enumerate(frames)}
    sids = np.asarray(sids)
    starts = np.r_[True, sids[1:] != sids[:-1]] if len(sids) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(sids)), 0)) if len(sids) else starts
    todo = list(todo)
    size = size or max(1, len(todo))
    most_run_on = 2 * max_open_frames + 2
    out = []
    for a in range(0, len(todo), size):
        work, replay = plan_stream_work(frames, todo[a:a + size], sids, lead_in=max_open_frames)
        at = [pos[f.path] for f in work]
        run_on, continues = {}, set()
        for k, i in enumerate(at):
            if k + 1 < len(at) and at[k + 1] == i + 1 and sids[i + 1] == sids[i]:
                if done.get(frames[i + 1].path, True) is not False:
                    continues.add(k + 1)  # its successor comes from the decoders anyway
                continue  # else an earlier run started a stream there: this one ends here
            run_on[k] = _run_on(frames, sids, i, done, most_run_on)
        restore = frozenset(p for p in replay if p in done)
        out.append(StreamSegment(tuple(work), frozenset(replay), run_on, frozenset(continues),
                                 tuple(int(i - first[i]) for i in at), a, restore))
    return out


def _run_on(frames: Sequence[FrameInfo], sids: np.ndarray, i: int, done: dict[Path, bool | None],
            most: int) -> tuple[tuple[FrameInfo, ...], bool]:
    """The frames after ``frames[i]`` that its open objects may reach, and whether its stream ends after them."""
    out: list[FrameInfo] = []
    j = i + 1
    while j < len(frames) and sids[j] == sids[i]:
        if frames[j].path in done and not done[frames[j].path]:
            return tuple(out), True  # an earlier run started a stream there (this frame was unusable then)
        if len(out) == most:
            return tuple(out), False
        out.append(frames[j])
        j += 1
    return tuple(out), True


def saved_frame_values(out_dir: Path, paths: set[str], column: str) -> dict[str, object]:
    """A frame-table column for some frames (relative paths), from every shard that has it."""
    if not paths:
        return {}
    out: dict[str, object] = {}
    for p in sorted((Path(out_dir) / "frames").glob("part-*.parquet")):
        if column not in pq.read_schema(p).names:
            continue
        t = pq.read_table(p, columns=["frame_path", column], filters=[("frame_path", "in", sorted(paths))])
        out.update(zip(t.column("frame_path").to_pylist(), t.column(column).to_pylist()))
    return out


class LineStreamRun:
    """Segments of a line stream through the stages: whole objects, each written once, with the
    frame of its first line.

    ``frames(segment)`` yields each written frame's output and summary in order (and the
    frames to write that were unusable, as ``SkippedFrame``); a caller that stops iterating
    leaves the frames not yet yielded not done. The stitcher and the per-frame counts are this
    object's; each segment starts them afresh.
    """

    def __init__(self, stages: "Stages", rows: "RowMaker", cfg: "PipelineConfig", n_classes: int,
                 clock: dict[str, float], out_dir: Path, decode_workers: int = 0, pin_memory: bool = False,
                 band: int = 2, match_iou: float = 0.3, max_open_frames: int = 4) -> None:
        self.stages = stages
        self.rows = rows
        self.sc = cfg.stream
        self.n_classes = n_classes
        self.clock = clock
        self.out_dir = Path(out_dir)
        self.decode_workers = decode_workers
        self.pin_memory = pin_memory and not cfg.stream.flat_field
        stitcher = StreamStitcher(band=band, match_iou=match_iou, max_open_frames=max_open_frames,
                                  margin=2 * cfg.measure.refine_dilate_px + 2)
        post = stages.post
        self.asm = FrameAssembler(stitcher, self._select if post.classifier is not None else None)
        self._found: dict[Path, FrameCounts] = {}  # frame path → counts of the whole objects it owns
        self._open_writes: set[Path] = set()  # frames to write pushed and not yet released
        self._flat: ColumnFlatField | None = None

    # --- a segment ---

    def decode(self, frames: Sequence[FrameInfo]) -> Iterator[Decoded | SkippedFrame]:
        """The frames decoded (and tiled, unless flat-fielded first) ahead, in order: what
        ``frames`` takes a segment's ``work`` from."""
        tiler = None if self.sc.flat_field else self.stages.tiler
        return prefetch(list(frames), tiler, self.decode_workers, pin_memory=self.pin_memory)

    def frames(self, seg: StreamSegment, items: Iterator[Decoded | SkippedFrame] | None = None
               ) -> Iterator["tuple[FrameOutput, FrameSummary] | SkippedFrame"]:
        """The segment's written frames in order; ``items``: its ``work`` decoded (``decode``;
        None: decoded here), from an iterator that may go on with later segments' frames."""
        saved = self._saved_flat_fields(seg)
        own = items is None
        items = self.decode(seg.work) if own else items
        last: Path | None = None  # the frame pushed last, if its stream goes on
        try:
            with closing(items) if own else nullcontext():
                for k in range(len(seg.work)):
                    with timed(self.clock, "wait") if self.decode_workers else untimed():
                        item = next(items)
                    info = seg.work[k]
                    write = info.path not in seg.replay
                    if isinstance(item, SkippedFrame):  # a missing frame ends the stream
                        if write:
                            yield item
                        yield from self._end_stream(f"line stream ends before {Path(item.path).name} (unusable frame)")
                        last = None
                    else:
                        starts = not (k in seg.continues and last == seg.work[k - 1].path)
                        if starts:
                            yield from self._end_stream()
                            self.asm.stitcher.reset(seg.positions[k] if seg.positions else 0)
                        yield from self._push(item, write, starts, saved)
                        last = info.path
                    if k in seg.run_on:
                        yield from self._run_on(*seg.run_on[k])
                        last = None
        finally:
            self.asm.drop()
            self._found.clear()
            self._open_writes.clear()

    def _run_on(self, frames_on: tuple[FrameInfo, ...], ends: bool) -> Iterator:
        """Frames after a written one, run only while an object of a written frame is open."""
        for info in frames_on:
            if not self._open_writes:
                break
            item = decode_and_tile(info, None if self.sc.flat_field else self.stages.tiler)
            if isinstance(item, SkippedFrame):
                yield from self._end_stream(f"line stream ends before {Path(item.path).name} (unusable frame)")
                return
            yield from self._push(item, False, False, {})
        if not self._open_writes:  # what stays open belongs to frames written elsewhere
            self.asm.drop()
            self._found.clear()
            return
        if not ends:
            log.warning("objects of %s were still open after %d more frames; closed there: raise "
                        "stream.max_open_frames", Path(sorted(self._open_writes)[0]).name, len(frames_on))
        yield from self._end_stream()

    def _end_stream(self, why: str | None = None) -> Iterator:
        if why and self.asm.pending:
            log.warning(why)
        yield from self._emit(self.asm.flush(self._process))
        self._found.clear()

    def _push(self, item: Decoded, write: bool, starts: bool, saved: dict[str, bytes | None]) -> Iterator:
        st, clock = self.stages, self.clock
        for k, v in item.seconds.items():
            clock[k] = clock.get(k, 0.0) + v
        tf = item.tf
        flat_state = self._flat_field_state(tf.frame, starts, saved)
        if self.sc.flat_field:
            with timed(clock, "flat_field"):
                image = self._flat(tf.image)
            with timed(clock, "tile"):
                tf = st.tiler(tf.frame, image)
        with torch.inference_mode():
            rec = st.detector(tf, clock)
            with timed(clock, "measure"):
                rec = st.post.prepare(rec)
        # the frame's own tally (tiles, detections not kept for the stream: non-plankton without
        # a classifier); what goes on into the stream is counted with the frame that owns it
        rec.counts.add("joined across cuts, counted with their frame",
                       -np.bincount(rec.dets.labels, minlength=self.n_classes))
        light = replace(tf, image=None, tiles=None, proposals=None)
        if write:
            self._open_writes.add(tf.frame.path)
        with timed(clock, "stitch"):
            ready = self.asm.push(light, tf.frame, rec.dets, tf.image, self._process,
                                  {"tally": rec.counts, "write": write,
                                   "flat_field": flat_state, "continued": not starts})
        yield from self._emit(ready)

    def _flat_field_state(self, frame: FrameInfo, starts: bool, saved: dict[str, bytes | None]) -> bytes | None:
        """The flat-field state this frame starts from: a fresh one where its stream starts here,
        the one saved with it where an earlier run wrote it (exact, whatever came before)."""
        if not self.sc.flat_field:
            return None
        if starts or self._flat is None:
            self._flat = ColumnFlatField(self.sc.flat_field_block, self.sc.flat_field_window)
        rel = relative_path(frame.path, self.rows.cruise_dir)
        if saved.get(rel) is not None:
            self._flat.load_bytes(saved[rel])
        elif rel in saved and starts:
            log.warning("%s: no flat-field state saved with it; its stream's background starts afresh there", rel)
        return self._flat.to_bytes()

    def _saved_flat_fields(self, seg: StreamSegment) -> dict[str, bytes | None]:
        """The states saved with the segment's replayed frames that earlier runs wrote (None: none saved)."""
        if not self.sc.flat_field or not seg.restore:
            return {}
        rels = {relative_path(p, self.rows.cruise_dir) for p in seg.restore}
        found = saved_frame_values(self.out_dir, rels, "flat_field")
        return {r: found.get(r) for r in rels}

    # --- whole objects back to their frames ---

    def _emit(self, ready) -> Iterator:
        for r in ready:
            counts = self._found.pop(r.info.path, FrameCounts(n_classes=self.n_classes))
            if not r.payload["write"]:
                continue  # replayed (written by the run that did it) or run on (the next segment's)
            self._open_writes.discard(r.info.path)
            kept, cols = ordered(r.parts)
            if kept is None:
                from ..measure import measure

                kept = Detections.empty(r.info)
                cols = measure(kept, np.zeros((1, 1), np.uint8), r.info.pixel_size_um)
            counts.merge(r.payload["tally"])
            counts.written = len(kept)
            with timed(self.clock, "write"):
                out, summary = self.rows(r.info, FrameRecord(kept, None, counts, cols))
            out.frame_row["flat_field"] = r.payload["flat_field"]
            out.frame_row["stream_continued"] = r.payload["continued"]
            yield out, summary

    def _process(self, d: Detections, image: np.ndarray):
        """Closed objects (on ``image``, the window of the stream they lie in) through the
        postprocessor's chain, counted with the frame that owns them."""
        part = FrameCounts(np.bincount(d.labels, minlength=self.n_classes))
        with timed(self.clock, "measure"):
            rec = self.stages.post(FrameRecord(d, image, part), self.clock)
        self._found.setdefault(d.frame.path, FrameCounts(n_classes=self.n_classes)).merge(part)
        return rec.dets, rec.columns

    def _select(self, parts: list[tuple[FrameInfo, Detections]]) -> list[np.ndarray]:
        """The classifier's copies-and-parts rule (``Postprocessor.distinct``) across batches."""
        keep = np.zeros(sum(len(d) for _, d in parts), bool)
        keep[self.stages.post.distinct(Detections.cat([d for _, d in parts]))] = True
        out, start = [], 0
        for info, d in parts:
            k, start = keep[start:start + len(d)], start + len(d)
            c = self._found[info.path]
            c.add("duplicates", int((~k).sum()))
            c.add("copies across batches", -np.bincount(d.labels[~k], minlength=self.n_classes))
            out.append(np.flatnonzero(k))
        return out
