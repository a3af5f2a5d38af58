"""Engines that run the per-frame stages over a cruise: local (one machine) and Ray."""
from __future__ import annotations

from pathlib import Path


def make_runner(cfg, ckpt, model_path: Path, threads: int | None = None):
    """The engine the config asks for (``engine.kind``); Ray is imported only for a Ray run."""
    from .local import LocalRunner, RunError, resolve_device

    e, st = cfg.engine, cfg.stream
    if e.kind == "ray":
        from .ray_engine import RayRunner

        if st.enabled:
            raise RunError("the Ray engine does not stitch line streams yet: use --engine local with --stream")
        return RayRunner(cfg, ckpt, model_path, address=e.ray_address, actors=e.ray_actors,
                         actor_cpus=threads or e.ray_actor_cpus, batch_frames=e.ray_batch_frames,
                         frames_per_block=e.ray_frames_per_block)
    return LocalRunner(cfg, ckpt, model_path, resolve_device(cfg.device), threads,
                       decode_workers=e.decode_workers, write_queue=e.write_queue, stream=st.enabled,
                       stream_band=st.band, stream_match_iou=st.match_iou, max_gap_s=st.max_gap_s,
                       max_open_frames=st.max_open_frames)
