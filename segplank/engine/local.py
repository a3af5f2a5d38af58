"""The local streaming runner: frames in, shards out, resumable.

Frames stream from the source one at a time (memory stays flat); objects are buffered
and written as Parquet + COCO shards, each with a frame table that records which frames it
holds. A shard's frame table is written last, so a frame counts as done only once its
objects are safely on disk: a rerun of the same command skips those frames and completes
the rest, with no object lost or written twice.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import __version__
from ..config import PipelineConfig, dump_config
from ..export.atomic import atomic_path, write_json
from ..export.coco import coco_annotations, coco_categories, coco_image, merge_coco_shards, write_coco_shard
from ..export.parquet import object_rows, write_shard
from ..frames import FrameSource, SkippedFrame, find_frames
from ..geo import Locator, Position, epoch_seconds
from ..model.checkpoint import Checkpoint, file_sha256
from ..model.predict import TilePredictor
from .stages import FrameDetector, Postprocessor, Tiler

log = logging.getLogger("segplank")


class RunError(RuntimeError):
    """The run cannot start; the message says why and what to do."""


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

    @property
    def skipped_tile_share(self) -> float:
        return 1.0 - self.tiles_run / self.tiles if self.tiles else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


FRAME_SCHEMA = pa.schema([("frame_path", pa.string()), ("frame_index", pa.int64()), ("shard", pa.int32()),
                          ("time", pa.timestamp("us", tz="UTC")), ("tiles", pa.int32()), ("tiles_run", pa.int32()),
                          ("objects_written", pa.int32()), ("counts", pa.string()),
                          ("lat", pa.float64()), ("lon", pa.float64()), ("depth_m", pa.float64())])


class LocalRunner:
    """Run a cruise through the stages on one machine."""

    def __init__(self, cfg: PipelineConfig, ckpt: Checkpoint, model_path: Path, device: torch.device,
                 threads: int | None = None) -> None:
        self.cfg = cfg
        self.ckpt = ckpt
        self.model_path = model_path
        self.device = device
        if threads:
            torch.set_num_threads(threads)
        classes = ckpt.classes
        det = cfg.detector
        model_cfg = ckpt.model_config.model_copy(update={
            k: v for k, v in {"rpn_post_nms_top_n": det.proposals_per_tile,
                              "rpn_pre_nms_top_n": det.candidates_per_level}.items() if v is not None})
        model = ckpt.replace_config(model_cfg).build(device, tile_size=cfg.tiling.tile_size)
        amp = {"auto": None, "fp32": False, "bf16": True}[det.precision]
        self.tiler = Tiler(cfg.tiling, cfg.instrument.polarity, cfg.detector.component_proposals)
        self.detector = FrameDetector(
            TilePredictor(model, classes, device, classes.threshold_array(cfg.filter.score_threshold),
                          masks_for_non_plankton=cfg.filter.keep_non_plankton, batch_size=det.batch_tiles, amp=amp),
            cfg.stitch)
        self.post = Postprocessor(classes, cfg.filter, cfg.measure, cfg.instrument.polarity)
        self.names = list(classes.names)

    def identity(self) -> dict:
        """What must not change between a run and its resumption."""
        return {"config": dump_config(self.cfg), "model_sha256": file_sha256(self.model_path)}

    def run(self, cruise_dir: Path, out_dir: Path, force: bool = False,
            on_frame: Callable[[RunStats, int], None] | None = None, limit: int | None = None) -> RunStats:
        t0 = time.time()
        cruise_dir, out_dir = Path(cruise_dir), Path(out_dir)
        manifest_path = out_dir / "manifest.json"
        ident = self.identity()
        done = self._check_previous(manifest_path, ident, force, out_dir)
        _remove_temporaries(out_dir)
        frames = find_frames(cruise_dir, self.cfg.instrument, exclude=[out_dir])
        if not frames:
            raise RunError(f"{cruise_dir}: no frames found (looked for {', '.join(self.cfg.instrument.extensions)} "
                           "files below it); check the path")
        stats = RunStats(frames_found=len(frames), plankton_names=frozenset(
            n for n, p in zip(self.names, self.ckpt.classes.is_plankton) if p))
        stats.frames_resumed = sum(1 for f in frames if _rel(f.path, cruise_dir) in done)
        todo = [f for f in frames if _rel(f.path, cruise_dir) not in done]
        if limit is not None:
            todo = todo[:limit]
        shard = _next_shard(out_dir)
        locator = Locator.from_cruise(cruise_dir, self.cfg.geo)
        source = FrameSource(todo)
        buf = _ShardBuffer()
        self._write_manifest(manifest_path, ident, cruise_dir, stats, final=False)
        clock = stats.stage_seconds
        frames_iter = iter(source)
        while True:
            with _timed(clock, "decode"):
                item = next(frames_iter, None)
            if item is None:
                break
            frame, image = item
            with _timed(clock, "tile"):
                tf = self.tiler(frame, image)
            dets, capped = self.detector(tf, clock)
            with _timed(clock, "measure"):
                kept, cols, counts = self.post(dets, image)
            with _timed(clock, "write"):
                rel = _rel(frame.path, cruise_dir)
                t_frame = epoch_seconds([frame.timestamp])[0]
                at_frame = locator.frame(t_frame, rel)
                times = self._object_times(t_frame, cols["centroid_y"])
                pos = locator(times)
                plank = np.array([False, *self.ckpt.classes.is_plankton])[kept.labels]
                table = object_rows(kept, self.names, plank, rel, pd.to_datetime(times, unit="s", utc=True).round("us"),
                                    pos.lat, pos.lon, pos.depth_m, cols)
                buf.add(table, coco_image(kept, rel), coco_annotations(kept, table.column("object_id").to_pylist()),
                        _frame_row(rel, tf, counts, self.names, shard, at_frame))
                if buf.objects >= self.cfg.output.shard_objects or buf.frames >= self.cfg.output.shard_frames:
                    buf.flush(out_dir, shard)
                    shard += 1
            self._count(stats, counts, capped, kept)
            stats.frames_done += 1
            if on_frame:
                on_frame(stats, len(kept))
        if buf.frames:
            with _timed(clock, "write"):
                buf.flush(out_dir, shard)
        stats.skipped = source.skipped
        stats.geo = locator.describe()
        locator.warn_coverage()
        stats.seconds = time.time() - t0
        self._finish(out_dir, cruise_dir, manifest_path, ident, stats)
        return stats

    def _object_times(self, t_frame: float, centroid_y: np.ndarray) -> np.ndarray:
        """UTC seconds per object: its own line's time on a line-scan camera, else the frame's."""
        rate = self.cfg.instrument.line_rate_hz
        if rate is None:
            return np.full(len(centroid_y), t_frame)
        return t_frame + np.asarray(centroid_y, np.float64) / rate

    def _count(self, stats: RunStats, counts, capped: int, kept) -> None:
        stats.tiles += counts.tiles
        stats.tiles_run += counts.tiles_run
        stats.capped_tiles += capped
        stats.objects += len(kept)
        for k, n in enumerate(counts.per_class[1:]):
            if n:
                stats.per_class[self.names[k]] = stats.per_class.get(self.names[k], 0) + int(n)
        for lb in kept.labels:
            name = self.names[lb - 1]
            stats.written_per_class[name] = stats.written_per_class.get(name, 0) + 1
        if capped:
            log.warning("%s: %d tile(s) reached detections_per_tile=%d; raise it in the model config",
                        kept.frame.path if kept.frame else "?", capped, self.detector.predictor.capacity)

    def _check_previous(self, manifest_path: Path, ident: dict, force: bool, out_dir: Path) -> set[str]:
        if not manifest_path.exists():
            if out_dir.exists() and any(out_dir.glob("objects/*.parquet")):
                raise RunError(f"{out_dir}: holds object files but no manifest.json; choose an empty output folder")
            return set()
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise RunError(f"{manifest_path}: unreadable manifest; choose another output folder or --force to start afresh") from None
        same = old.get("config") == ident["config"] and old.get("model", {}).get("sha256") == ident["model_sha256"]
        if not same:
            if not force:
                raise RunError(f"{out_dir}: holds a run with another config or model; use another -o folder, "
                               "or --force to replace it")
            _clear(out_dir)
            return set()
        if force:
            _clear(out_dir)
            return set()
        return _done_frames(out_dir)

    def _write_manifest(self, path: Path, ident: dict, cruise_dir: Path, stats: RunStats, final: bool) -> None:
        write_json(path, {
            "segplank_version": __version__,
            "complete": final,
            "cruise_dir": str(cruise_dir),
            "config": ident["config"],
            "model": {"path": str(self.model_path), "sha256": ident["model_sha256"], "demo": self.ckpt.demo,
                      "classes": self.ckpt.classes.to_dict()},
            "device": str(self.device),
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
        })

    def _finish(self, out_dir: Path, cruise_dir: Path, manifest_path: Path, ident: dict, stats: RunStats) -> None:
        """Merge COCO shards; after a resume, the manifest's counts cover every run, from the frame tables."""
        if stats.frames_resumed:
            stats.per_class, stats.written_per_class, stats.objects = _totals(out_dir)
            stats.geo.update(_coverage(out_dir))
        cats = coco_categories(self.names, list(self.ckpt.classes.is_plankton))
        shards = sorted((out_dir / "coco").glob("part-*.json"))
        if self.cfg.output.coco:
            merge_coco_shards(shards, cats, out_dir / "predictions.coco.json",
                              {"description": f"segplank {__version__} predictions", "cruise_dir": str(cruise_dir)})
        self._write_manifest(manifest_path, ident, cruise_dir, stats, final=True)


@dataclass
class _ShardBuffer:
    tables: list = field(default_factory=list)
    images: list = field(default_factory=list)
    annotations: list = field(default_factory=list)
    frame_rows: list = field(default_factory=list)
    objects: int = 0

    @property
    def frames(self) -> int:
        return len(self.frame_rows)

    def add(self, table: pa.Table, image: dict, anns: list[dict], frame_row: dict) -> None:
        self.tables.append(table)
        self.images.append(image)
        self.annotations.extend(anns)
        self.frame_rows.append(frame_row)
        self.objects += table.num_rows

    def flush(self, out_dir: Path, shard: int) -> None:
        """Objects and COCO first, the frame table last: it is what marks frames as done."""
        name = f"part-{shard:05d}"
        write_shard(self.tables, out_dir / "objects" / f"{name}.parquet")
        write_coco_shard(out_dir / "coco" / f"{name}.json", self.images, self.annotations)
        for r in self.frame_rows:
            r["shard"] = shard
        with atomic_path(out_dir / "frames" / f"{name}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(self.frame_rows, schema=FRAME_SCHEMA), tmp)
        self.__init__()


@contextmanager
def _timed(clock: dict[str, float], stage: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - t


def _frame_row(rel: str, tf, counts, names: list[str], shard: int, pos: Position) -> dict:
    counts.tiles, counts.tiles_run = len(tf.windows), len(tf.run)
    per = {names[k]: int(n) for k, n in enumerate(counts.per_class[1:]) if n}
    return {"frame_path": rel, "frame_index": tf.frame.index, "shard": shard, "time": tf.frame.timestamp,
            "tiles": len(tf.windows), "tiles_run": len(tf.run), "objects_written": counts.written,
            "counts": json.dumps(per), "lat": float(pos.lat[0]), "lon": float(pos.lon[0]),
            "depth_m": float(pos.depth_m[0])}


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


def _coverage(out_dir: Path) -> dict[str, int]:
    """Frames without a position or a depth, over every shard of the output."""
    t = pq.read_table(out_dir / "frames", columns=["lat", "depth_m"]).to_pandas()
    return {"frames": len(t), "outside_nav": int(t["lat"].isna().sum()), "outside_ctd": int(t["depth_m"].isna().sum())}


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _done_frames(out_dir: Path) -> set[str]:
    done: set[str] = set()
    for p in sorted((out_dir / "frames").glob("part-*.parquet")):
        done.update(pq.read_table(p, columns=["frame_path"]).column("frame_path").to_pylist())
    return done


def _next_shard(out_dir: Path) -> int:
    parts = sorted((out_dir / "frames").glob("part-*.parquet"))
    return int(parts[-1].stem.split("-")[1]) + 1 if parts else 0


def _remove_temporaries(out_dir: Path) -> None:
    """Half-written files a killed run left behind (atomic writes name them ``.<file>.*.tmp``)."""
    for sub in ("", "objects", "coco", "frames"):
        for p in (out_dir / sub).glob(".*.tmp"):
            p.unlink(missing_ok=True)


def _clear(out_dir: Path) -> None:
    for sub in ("objects", "coco", "frames"):
        for p in (out_dir / sub).glob("*"):
            p.unlink()
    for p in ("manifest.json", "predictions.coco.json"):
        (out_dir / p).unlink(missing_ok=True)
