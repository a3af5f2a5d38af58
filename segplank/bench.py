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
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__


@dataclass(frozen=True)
class Case:
    name: str
    density: str
    frames: int
    skip_empty: bool = True


def _run_case(cruise: str, out: str, model: str, skip_empty: bool, threads: int, queue) -> None:
    from .config import load_config
    from .engine.local import LocalRunner, resolve_device
    from .evaluate import object_match
    from .model.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    cfg = load_config(None, Path(cruise), {"tiling": {"skip_empty": skip_empty}})
    runner = LocalRunner(cfg, load_checkpoint(Path(model)), Path(model), resolve_device(cfg.device))
    stats = runner.run(Path(cruise), Path(out), force=True)
    scores = object_match(Path(cruise) / "ground_truth.coco.json", Path(out) / "predictions.coco.json")
    queue.put({
        "frames": stats.frames_done, "seconds": stats.seconds,
        "detections": sum(stats.per_class.values()), "objects_written": stats.objects,
        "tiles": stats.tiles, "tiles_run": stats.tiles_run,
        "stage_seconds": stats.stage_seconds,
        "plankton_recall": scores["plankton_recall"], "plankton_precision": scores["plankton_precision"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def run_bench(model: Path, work: Path | None = None, sparse_frames: int = 20, dense_frames: int = 4,
              threads: int = 2, seed: int = 4242) -> dict:
    from .synth import make_cruise

    work = Path(work or tempfile.mkdtemp(prefix="segplank_bench_"))
    cases = [Case("sparse", "sparse", sparse_frames), Case("sparse, no skip", "sparse", sparse_frames, False),
             Case("mixed", "mixed", dense_frames), Case("dense", "dense", dense_frames)]
    results = {}
    ctx = mp.get_context("spawn")
    for case in cases:
        cruise = work / f"cruise_{case.density}"
        if not (cruise / "ground_truth.coco.json").exists():
            make_cruise(cruise, case.frames, seed, density=case.density)
        q = ctx.Queue()
        p = ctx.Process(target=_run_case, args=(str(cruise), str(work / f"out_{case.name}"), str(model),
                                                case.skip_empty, threads, q))
        p.start()
        r = q.get()
        p.join()
        r["frames_per_s"] = r["frames"] / r["seconds"]
        r["detections_per_frame"] = r["detections"] / max(1, r["frames"])
        r["detections_per_s"] = r["detections"] / r["seconds"]
        total = sum(r["stage_seconds"].values())
        r["stage_share"] = {k: v / total for k, v in r["stage_seconds"].items()}
        results[case.name] = r
    return {"segplank": __version__, "torch": torch.__version__, "machine": _machine(threads),
            "model": str(model), "cases": results}


def _machine(threads: int) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores ({threads} torch threads), {gpu}"


def write_json(result: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))
