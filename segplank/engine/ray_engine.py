"""The Ray engine: the local engine's stages as a Ray Data pipeline, for cruises past one machine.

    frame records (blocks) → decode + tile plan (CPU tasks) → DetectActor pool (the model,
    loaded once per actor; GPUs where present) → shard writers (tasks) → per-frame summaries
    streamed back to the driver, which keeps the manifest.

The stage objects are the local engine's (``build_stages``, ``RowMaker``), so the objects are
the same. Shards are written by the workers, with the local engine's rule: objects and COCO
first, the frame table last, each file atomically. A shard is named by the position of its
first frame in this run's work list, offset past every shard already in the output folder:
names are unique without any coordination between writers, and a resumed run never
overwrites a finished shard. Shards may finish out of order, so a killed run can leave
several shards without their frame table: the next run removes them (``RunnerBase._start``)
and redoes their frames. Outputs go to ``out_dir`` from every worker: on a multi-node
cluster it must be a shared file system, as must the cruise folder and the checkpoint.

Ray is optional (``pip install segplank[ray]``): it is imported only when a run starts.
"""
from __future__ import annotations

import importlib.util
import logging
import pickle
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import torch

from ..config import PipelineConfig, build_config, dump_config
from ..frames import SkippedFrame
from ..geo import Locator
from ..model.checkpoint import Checkpoint, load_checkpoint
from ..structures import FrameInfo
from .line_stream import LineStreamRun, StreamSegment
from .memory import HeapTrimmer
from .local import (FrameOutput, FrameSummary, RowMaker, RunError, RunnerBase, RunPlan, RunStats, _ShardBuffer,
                    build_stages, build_tiler)
from .prefetch import Decoded, decode_and_tile
from .stages import Tiler
from .timing import timed

log = logging.getLogger("segplank")

WRITER_CPUS = 0.25  # a shard writer mostly waits on the disk


def import_ray() -> Any:
    """Ray, or a RunError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RunError("--engine ray needs Ray: pip install 'segplank[ray]'") from None
    return ray


class RayRunner(RunnerBase):
    """Run a cruise as a Ray Data pipeline; same ``run`` API, outputs and resume rule as ``LocalRunner``.

    ``address``: a running cluster (None: the one ``ray.init`` finds or starts; a Ray runtime
    already initialised in this process is used as it is). ``actors``: the most model
    replicas (default: one per GPU, else one per ``actor_cpus`` CPUs, one CPU left for the
    writers). ``batch_frames``: frames per actor call. ``frames_per_block``: frames per
    input block, the unit of decode tasks.
    """

    engine = "ray"

    def __init__(self, cfg: PipelineConfig, ckpt: Checkpoint, model_path: Path, address: str | None = None,
                 actors: int | None = None, actor_cpus: float = 1.0, batch_frames: int = 1,
                 frames_per_block: int = 8, stream: bool = False, segment_frames: int = 64) -> None:
        if importlib.util.find_spec("ray") is None:  # fail before any work, not at run time
            import_ray()
        # the device is known once connected
        super().__init__(cfg.with_stream(stream), ckpt, model_path, torch.device("cpu"))
        self.stream = stream
        self.segment_frames = segment_frames
        self.address = address
        self.actors = actors
        self.actor_cpus = actor_cpus
        self.batch_frames = batch_frames
        self.frames_per_block = frames_per_block
        self._pool_size = 1

    def engine_info(self) -> dict:
        return {"name": self.engine, "address": self.address, "actors": self._pool_size,
                "actor_cpus": self.actor_cpus, "batch_frames": self.batch_frames,
                **({"segment_frames": self.segment_frames} if self.stream else {})}

    def _run(self, cruise_dir: Path, out_dir: Path, force: bool,
             on_frame: Callable[[RunStats, int], None] | None, limit: int | None) -> RunStats:
        ray = import_ray()
        started_here = self._connect(ray)
        try:
            use_gpu = self._use_gpus(ray)
            self.device = torch.device("cuda" if use_gpu else "cpu")
            self._pool_size = self._actor_count(ray, use_gpu)
            plan = self._start(cruise_dir, out_dir, force, limit)
            if plan.todo:
                ds = self._segment_dataset(ray, plan, use_gpu) if self.stream else self._dataset(ray, plan, use_gpu)
                self._stream(ds, plan, on_frame)
            self._finish(plan)
            return plan.stats
        finally:
            if started_here:
                ray.shutdown()

    # --- cluster ------------------------------------------------------------------------

    def _connect(self, ray: Any) -> bool:
        """Join (or start) a Ray runtime; True if this call started it (so the run stops it)."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"address": self.address} if self.address else {"include_dashboard": False}
        ray.init(logging_level=logging.WARNING, **kwargs)
        return True

    def _use_gpus(self, ray: Any) -> bool:
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.cfg.device == "cuda" and not gpus:
            raise RunError("--device cuda was asked for but the Ray cluster has no GPU; use --device cpu or auto")
        return self.cfg.device != "cpu" and gpus > 0

    def _actor_count(self, ray: Any, use_gpu: bool) -> int:
        if self.actors:
            return self.actors
        res = ray.cluster_resources()
        if use_gpu:
            return max(1, int(res.get("GPU", 1)))
        return max(1, int((res.get("CPU", 1) - 1) // self.actor_cpus))

    # --- the pipeline -------------------------------------------------------------------

    def _dataset(self, ray: Any, plan: RunPlan, use_gpu: bool) -> Any:
        """frames → decode + plan → model actors → shard writers; rows: (ordinal, summary)."""
        cfg = self.cfg
        records = frame_records(plan.todo)
        blocks = [records.slice(i, self.frames_per_block) for i in range(0, records.num_rows, self.frames_per_block)]
        tiler = build_tiler(cfg)
        threads = max(1, int(round(self.actor_cpus)))
        ds = ray.data.from_arrow(blocks)
        # on CPUs the decode tasks ask what the actors ask, so Ray fuses them into the actors
        # (no copy of decoded frames); with GPUs they stay CPU tasks feeding the GPU actors
        ds = ds.map(decode_record, fn_kwargs={"tiler": tiler}, num_cpus=1 if use_gpu else self.actor_cpus)
        ds = ds.map_batches(DetectActor, batch_size=self.batch_frames,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self._pool_size),
                            num_gpus=1 if use_gpu else 0, num_cpus=self.actor_cpus,
                            fn_constructor_kwargs={"cfg": _plain(cfg), "model_path": str(self.model_path),
                                                   "cruise_dir": str(plan.cruise_dir), "use_gpu": use_gpu,
                                                   "threads": threads})
        ds = ds.map_batches(write_shards, batch_size=cfg.output.shard_frames, num_cpus=WRITER_CPUS,
                            fn_kwargs={"out_dir": str(plan.out_dir), "first_shard": plan.first_shard,
                                       "shard_objects": cfg.output.shard_objects})
        ds.context.enable_progress_bars = False  # the CLI shows its own
        return ds

    def _segment_dataset(self, ray: Any, plan: RunPlan, use_gpu: bool) -> Any:
        """A line stream: segments of ``segment_frames`` frames → segment actors, each running
        the local engine's stream code and writing its own shards; rows: (ordinal, summary)."""
        st = self.cfg.stream
        segments = self._segments(plan, self.segment_frames, st.max_gap_s, st.max_open_frames)
        if st.flat_field and len(segments) > 1:
            log.warning("stream.flat_field with %d segments: each segment's running background starts afresh "
                        "at its first frame (unless an earlier run saved it)", len(segments))
        ds = ray.data.from_items([{"segment": pickle.dumps(s, protocol=5)} for s in segments])
        ds = ds.map_batches(SegmentActor, batch_size=1,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self._pool_size),
                            num_gpus=1 if use_gpu else 0, num_cpus=self.actor_cpus,
                            fn_constructor_kwargs={"cfg": _plain(self.cfg), "model_path": str(self.model_path),
                                                   "cruise_dir": str(plan.cruise_dir), "out_dir": str(plan.out_dir),
                                                   "first_shard": plan.first_shard, "use_gpu": use_gpu,
                                                   "threads": max(1, int(round(self.actor_cpus)))})
        ds.context.enable_progress_bars = False
        return ds

    def _stream(self, ds: Any, plan: RunPlan, on_frame: Callable[[RunStats, int], None] | None) -> None:
        """Count each frame as its shard lands (frames arrive in shard batches, in any order)."""
        stats, skipped = plan.stats, []
        for row in ds.iter_rows():
            item = pickle.loads(row["summary"])
            if isinstance(item, SkippedFrame):
                log.warning("skipped %s: %s", item.path, item.reason)
                skipped.append((int(row["ordinal"]), item))
                continue
            self._account(stats, item)
            if on_frame:
                on_frame(stats, item.objects)
            if self._stop_here(stats):
                break  # shards still being written land whole or are redone by the next run
        stats.skipped = [s for _, s in sorted(skipped, key=lambda x: x[0])]


def _plain(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as plain data for the actors (validated again there); how to run is not theirs."""
    data = dump_config(cfg)
    data.pop("engine", None)
    return data


# --- what runs on the workers -------------------------------------------------------------

def frame_records(frames: list[FrameInfo]) -> pa.Table:
    """The work list as columns (compact for many frames); ``ordinal`` is the position in it."""
    return pa.table({
        "ordinal": np.arange(len(frames), dtype=np.int64),
        "path": [str(f.path) for f in frames],
        "index": [f.index for f in frames],
        "time": [f.timestamp.isoformat() if f.timestamp is not None else None for f in frames],
        "pixel_size_um": [f.pixel_size_um for f in frames],
    })


def _frame_info(rec: dict[str, Any]) -> FrameInfo:
    t = rec["time"]
    return FrameInfo(path=Path(rec["path"]), index=int(rec["index"]),
                     timestamp=datetime.fromisoformat(t) if t is not None else None,
                     pixel_size_um=float(rec["pixel_size_um"]))


def decode_record(rec: dict[str, Any], tiler: Tiler) -> dict[str, Any]:
    """Ray task: one frame decoded and its tiles planned (the float32 tiles are cut by the actor)."""
    item = decode_and_tile(_frame_info(rec), tiler, crop=False)
    return {"ordinal": rec["ordinal"], "decoded": pickle.dumps(item, protocol=5)}


class DetectActor:
    """Ray Data actor: the model loaded once from the checkpoint path, then batches of frames
    through the same stage objects as the local engine (detect, stitch, measure, rows)."""

    def __init__(self, cfg: dict[str, Any], model_path: str, cruise_dir: str, use_gpu: bool, threads: int) -> None:
        torch.set_num_threads(threads)
        cfg = build_config(cfg)
        ckpt = load_checkpoint(Path(model_path))
        self.stages = build_stages(cfg, ckpt, torch.device("cuda" if use_gpu else "cpu"))
        self.rows = RowMaker(Path(cruise_dir), Locator.from_cruise(Path(cruise_dir), cfg.geo), ckpt.classes,
                             cfg.instrument.line_rate_hz)
        self.trim = HeapTrimmer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out = [self._frame(pickle.loads(b)) for b in batch["decoded"]]
        self.trim()
        return {"ordinal": list(batch["ordinal"]), "result": [pickle.dumps(r, protocol=5) for r in out]}

    def _frame(self, item: Decoded | SkippedFrame) -> tuple[FrameOutput, FrameSummary] | SkippedFrame:
        if isinstance(item, SkippedFrame):
            return item
        clock = dict(item.seconds)
        with timed(clock, "tile"):
            tf = self.stages.tiler.crop(item.tf)
        out, summary = self.stages.frame(tf, self.rows, clock)
        return out, replace(summary, seconds=clock)


class SegmentActor:
    """Ray Data actor for a line stream: the model loaded once, then whole segments through
    ``LineStreamRun`` (the local engine's stream code), each writing its own shards."""

    def __init__(self, cfg: dict[str, Any], model_path: str, cruise_dir: str, out_dir: str, first_shard: int,
                 use_gpu: bool, threads: int) -> None:
        torch.set_num_threads(threads)
        self.cfg = build_config(cfg)
        ckpt = load_checkpoint(Path(model_path))
        stages = build_stages(self.cfg, ckpt, torch.device("cuda" if use_gpu else "cpu"))
        rows = RowMaker(Path(cruise_dir), Locator.from_cruise(Path(cruise_dir), self.cfg.geo), ckpt.classes,
                        self.cfg.instrument.line_rate_hz, line_stream=True)
        st = self.cfg.stream
        self.clock: dict[str, float] = {}
        self.out_dir, self.first_shard = Path(out_dir), first_shard
        self.run = LineStreamRun(stages, rows, self.cfg, len(ckpt.classes.names) + 1, self.clock, self.out_dir,
                                 band=st.band, match_iou=st.match_iou, max_open_frames=st.max_open_frames)
        self.trim = HeapTrimmer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        done: list[tuple[int, Any]] = []
        for blob in batch["segment"]:
            done += self._segment(pickle.loads(blob))
        return {"ordinal": [o for o, _ in done], "summary": [pickle.dumps(s) for _, s in done]}

    def _segment(self, seg: StreamSegment) -> list[tuple[int, Any]]:
        """Its frames written in shards named by their first frame's position in the run's work list
        (grouped by counts only, never by time: a retried task writes the very same shards)."""
        return _write_in_shards(((seg.first + n, self._timed(item)) for n, item in enumerate(self.run.frames(seg))),
                                self.out_dir, self.first_shard, lambda buf: buf.full(self.cfg.output, timed=False))

    def _timed(self, item: tuple[FrameOutput, FrameSummary] | SkippedFrame):
        """A written frame with the stage seconds spent since the last one."""
        if isinstance(item, SkippedFrame):
            return item
        self.trim()
        seconds = dict(self.clock)
        self.clock.clear()
        return item[0], replace(item[1], seconds=seconds)


def write_shards(batch: dict[str, np.ndarray], out_dir: str, first_shard: int,
                 shard_objects: int) -> dict[str, list]:
    """Ray task: a batch of frame results → shards, each named ``first_shard`` + its first frame's
    ordinal; the summaries go back only once their shard is whole on disk."""
    items = ((int(batch["ordinal"][k]), pickle.loads(batch["result"][k]))
             for k in np.argsort(batch["ordinal"], kind="stable"))
    done = _write_in_shards(items, Path(out_dir), first_shard, lambda buf: buf.objects >= shard_objects)
    return {"ordinal": [o for o, _ in done], "summary": [pickle.dumps(s) for _, s in done]}


def _write_in_shards(items: Iterable[tuple[int, tuple[FrameOutput, FrameSummary] | SkippedFrame]], out_dir: Path,
                     first_shard: int, full: Callable[[_ShardBuffer], bool]) -> list[tuple[int, Any]]:
    """(ordinal, frame result) in order → shards, each named ``first_shard`` + its first frame's
    ordinal and written once ``full`` says so; returns (ordinal, summary or SkippedFrame)."""
    done: list[tuple[int, Any]] = []
    buf, group = _ShardBuffer(), []
    for ordinal, result in items:
        if isinstance(result, SkippedFrame):
            done.append((ordinal, result))
            continue
        buf.add(result[0])
        group.append((ordinal, result[1]))
        if full(buf):
            done += _flush(buf, group, out_dir, first_shard)
            buf, group = _ShardBuffer(), []
    if group:
        done += _flush(buf, group, out_dir, first_shard)
    return done


def _flush(buf: _ShardBuffer, group: list[tuple[int, FrameSummary]], out_dir: Path,
           first_shard: int) -> list[tuple[int, FrameSummary]]:
    t = time.perf_counter()
    buf.flush(out_dir, first_shard + group[0][0])
    share = (time.perf_counter() - t) / len(group)  # the write's seconds, spread over its frames
    return [(o, replace(s, seconds={**s.seconds, "write": s.seconds.get("write", 0.0) + share})) for o, s in group]
