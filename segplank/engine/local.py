"""The local streaming runner: frames in, shards out, resumable.

Frames are decoded and tiled ahead in worker processes (``decode_workers``), run through the
model one frame at a time, and their objects are buffered and written as Parquet + COCO
shards on a background thread while the model runs on. Each shard has a frame table that
records which frames it holds, written last, so a frame counts as done only once its objects
are safely on disk: a rerun of the same command skips those frames and completes the rest,
with no object lost or written twice. Memory stays flat whatever the number of frames.

What is not specific to one machine (identity, resumption, the manifest, the last stage that
turns measured detections into rows) is shared with the Ray engine (``ray_engine.py``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import __version__
from ..config import OutputConfig, PipelineConfig, dump_config
from ..io.atomic import atomic_path, write_json
from ..export.coco import coco_annotations, coco_categories, coco_image, merge_coco_shards, write_coco_shard
from ..export.parquet import frame_key, object_rows, write_shard
from ..frames import SkippedFrame, find_frames, relative_path, source_file
from ..geo import Locator, Position, epoch_seconds
from ..model.checkpoint import Checkpoint, ClassMap, file_sha256
from ..model.predict import TilePredictor
from ..structures import FrameCounts, FrameInfo, FrameRecord
from .outdir import RunError, StopRequest, claimed
from .prefetch import prefetch
from ..stream import stream_ids
from .line_stream import LineStreamRun, StreamSegment, plan_segments
from .memory import HeapTrimmer
from .stages import FrameDetector, Postprocessor, TiledFrame, Tiler
from .timing import timed, untimed

log = logging.getLogger("segplank")


@dataclass(frozen=True)
class FrameSummary:
    """One frame's counts for the run's totals: small, so it travels back from Ray workers."""

    path: str  # relative to the cruise folder
    tiles: int
    tiles_run: int
    capped: int  # tiles whose candidates filled detections_per_tile
    detected: dict[str, int]  # every detection per class, written or not
    written: dict[str, int]  # objects written per class
    seconds: dict[str, float] = field(default_factory=dict)  # stage seconds spent elsewhere (Ray workers)

    @property
    def objects(self) -> int:
        return sum(self.written.values())


@dataclass
class RunStats:
    frames_found: int = 0
    frames_done: int = 0
    frames_resumed: int = 0
    skipped: list[SkippedFrame] = field(default_factory=list)
    objects: int = 0
    per_class: dict[str, int] = field(default_factory=dict)  # every detection, written or not
    written_per_class: dict[str, int] = field(default_factory=dict)
    tiles: int = 0
    tiles_run: int = 0
    capped_tiles: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # decode, tile, model, stitch, measure, write
    geo: dict = field(default_factory=dict)  # records used, depth source, frames outside their coverage
    plankton_names: frozenset[str] = frozenset()
    interrupted: str = ""  # the signal that stopped the run after a frame (SIGINT, SIGTERM), if one did

    @property
    def skipped_tile_share(self) -> float:
        return 1.0 - self.tiles_run / self.tiles if self.tiles else 0.0

    def add(self, s: FrameSummary) -> None:
        """Count one processed frame."""
        self.frames_done += 1
        self.tiles += s.tiles
        self.tiles_run += s.tiles_run
        self.capped_tiles += s.capped
        self.objects += s.objects
        _add_counts(self.per_class, s.detected)
        _add_counts(self.written_per_class, s.written)
        _add_counts(self.stage_seconds, s.seconds)


def _add_counts(total: dict, more: dict) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


FRAME_SCHEMA = pa.schema([("frame_path", pa.string()), ("frame_index", pa.int64()), ("shard", pa.int32()),
                          ("time", pa.timestamp("us", tz="UTC")), ("tiles", pa.int32()), ("tiles_run", pa.int32()),
                          ("objects_written", pa.int32()), ("counts", pa.string()),
                          # refined into no organism (spanning the frame, background-level grey)
                          ("rejected", pa.int32()),
                          ("lat", pa.float64()), ("lon", pa.float64()), ("depth_m", pa.float64()),
                          # line stream with stream.flat_field: the flat-field state the frame started
                          # from (``ColumnFlatField.to_bytes``), what a resumed run restores; null otherwise
                          ("flat_field", pa.binary()),
                          # line stream: whether the frame continued the one before (False: a stream
                          # starts there), what a resumed run reads to carry objects across it
                          ("stream_continued", pa.bool_()),
                          # the frame's file as processed: a resumed run refuses a frame changed since
                          ("file_bytes", pa.int64()), ("file_mtime_ns", pa.int64())])


# --- the stages, built the same way by every engine ---------------------------------------

@dataclass(frozen=True)
class Stages:
    """The per-frame stages; ``frame`` runs a snapshot camera's frame through them (both
    engines call it; a line stream's frames go through ``LineStreamRun``)."""

    tiler: Tiler
    detector: FrameDetector
    post: Postprocessor

    def frame(self, tf: TiledFrame, rows: "RowMaker", clock: dict[str, float]) -> tuple["FrameOutput", "FrameSummary"]:
        """A tiled frame → detect, join seams → refine, reject, classify, dedup, filter, measure
        (``Postprocessor.chain``) → locate, its rows: one record through the stages."""
        with torch.inference_mode():
            rec = self.detector(tf, clock)
            with timed(clock, "measure"):
                rec = self.post(self.post.prepare(rec), clock)
        with timed(clock, "write"):
            return rows(tf.frame, rec)


def build_tiler(cfg: PipelineConfig) -> Tiler:
    """The frame → tiles stage of a config (every engine builds it here)."""
    return Tiler(cfg.tiling, cfg.instrument.polarity, cfg.detector.component_proposals, cfg.area_illumination)


def build_stages(cfg: PipelineConfig, ckpt: Checkpoint, device: torch.device, candidates: bool = False) -> Stages:
    """The per-frame stages for a config and checkpoint: one model, loaded once, on ``device``.

    ``candidates``: the detector passes every candidate (as for a classifier), and none is
    classified: what a vignette classifier is trained on.
    """
    classes = ckpt.network_classes
    det = cfg.detector
    model_cfg = ckpt.model_config.model_copy(update={
        k: v for k, v in {"rpn_post_nms_top_n": det.proposals_per_tile,
                          "rpn_pre_nms_top_n": det.candidates_per_level}.items() if v is not None})
    model = ckpt.replace_config(model_cfg).build(device, tile_size=cfg.tiling.tile_size)
    amp = {"auto": None, "fp32": False, "bf16": True}[det.precision]
    classifier = (ckpt.build_classifier(device, amp=device.type == "cuda" if amp is None else amp)
                  if det.vignette_classifier and not candidates else None)
    if ckpt.detector_classes is not None and classifier is None and not candidates:
        raise RunError("this model's detector finds plankton and non-plankton only, and its vignette classifier "
                       "names them: leave detector.vignette_classifier on")
    # with a classifier the box head only proposes candidates: the thresholds apply to its names
    thresholds = (np.r_[1.0, np.full(len(classes), det.candidate_score)].astype(np.float32)
                  if classifier or candidates else classes.threshold_array(cfg.filter.score_threshold))
    # Candidates get the mask head's mask where the box head saw plankton, a full box (refined
    # like any mask) elsewhere, whichever rows are written: with --keep-non-plankton deciding it,
    # the flag changed which organisms were found. Masks for every candidate cost a third of a
    # dense frame's time and found no more (held-out 0.844 vs 0.857, calibration 0.905 both).
    masks_for_non_plankton = cfg.filter.keep_non_plankton and not (classifier or candidates)
    predictor = TilePredictor(model, classes, device, thresholds, masks_for_non_plankton=masks_for_non_plankton,
                              batch_size=det.batch_tiles or (16 if device.type == "cuda" else 4),
                              amp=amp)
    return Stages(build_tiler(cfg),
                  FrameDetector(predictor, cfg.stitch, len(ckpt.classes) + 1, ckpt.label_map()),
                  Postprocessor(ckpt.classes, cfg.filter, cfg.measure, cfg.instrument.polarity, classifier,
                                candidates=bool(classifier) or candidates, even_illumination=cfg.area_illumination))


@dataclass
class FrameOutput:
    """What one frame adds to a shard: its object rows, COCO entries and frame-table row."""

    table: pa.Table
    image: dict
    annotations: list[dict]
    frame_row: dict


class RowMaker:
    """Measured detections → a frame's rows (positions and per-object times added) and counts.

    The last stage before writing; both engines run it, so their shards hold the same rows.
    """

    def __init__(self, cruise_dir: Path, locator: Locator, classes: ClassMap, line_rate_hz: float | None,
                 line_stream: bool = False) -> None:
        self.cruise_dir = Path(cruise_dir)
        self.line_stream = line_stream  # objects may reach past their frame: COCO gets a piece per frame
        self.locator = locator
        self.names = list(classes.names)
        self.line_rate_hz = line_rate_hz
        self._plankton = np.array([False, *classes.is_plankton])

    def __call__(self, frame: FrameInfo, rec: FrameRecord, shard: int = -1) -> tuple[FrameOutput, FrameSummary]:
        """``rec``: the measured objects ``frame`` owns and its tally."""
        kept, cols, counts = rec.dets, rec.columns, rec.counts
        rel = relative_path(frame.path, self.cruise_dir)
        t_frame = epoch_seconds([frame.timestamp])[0]
        at_frame = self.locator(np.array([t_frame]))
        times = self._object_times(t_frame, cols["centroid_y"])
        pos = self.locator(times)
        table = object_rows(kept, self.names, self._plankton[kept.labels], rel,
                            pd.to_datetime(times, unit="s", utc=True).round("us"), pos.lat, pos.lon, pos.depth_m, cols)
        out = FrameOutput(table, coco_image(kept, rel), coco_annotations(kept, table.column("object_id").to_pylist(), self.line_stream),
                          _frame_row(rel, frame, counts, self.names, shard, at_frame))
        per_label = np.bincount(kept.labels, minlength=len(self.names) + 1)[1:]
        summary = FrameSummary(rel, _tiles(frame), counts.total("tiles_run"), counts.total("capped_tiles"),
                               _named(counts.per_class[1:], self.names), _named(per_label, self.names))
        return out, summary

    def _object_times(self, t_frame: float, centroid_y: np.ndarray) -> np.ndarray:
        """UTC seconds per object: its own line's time on a line-scan camera, else the frame's."""
        if self.line_rate_hz is None:
            return np.full(len(centroid_y), t_frame)
        return t_frame + np.asarray(centroid_y, np.float64) / self.line_rate_hz


def _named(counts: np.ndarray, names: list[str]) -> dict[str, int]:
    return {names[k]: int(n) for k, n in enumerate(counts) if n}


# --- what every engine shares: identity, resumption, manifest ------------------------------

@dataclass
class RunPlan:
    """A run about to start: what is left to do and where its shards begin."""

    cruise_dir: Path
    out_dir: Path
    manifest_path: Path
    ident: dict
    todo: list[FrameInfo]
    first_shard: int
    locator: Locator
    stats: RunStats
    started: float
    frames: list[FrameInfo] = field(default_factory=list)  # every frame found, done or not
    rest: list[FrameInfo] = field(default_factory=list)  # frames left to do beyond --limit
    # frames earlier runs did → whether their line stream went on into them (None: not a line
    # stream, or not recorded)
    done: dict[Path, bool | None] = field(default_factory=dict)


class DoneFrame(NamedTuple):
    """What the frame table says of a frame an earlier run did."""

    stamp: tuple[int, int] | None  # size and mtime (ns) of its file then (None: not recorded)
    continued: bool | None  # its line stream went on into it from the frame before (None: not recorded)


class RunnerBase:
    """Identity, resumption, manifest and totals, the same whatever engine runs the stages."""

    engine = "local"

    def __init__(self, cfg: PipelineConfig, ckpt: Checkpoint, model_path: Path, device: torch.device) -> None:
        self.cfg = cfg
        self.ckpt = ckpt
        self.model_path = Path(model_path)
        self.device = device
        self.names = list(ckpt.classes.names)
        self.capacity = ckpt.model_config.detections_per_tile
        self.warnings = _WarningLog()  # a fresh one per run
        self.stop: StopRequest | None = None  # while a run is on

    def identity(self) -> dict:
        """What must not change between a run and its resumption (how it runs may: no ``engine`` section)."""
        config = dump_config(self.cfg)
        config.pop("engine", None)
        return {"config": config, "model_sha256": file_sha256(self.model_path)}

    def engine_info(self) -> dict:
        return {"name": self.engine}

    def run(self, cruise_dir: Path, out_dir: Path, force: bool = False,
            on_frame: Callable[[RunStats, int], None] | None = None, limit: int | None = None) -> RunStats:
        """Run (or resume) the cruise into ``out_dir``: locked for this run, its warnings recorded.

        Ctrl-C or SIGTERM ends the run after the frame in hand, with what is done written
        (``RunStats.interrupted``); a second one stops at once (``Interrupted``).
        """
        self.warnings = _WarningLog()
        log.addHandler(self.warnings)
        try:
            with claimed(Path(out_dir)), StopRequest() as self.stop:
                return self._run(Path(cruise_dir), Path(out_dir), force, on_frame, limit)
        finally:
            log.removeHandler(self.warnings)
            self.stop = None

    def _run(self, cruise_dir: Path, out_dir: Path, force: bool,
             on_frame: Callable[[RunStats, int], None] | None, limit: int | None) -> RunStats:
        raise NotImplementedError

    def _start(self, cruise_dir: Path, out_dir: Path, force: bool, limit: int | None) -> RunPlan:
        """Check the output folder, list the frames left to do, write the opening manifest."""
        t0 = time.time()
        cruise_dir, out_dir = Path(cruise_dir), Path(out_dir)
        manifest_path = out_dir / "manifest.json"
        ident = {**self.identity(), "cruise": str(cruise_dir.resolve())}
        done = self._check_previous(manifest_path, ident, force, out_dir)
        _remove_temporaries(out_dir)
        _remove_unfinished_shards(out_dir)
        frames = find_frames(cruise_dir, self.cfg.instrument, exclude=[out_dir])
        if not frames:
            raise RunError(f"{cruise_dir}: no frames found (looked for {', '.join(self.cfg.instrument.extensions)} "
                           "files below it); check the path")
        rels = [relative_path(f.path, cruise_dir) for f in frames]
        _check_frame_keys(rels)
        _check_unchanged(frames, rels, done, out_dir)
        stats = RunStats(frames_found=len(frames), plankton_names=frozenset(
            n for n, p in zip(self.names, self.ckpt.classes.is_plankton) if p))
        stats.frames_resumed = sum(1 for r in rels if r in done)
        todo = [f for f, r in zip(frames, rels) if r not in done]
        rest: list[FrameInfo] = []
        if limit is not None:
            todo, rest = todo[:limit], todo[limit:]
        plan = RunPlan(cruise_dir, out_dir, manifest_path, ident, todo, _next_shard(out_dir),
                       Locator.from_cruise(cruise_dir, self.cfg.geo), stats, t0, frames, rest,
                       {f.path: done[r].continued for f, r in zip(frames, rels) if r in done})
        self._write_manifest(manifest_path, ident, cruise_dir, stats, final=False)
        return plan

    def _stop_here(self, stats: RunStats) -> bool:
        """Whether a stop was asked for (checked between frames): the run then ends as interrupted."""
        if self.stop is not None and self.stop.requested:
            stats.interrupted = self.stop.signal_name
        return bool(stats.interrupted)

    def _segments(self, plan: RunPlan, size: int | None, max_gap_s: float | None,
                  max_open_frames: int) -> list[StreamSegment]:
        """The line stream's frames to do, in segments of ``size`` frames (None: one segment)."""
        gap = max_gap_s if max_gap_s is not None else 1.5 / self.cfg.instrument.frame_rate_hz
        sids = stream_ids(plan.frames, gap, self.cfg.instrument.timestamp_regex)
        return plan_segments(plan.frames, plan.todo, sids, size, plan.done, max_open_frames)

    def _account(self, stats: RunStats, summary: FrameSummary) -> None:
        stats.add(summary)
        if summary.capped:
            log.warning("%s: %d tile(s) reached detections_per_tile=%d; raise it in the model config",
                        summary.path, summary.capped, self.capacity)

    def _check_previous(self, manifest_path: Path, ident: dict, force: bool,
                        out_dir: Path) -> dict[str, DoneFrame]:
        """The frames a previous run of the same identity finished (relative path → what its table says)."""
        if not manifest_path.exists():
            if out_dir.exists() and any(out_dir.glob("objects/*.parquet")):
                raise RunError(f"{out_dir}: holds object files but no manifest.json; choose an empty output folder")
            return {}
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise RunError(f"{manifest_path}: unreadable manifest; choose another output folder or --force to start afresh") from None
        other_cruise = old.get("cruise_path") not in (None, ident["cruise"])
        same = (_run_defining(old.get("config")) == _run_defining(ident["config"])
                and old.get("model", {}).get("sha256") == ident["model_sha256"] and not other_cruise)
        if not same:
            if not force:
                what = (f"the cruise {old['cruise_path']}" if other_cruise else "a run with another config or model")
                raise RunError(f"{out_dir}: holds {what}; use another -o folder, or --force to replace it")
            _clear(out_dir)
            return {}
        if force:
            _clear(out_dir)
            return {}
        self.warnings.before = list(old.get("warnings") or [])
        if old.get("ctd_join"):  # frames done from here on get no ctd_* columns until joined again
            log.warning("%s: its CTD join (%s) will not cover the frames this run adds; rerun "
                        "`segplank join-ctd` when it ends", out_dir, old["ctd_join"].get("file"))
        return _done_frames(out_dir)

    def _write_manifest(self, path: Path, ident: dict, cruise_dir: Path, stats: RunStats, final: bool) -> None:
        write_json(path, {
            "segplank_version": __version__,
            "complete": final and not stats.interrupted,
            "cruise_dir": str(cruise_dir),
            "cruise_path": ident["cruise"],
            "config": ident["config"],
            "model": {"path": str(self.model_path), "sha256": ident["model_sha256"], "demo": self.ckpt.demo,
                      "classes": self.ckpt.classes.to_dict()},
            "device": str(self.device),
            "engine": self.engine_info(),
            "frames": {"found": stats.frames_found, "done_this_run": stats.frames_done,
                       "done_before": stats.frames_resumed,
                       "skipped": [{"path": str(s.path), "reason": s.reason} for s in stats.skipped]},
            "tiles": {"total": stats.tiles, "run": stats.tiles_run, "skipped_share": round(stats.skipped_tile_share, 4),
                      "capped": stats.capped_tiles},
            "counts": {"detected_per_class": stats.per_class, "written_per_class": stats.written_per_class,
                       "objects_written": stats.objects},
            "geo": stats.geo,
            "seconds": round(stats.seconds, 2),
            "stage_seconds": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
            **({"interrupted": stats.interrupted} if stats.interrupted else {}),
            "warnings": self.warnings.lines(),
        })

    def _finish(self, plan: RunPlan) -> None:
        """Merge COCO shards; after a resume, the manifest's counts cover every run, from the frame tables."""
        stats, out_dir = plan.stats, plan.out_dir
        stats.seconds = time.time() - plan.started
        if stats.frames_resumed:
            stats.per_class, stats.written_per_class, stats.objects = _totals(out_dir)
        stats.geo = {**plan.locator.describe(), **_coverage(out_dir, plan.locator)}
        cats = coco_categories(self.names, list(self.ckpt.classes.is_plankton))
        shards = sorted((out_dir / "coco").glob("part-*.json"))
        if self.cfg.output.coco:
            merge_coco_shards(shards, cats, out_dir / "predictions.coco.json",
                              {"description": f"segplank {__version__} predictions",
                               "cruise_dir": str(plan.cruise_dir)})
        self._write_manifest(plan.manifest_path, plan.ident, plan.cruise_dir, stats, final=True)


# --- the local engine -----------------------------------------------------------------------

class LocalRunner(RunnerBase):
    """Run a cruise through the stages on one machine.

    ``decode_workers`` processes decode and tile frames ahead (0: in this process); shards are
    written on a background thread, with at most ``write_queue`` flushes pending. Neither
    changes the output: frames are processed and written in the same order whatever they are.
    """

    def __init__(self, cfg: PipelineConfig, ckpt: Checkpoint, model_path: Path, device: torch.device,
                 threads: int | None = None, decode_workers: int = 0, write_queue: int = 1,
                 stream: bool = False, stream_band: int = 2, stream_match_iou: float = 0.3,
                 max_gap_s: float | None = None, max_open_frames: int = 4) -> None:
        # line stream (ISIIS): objects across frame cuts are stitched (segplank/stream.py); the
        # config says so, for the run's identity and for what reads its manifest
        super().__init__(cfg.with_stream(stream), ckpt, model_path, device)
        self.stream = stream
        self.stream_opts = {"band": stream_band, "match_iou": stream_match_iou, "max_open_frames": max_open_frames}
        self.max_gap_s = max_gap_s
        if threads:
            torch.set_num_threads(threads)
        stages = build_stages(cfg, ckpt, device)
        self.tiler, self.detector, self.post = stages.tiler, stages.detector, stages.post
        self.decode_workers = decode_workers
        self.write_queue = write_queue

    def engine_info(self) -> dict:
        return {"name": self.engine, "decode_workers": self.decode_workers}

    @property
    def stages(self) -> Stages:
        return Stages(self.tiler, self.detector, self.post)

    def _run(self, cruise_dir: Path, out_dir: Path, force: bool,
             on_frame: Callable[[RunStats, int], None] | None, limit: int | None) -> RunStats:
        plan = self._start(cruise_dir, out_dir, force, limit)
        stats = plan.stats
        rows = RowMaker(plan.cruise_dir, plan.locator, self.ckpt.classes, self.cfg.instrument.line_rate_hz,
                        line_stream=self.stream)
        frames = self._stream_frames(plan, rows) if self.stream else self._snapshot_frames(plan, rows)
        shard, buf = plan.first_shard, _ShardBuffer()
        trim = HeapTrimmer()
        # the decode workers fork at the first frame, before the writer's first shard starts its thread
        with closing(frames), ShardWriter(plan.out_dir, self.write_queue) as writer:
            for item in frames:
                if isinstance(item, SkippedFrame):
                    stats.skipped.append(item)
                    continue
                out, summary = item
                buf.add(out)
                trim()
                self._account(stats, summary)
                if buf.full(self.cfg.output):
                    writer.submit(buf, shard)
                    shard, buf = shard + 1, _ShardBuffer()
                if on_frame:
                    on_frame(stats, out.table.num_rows)
                if self._stop_here(stats):
                    break  # a line stream leaves what is open across this frame not done
            if buf.frames:
                writer.submit(buf, shard)
        _add_counts(stats.stage_seconds, {"write": writer.seconds})
        self._finish(plan)
        return stats

    def _snapshot_frames(self, plan: RunPlan, rows: RowMaker) -> Iterator[tuple[FrameOutput, FrameSummary] | SkippedFrame]:
        """Each frame to do through the stages, alone (``Stages.frame``), in order."""
        if self.cfg.stream.flat_field:
            log.warning("stream.flat_field applies to line streams only (--stream); frames are used as they are")
        clock = plan.stats.stage_seconds
        frames = prefetch(plan.todo, self.tiler, self.decode_workers, pin_memory=self.device.type == "cuda")
        with closing(frames):
            while True:
                with timed(clock, "wait") if self.decode_workers else untimed():
                    item = next(frames, None)
                if item is None:
                    return
                if isinstance(item, SkippedFrame):
                    yield item
                    continue
                _add_counts(clock, item.seconds)
                yield self.stages.frame(item.tf, rows, clock)

    def _stream_frames(self, plan: RunPlan, rows: RowMaker) -> Iterator[tuple[FrameOutput, FrameSummary] | SkippedFrame]:
        """A line stream's segments (``engine.segment_frames``; one by default) in turn through
        ``LineStreamRun``: each frame once every object that starts in it is whole."""
        runner = LineStreamRun(self.stages, rows, self.cfg, len(self.names) + 1, plan.stats.stage_seconds,
                               plan.out_dir, self.decode_workers, pin_memory=self.device.type == "cuda",
                               **self.stream_opts)
        segments = self._segments(plan, self.cfg.engine.segment_frames, self.max_gap_s,
                                  self.stream_opts["max_open_frames"])
        # one set of decode workers for every segment's frames, started before any writer thread
        items = runner.decode([f for seg in segments for f in seg.work])
        with closing(items):
            for seg in segments:
                yield from runner.frames(seg, items)


@dataclass
class _ShardBuffer:
    tables: list = field(default_factory=list)
    images: list = field(default_factory=list)
    annotations: list = field(default_factory=list)
    frame_rows: list = field(default_factory=list)
    objects: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def frames(self) -> int:
        return len(self.frame_rows)

    def full(self, out: OutputConfig, timed: bool = True) -> bool:
        """Whether to write it now: enough objects or frames, or ``shard_seconds`` of work that a
        kill would lose (``timed=False``: not by time, so that a retried task groups its frames
        into the very shards, with the very names, of its first attempt)."""
        return bool(self.frames) and (self.objects >= out.shard_objects or self.frames >= out.shard_frames
                                      or (timed and time.monotonic() - self.started >= out.shard_seconds))

    def add(self, out: FrameOutput) -> None:
        self.tables.append(out.table)
        self.images.append(out.image)
        self.annotations.extend(out.annotations)
        self.frame_rows.append(out.frame_row)
        self.objects += out.table.num_rows

    def flush(self, out_dir: Path, shard: int) -> None:
        """Objects and COCO first, the frame table last: it is what marks frames as done."""
        name = f"part-{shard:05d}"
        write_shard(self.tables, out_dir / "objects" / f"{name}.parquet")
        write_coco_shard(out_dir / "coco" / f"{name}.json", self.images, self.annotations)
        for r in self.frame_rows:
            r["shard"] = shard
        with atomic_path(out_dir / "frames" / f"{name}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(self.frame_rows, schema=FRAME_SCHEMA), tmp)


class ShardWriter:
    """Writes shards in order on one background thread, so the model runs while a shard is written.

    At most ``pending`` flushes are queued or in progress (memory stays bounded). A failed
    write stops the writer (no later shard may land without it) and its error is raised in the
    caller's thread, at the next ``submit`` or at ``close``. Each shard keeps the resume rule:
    objects, COCO, then the frame table.
    """

    def __init__(self, out_dir: Path, pending: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.pending = max(1, pending)
        self.seconds = 0.0  # spent writing, on the writer's thread
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segplank-shards")
        self._queue: deque[Future] = deque()
        self._failed = False

    def submit(self, buf: _ShardBuffer, shard: int) -> None:
        """Queue a full buffer (the caller starts a new one); waits while ``pending`` are queued."""
        while self._queue and (self._queue[0].done() or len(self._queue) >= self.pending):
            self._queue.popleft().result()  # raises the writer's error here
        self._queue.append(self._pool.submit(self._write, buf, shard))

    def close(self) -> None:
        """Wait for every queued shard; raise the first write error."""
        try:
            while self._queue:
                self._queue.popleft().result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the run is failing already: finish what is queued, keep the first error
            self.close()
        except Exception as e:
            log.error("writing a shard failed as well: %s", e)

    def _write(self, buf: _ShardBuffer, shard: int) -> None:
        if self._failed:
            return
        t = time.perf_counter()
        try:
            buf.flush(self.out_dir, shard)
        except BaseException:
            self._failed = True
            raise
        finally:
            self.seconds += time.perf_counter() - t


def _tiles(frame: FrameInfo) -> int:
    return 0 if frame.tiles is None else len(frame.tiles)


def _frame_row(rel: str, frame: FrameInfo, counts: FrameCounts, names: list[str], shard: int, pos: Position) -> dict:
    per = {names[k]: int(n) for k, n in enumerate(counts.per_class[1:]) if n}
    size, mtime = _file_stamp(frame.path)
    return {"frame_path": rel, "frame_index": frame.index, "shard": shard, "time": frame.timestamp,
            "tiles": _tiles(frame), "tiles_run": counts.total("tiles_run"), "objects_written": counts.written,
            "counts": json.dumps(per), "rejected": counts.rejected, "lat": float(pos.lat[0]), "lon": float(pos.lon[0]),
            "depth_m": float(pos.depth_m[0]), "file_bytes": size, "file_mtime_ns": mtime}


def _run_defining(config: dict | None) -> dict | None:
    """The config without what only later commands read (the imaged volume: ``profile``): stating
    it after a run started must not make its folder another run's."""
    if not config:
        return config
    return {**config, "instrument": {k: v for k, v in (config.get("instrument") or {}).items()
                                     if k != "volume_per_frame_l"}}


def _file_stamp(path: Path) -> tuple[int | None, int | None]:
    """Size and modification time (ns) of the file a frame is read from (a video's frame: the video)."""
    try:
        st = os.stat(source_file(path))
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def _check_frame_keys(rels: list[str]) -> None:
    """Object ids are made from frame paths (``frame_key``): two frames that would share them are refused."""
    seen: dict[str, str] = {}
    for r in rels:
        k = frame_key(r)
        if k in seen:
            raise RunError(f"{seen[k]} and {r} would give their objects the same ids ({k}_00000...); "
                           "rename one of them")
        seen[k] = r


def _check_unchanged(frames: list[FrameInfo], rels: list[str], done: dict[str, DoneFrame],
                     out_dir: Path) -> None:
    """A frame done by an earlier run must be the same file now (size and mtime), else the run is refused."""
    changed = [r for f, r in zip(frames, rels)
               if r in done and done[r].stamp is not None and _file_stamp(f.path) != done[r].stamp]
    if changed:
        raise RunError(f"{out_dir}: {len(changed)} frame(s) changed since this run processed them (size or "
                       f"modification time), e.g. {changed[0]}; use --force to redo the run, or another -o folder")


class _WarningLog(logging.Handler):
    """Every warning of a run, kept for its manifest (and those of the runs it resumes)."""

    MOST = 1000

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.before: list[str] = []
        self._seen: dict[str, None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._seen) < self.MOST:
            self._seen.setdefault(record.getMessage(), None)

    def lines(self) -> list[str]:
        return list(dict.fromkeys([*self.before, *self._seen]))[: self.MOST]


def _totals(out_dir: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Detections per class, objects written per class and in all, over every shard of the output."""
    per_class: dict[str, int] = {}
    for p in sorted((out_dir / "frames").glob("part-*.parquet")):
        for c in pq.read_table(p, columns=["counts"]).column("counts").to_pylist():
            for k, v in json.loads(c).items():
                per_class[k] = per_class.get(k, 0) + v
    names = pq.read_table(out_dir / "objects", columns=["label_name"]).column("label_name").to_pylist()
    written = {k: names.count(k) for k in sorted(set(names))}
    return per_class, written, len(names)


def _coverage(out_dir: Path, locator: Locator) -> dict[str, int]:
    """Frames without a time, a position or a depth, over every shard of the output (every run
    of it); one warning, not one per frame. A frame without a time is not blamed on the records."""
    parts = sorted((out_dir / "frames").glob("part-*.parquet"))
    if not parts:
        return {"frames": 0, "no_time": 0, "outside_nav": 0, "outside_ctd": 0}
    t = pq.read_table(parts, columns=["frame_path", "time", "lat", "depth_m"]).to_pandas()
    no_time = t["time"].isna()
    off_nav, off_ctd = t["lat"].isna() & ~no_time, t["depth_m"].isna() & ~no_time
    if no_time.any():
        log.warning("%d of %d frames have no time (see the warning about their file names), so no position "
                    "or depth either, e.g. %s", no_time.sum(), len(t), t.loc[no_time, "frame_path"].iloc[0])
    if off_nav.any() or off_ctd.any():
        log.warning("%d of %d frames had no position (outside the navigation record: %s) and %d no depth "
                    "(outside the CTD record: %s); their objects have NaN there, e.g. %s",
                    off_nav.sum(), len(t), locator.nav.source if locator.nav else "none found", off_ctd.sum(),
                    locator.ctd.source if locator.ctd else "none found",
                    ", ".join(t.loc[off_nav | off_ctd, "frame_path"].head(3)))
    return {"frames": len(t), "no_time": int(no_time.sum()), "outside_nav": int(off_nav.sum()),
            "outside_ctd": int(off_ctd.sum())}


def _done_frames(out_dir: Path) -> dict[str, DoneFrame]:
    """Frame path → what its frame table says (file size and mtime when processed, whether its
    line stream went on into it; None where a run did not record it), from every shard that
    reads back whole. A power cut can tear what was renamed in place: a shard that does not read
    back loses its frame table, with one line, so its frames are redone (its other files go with
    it, as any unfinished shard's)."""
    done: dict[str, DoneFrame] = {}
    for frames in sorted((out_dir / "frames").glob("part-*.parquet")):
        try:
            t = _read_back(frames, out_dir)
        except Exception as e:
            log.warning("%s: shard %s does not read back (%s); its frames will be redone", out_dir,
                        frames.stem, str(e).splitlines()[0] if str(e) else type(e).__name__)
            frames.unlink()
            continue
        paths = t.column("frame_path").to_pylist()

        def column(name: str) -> list:
            return t.column(name).to_pylist() if name in t.column_names else [None] * len(paths)

        stamps = [None if b is None else (b, m) for b, m in zip(column("file_bytes"), column("file_mtime_ns"))]
        done.update((p, DoneFrame(st, c)) for p, st, c in zip(paths, stamps, column("stream_continued")))
    return done


def _read_back(frames: Path, out_dir: Path) -> pa.Table:
    """A shard's frame table, once its objects and COCO files agree with it; raises if they do not."""
    table = pq.read_table(frames)
    rows = pq.read_metadata(out_dir / "objects" / f"{frames.stem}.parquet").num_rows
    written = sum(table.column("objects_written").to_pylist())
    if rows != written:
        raise ValueError(f"{rows} object rows where its frame table counts {written}")
    images = json.loads((out_dir / "coco" / f"{frames.stem}.json").read_text())["images"]
    if len(images) != table.num_rows:
        raise ValueError(f"{len(images)} COCO images for {table.num_rows} frames")
    return table


def _shard_number(path: Path) -> int:
    return int(path.name.split(".")[0].split("-")[1])


def _next_shard(out_dir: Path) -> int:
    """One past the highest finished shard (by number: names outgrow their zero padding)."""
    return max((_shard_number(p) + 1 for p in (out_dir / "frames").glob("part-*.parquet")), default=0)


def _remove_temporaries(out_dir: Path) -> None:
    """Half-written files a killed run left behind (atomic writes name them ``.<file>.*.tmp``)."""
    for sub in ("", "objects", "coco", "frames"):
        for p in (out_dir / sub).glob(".*.tmp"):
            p.unlink(missing_ok=True)


def _remove_unfinished_shards(out_dir: Path) -> None:
    """Object and COCO shards without their frame table: a run stopped while writing them, so
    their frames are not done and will be redone (several can be left when shards are
    written in parallel, as under Ray)."""
    finished = {_shard_number(p) for p in (out_dir / "frames").glob("part-*.parquet")}
    for sub, ext in (("objects", "parquet"), ("coco", "json")):
        for p in (out_dir / sub).glob(f"part-*.{ext}"):
            if _shard_number(p) not in finished:
                p.unlink(missing_ok=True)


def _clear(out_dir: Path) -> None:
    for sub in ("objects", "coco", "frames"):
        for p in (out_dir / sub).glob("*"):
            p.unlink()
    for p in ("manifest.json", "predictions.coco.json"):
        (out_dir / p).unlink(missing_ok=True)
