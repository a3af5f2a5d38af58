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
    device = resolve_device(cfg.device)
    workers = e.decode_workers if e.decode_workers is not None else (2 if device.type == "cuda" else 0)
    return LocalRunner(cfg, ckpt, model_path, device, threads,
                       decode_workers=workers, write_queue=e.write_queue, stream=st.enabled,
                       stream_band=st.band, stream_match_iou=st.match_iou, max_gap_s=st.max_gap_s,
                       max_open_frames=st.max_open_frames)
