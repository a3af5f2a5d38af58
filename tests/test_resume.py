"""A run killed with SIGKILL mid-way and resumed gives exactly the objects of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from segplank.synth import make_cruise

CLI = Path(sys.executable).parent / "segplank"


@pytest.fixture(scope="module")
def cruise(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume") / "c"
    make_cruise(d, 8, seed=11, size=(320, 320))
    return d


def _cmd(cruise: Path, out: Path, model: Path, cfg: Path, *extra: str) -> list[str]:
    return [str(CLI), "infer", str(cruise), "-o", str(out), "--model", str(model), "--config", str(cfg),
            "--threads", "1", *extra]


def _objects(out: Path) -> list[tuple]:
    t = pq.read_table(out / "objects").to_pandas()
    cols = ["object_id", "frame_path", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask_rle", "area_px"]
    return sorted(map(tuple, t[cols].itertuples(index=False)))


def _kill_after(cmd: list[str], out: Path, frames_done: int) -> int:
    """Start ``cmd``, SIGKILL it (and its decode workers) once ``frames_done`` frame tables exist; returns how many did."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "frames").glob("part-*.parquet"))) < frames_done:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list((out / "frames").glob("part-*.parquet")))


def _kill_and_resume(tmp_path: Path, cruise: Path, model: Path, extra_cfg: str, whole_opts: tuple, run_opts: tuple,
                     kill_at: int) -> tuple[Path, Path]:
    """An uninterrupted run (``whole_opts``), and one (``run_opts``) SIGKILLed mid-run and resumed:
    the two output folders, once the resumed run's objects are checked against the whole one's."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.0}\noutput: {shard_frames: 1}\n"
                   + extra_cfg)
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cruise, whole, model, cfg, *whole_opts), check=True, capture_output=True)
    killed = tmp_path / "killed"
    done = _kill_after(_cmd(cruise, killed, model, cfg, *run_opts), killed, kill_at)
    assert kill_at <= done < 8, "the kill must land mid-run"
    r = subprocess.run(_cmd(cruise, killed, model, cfg, *run_opts), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _objects(killed) == _objects(whole)
    return whole, killed


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed segplank command")
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, cruise, tiny_checkpoint):
    cfg = tmp_path / "cfg.yaml"
    # one frame per shard: progress is saved after every frame, so the kill lands between shards or inside one
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.0}\noutput: {shard_frames: 1}\n")
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cruise, whole, tiny_checkpoint, cfg), check=True, capture_output=True)

    killed = tmp_path / "killed"
    done = _kill_after(_cmd(cruise, killed, tiny_checkpoint, cfg), killed, 3)
    assert 3 <= done < 8, "the kill must land mid-run"

    r = subprocess.run(_cmd(cruise, killed, tiny_checkpoint, cfg), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _objects(killed) == _objects(whole)
    frames = pq.read_table(killed / "frames").column("frame_path").to_pylist()
    assert sorted(frames) == sorted(set(frames)) and len(frames) == 8  # every frame once
    assert not list(killed.rglob(".*.tmp"))


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed segplank command")
def test_stream_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, cruise, tiny_checkpoint):
    """--stream on a line-scan cruise whose objects cross frame cuts, flat-fielded along the stream:
    killed mid-run, the rerun replays the last done frame (open objects, flat-field state) and
    writes every object exactly once, as one uninterrupted run does."""
    import json

    gt = json.loads((cruise / "ground_truth.coco.json").read_text())["annotations"]
    frames_of: dict[str, set] = {}
    for a in gt:
        frames_of.setdefault(a["attributes"]["uid"], set()).add(a["image_id"])
    assert sum(len(v) > 1 for v in frames_of.values()) >= 3, "objects must cross frame cuts"

    whole, killed = _kill_and_resume(tmp_path, cruise, tiny_checkpoint,
                                     "stream: {flat_field: true, flat_field_block: 32, flat_field_window: 256}\n",
                                     ("--stream",), ("--stream",), 3)
    t = pq.read_table(killed / "frames", columns=["frame_path", "flat_field"]).to_pylist()
    w = pq.read_table(whole / "frames", columns=["frame_path", "flat_field"]).to_pylist()
    assert len(t) == 8 and len({r["frame_path"] for r in t}) == 8  # every frame once
    assert sorted(map(tuple, (r.values() for r in t))) == sorted(map(tuple, (r.values() for r in w)))
    assert not list(killed.rglob(".*.tmp"))


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed segplank command")
@pytest.mark.parametrize("workers,stream", [("0", "--no-stream"), ("1", "--no-stream"), ("1", "--stream")])
def test_ctrl_c_writes_what_is_done_then_resume_equals_an_uninterrupted_run(tmp_path, cruise, tiny_checkpoint,
                                                                             workers, stream):
    """Ctrl-C (SIGINT to the whole process group, decode workers too) with one shard for the
    whole cruise: the frames done are written, not lost, the run says so and exits 130. (A line
    stream writes a frame once the objects it started are closed: it may hold none yet.)"""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.0}\n")
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cruise, whole, tiny_checkpoint, cfg, stream), check=True, capture_output=True)

    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(cruise, out, tiny_checkpoint, cfg, stream, "--decode-workers", workers),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "manifest.json").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted (SIGINT)" in text and "rerun the same command to resume" in text
    done = len(pq.read_table(out / "frames")) if list(out.glob("frames/*.parquet")) else 0
    assert (0 if stream == "--stream" else 1) <= done < 8, "the frame in hand is finished and written, the rest left"

    r = subprocess.run(_cmd(cruise, out, tiny_checkpoint, cfg, stream), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _objects(out) == _objects(whole)
    assert pq.read_table(out / "frames").num_rows == 8


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed segplank command")
def test_ray_stream_sigkill_then_resume_equals_an_uninterrupted_local_run(tmp_path, cruise, tiny_checkpoint):
    """A line stream under Ray (segments of 2 frames, tasks finishing in any order), SIGKILLed
    mid-run and resumed under Ray: every object once, as one uninterrupted local run writes it."""
    pytest.importorskip("ray")
    _, killed = _kill_and_resume(tmp_path, cruise, tiny_checkpoint, "engine: {segment_frames: 2, ray_actors: 1}\n",
                                 ("--stream",), ("--stream", "--engine", "ray"), 2)
    frames = pq.read_table(killed / "frames").column("frame_path").to_pylist()
    assert sorted(frames) == sorted(set(frames)) and len(frames) == 8
