"""Engines that run the per-frame stages over a cruise: local (one machine) and Ray."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("segplank")


def make_runner(cfg, ckpt, model_path: Path, threads: int | None = None):
    """The engine the config asks for (``engine.kind``); Ray is imported only for a Ray run.

    ``stream.enabled`` is settled here (None: on for a line-scan camera), and each runner
    records it in its config, so a run's identity says which it was: a run resumed on another
    engine cannot mix frames stitched as a stream with frames taken one by one.
    """
    from .local import LocalRunner, resolve_device

    e, st = cfg.engine, cfg.stream
    line_stream = cfg.line_stream
    if e.kind == "ray":
        from .ray_engine import RayRunner

        return RayRunner(cfg, ckpt, model_path, address=e.ray_address, actors=e.ray_actors,
                         actor_cpus=threads or e.ray_actor_cpus, batch_frames=e.ray_batch_frames,
                         frames_per_block=e.ray_frames_per_block, stream=line_stream,
                         segment_frames=e.segment_frames or 64)
    device = resolve_device(cfg.device)
    workers = e.decode_workers if e.decode_workers is not None else (2 if device.type == "cuda" else 0)
    return LocalRunner(cfg, ckpt, model_path, device, threads,
                       decode_workers=workers, write_queue=e.write_queue, stream=line_stream,
                       stream_band=st.band, stream_match_iou=st.match_iou, max_gap_s=st.max_gap_s,
                       max_open_frames=st.max_open_frames)
