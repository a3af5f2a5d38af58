"""`segplank bench`: end-to-end speed on fixed synthetic cruises, stage by stage.

Each case runs in its own process, so its peak memory is its own. Sparse frames run twice:
with the empty-tile skip and with the model on every tile (the baseline), and both are
scored against the ground truth, so a speed-up is never bought with missed organisms.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__


@dataclass(frozen=True)
class Case:
    name: str
    density: str
    frames: int
    skip_empty: bool = True
    size: int = 2048
    stream: bool = False


def _run_case(cruise: str, out: str, model: str, case: Case, threads: int, queue, device: str = "auto",
              decode_workers: int | None = None) -> None:
    try:
        _bench_case(cruise, out, model, case, threads, queue, device, decode_workers)
    except Exception as e:  # the parent waits on the queue: it must hear of a failed case
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _bench_case(cruise: str, out: str, model: str, case: Case, threads: int, queue, device: str,
                decode_workers: int | None) -> None:
    from .config import load_config
    from .engine import make_runner
    from .evaluate import object_match
    from .model.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    cfg = load_config(None, Path(cruise), {"tiling": {"skip_empty": case.skip_empty},
                                           "stream": {"enabled": case.stream}, "device": device,
                                           "engine": {"decode_workers": decode_workers}})
    runner = make_runner(cfg, load_checkpoint(Path(model)), Path(model), threads)
    started = time.time()
    stats = runner.run(Path(cruise), Path(out), force=True)
    scores = object_match(Path(cruise) / "ground_truth.coco.json", Path(out) / "predictions.coco.json")
    queue.put({
        "frames": stats.frames_done, "seconds": stats.seconds,
        "detections": sum(stats.per_class.values()), "objects_written": stats.objects,
        "tiles": stats.tiles, "tiles_run": stats.tiles_run,
        "stage_seconds": stats.stage_seconds,
        "plankton_recall": scores["plankton_recall"], "plankton_precision": scores["plankton_precision"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(runner.device), "started": started, "ended": time.time(),  # epoch s: to join a GPU log
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
    })


def run_bench(model: Path, work: Path | None = None, sparse_frames: int = 20, dense_frames: int = 4,
              threads: int = 2, seed: int = 4242, memory_frames: tuple[int, ...] = (),
              stream_frames: tuple[int, ...] = (), device: str = "auto", decode_workers: int | None = None,
              cases: tuple[str, ...] | None = None) -> dict:
    """Every case in its own process. ``memory_frames`` adds long runs of small sparse frames
    (e.g. 200 and 2000), ``stream_frames`` line-stream runs of small mixed frames (e.g. 50 and
    500): their peak memory must not grow with the number of frames. ``cases``: the names of
    the cases to run (default all)."""
    from .synth import make_cruise

    work = Path(work or tempfile.mkdtemp(prefix="segplank_bench_"))
    wanted = cases
    all_cases = [Case("sparse", "sparse", sparse_frames), Case("sparse, no skip", "sparse", sparse_frames, False),
                 Case("mixed", "mixed", dense_frames), Case("dense", "dense", dense_frames)]
    all_cases += [Case(f"memory, {n} frames", "sparse", n, size=512) for n in memory_frames]
    all_cases += [Case(f"stream, {n} frames", "mixed", n, size=384, stream=True) for n in stream_frames]
    if wanted is not None:
        unknown = set(wanted) - {c.name for c in all_cases}
        if unknown:
            raise ValueError(f"no bench case named {sorted(unknown)}; cases: {[c.name for c in all_cases]}")
    results = {}
    ctx = mp.get_context("spawn")
    for case in (c for c in all_cases if wanted is None or c.name in wanted):
        cruise = work / (f"cruise_{case.density}" if case.size == 2048 else f"cruise_{case.density}_{case.size}_{case.frames}")
        if not (cruise / "ground_truth.coco.json").exists():
            make_cruise(cruise, case.frames, seed, density=case.density, size=(case.size, case.size), workers=threads)
        q = ctx.Queue()
        p = ctx.Process(target=_run_case, args=(str(cruise), str(work / f"out_{case.name}"), str(model),
                                                case, threads, q, device, decode_workers))
        p.start()
        r = q.get()
        p.join()
        if "error" in r:
            raise RuntimeError(f"bench case {case.name!r} failed: {r['error']}")
        r["frames_per_s"] = r["frames"] / r["seconds"]
        r["detections_per_frame"] = r["detections"] / max(1, r["frames"])
        r["detections_per_s"] = r["detections"] / r["seconds"]
        # shares of the wall time: what no stage timed counts as outside the networks too
        wall = max(r["seconds"], sum(r["stage_seconds"].values()))
        r["stage_share"] = {k: v / wall for k, v in r["stage_seconds"].items()}
        results[case.name] = r
    return {"segplank": __version__, "torch": torch.__version__, "machine": _machine(threads),
            "model": str(model), "cases": results, "stitch_scaling": stitch_scaling()}


def stitch_scaling(counts: tuple[int, ...] = (250, 500, 1000, 2000, 4000), repeat: int = 3,
                   seed: int = 0) -> list[dict]:
    """Stitcher seconds per frame against objects per frame (2048² frame, 560 px tiles, 64 overlap).

    Objects are 6–40 px boxes, one per cell of a jittered grid (touching at most, as objects
    in a dense frame do, rather than piling up as uniform random boxes would), each cut into
    the tiles it falls in as a perfect model would return it; best of ``repeat`` runs.
    """
    from .stitch import Stitcher
    from .tiling import tile_grid

    windows = tile_grid(2048, 2048, 560, 64)
    stitcher = Stitcher(match_iou=0.3, duplicate_iou=0.6, mask_size=56)
    rows = []
    for n in counts:
        tile_dets, run = _cut_into_tiles(np.random.default_rng(seed), n, windows)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            out = stitcher(tile_dets, windows, run)
            best = min(best, time.perf_counter() - t)
        rows.append({"objects": n, "detections_in": sum(len(d) for d in tile_dets), "objects_out": len(out),
                     "seconds": best, "us_per_object": 1e6 * best / n})
    return rows


def _cut_into_tiles(rng: np.random.Generator, n: int, windows: np.ndarray):
    from .structures import Detections, RoiMasks

    side = int(np.ceil(np.sqrt(n)))
    cell = 2048 / side
    k = rng.permutation(side * side)[:n]
    wh = rng.uniform(6, min(40.0, cell), (n, 2))
    xy = np.stack([k % side, k // side], 1) * cell + rng.uniform(0, 1, (n, 2)) * (cell - wh)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    tile_dets, run = [], []
    for t, (x0, y0, x1, y1) in enumerate(windows):
        clipped = np.stack([np.maximum(boxes[:, 0], x0), np.maximum(boxes[:, 1], y0),
                            np.minimum(boxes[:, 2], x1), np.minimum(boxes[:, 3], y1)], 1)
        keep = ((clipped[:, 2] - clipped[:, 0]) > 1) & ((clipped[:, 3] - clipped[:, 1]) > 1)
        b = torch.from_numpy((clipped[keep] - np.array([x0, y0, x0, y0])).astype(np.float32))
        k = len(b)
        tile_dets.append(Detections(boxes=b, scores=torch.full((k,), 0.9), labels=torch.ones(k, dtype=torch.long),
                                    masks=RoiMasks(torch.ones(k, 28, 28))))
        run.append(t)
    return tile_dets, np.array(run)


def _machine(threads: int) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores ({threads} torch threads), {gpu}"


def write_json(result: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))
