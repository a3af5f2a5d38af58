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


def _cmd(cruise: Path, out: Path, model: Path, cfg: Path) -> list[str]:
    return [str(CLI), "infer", str(cruise), "-o", str(out), "--model", str(model), "--config", str(cfg),
            "--threads", "1"]


def _objects(out: Path) -> list[tuple]:
    t = pq.read_table(out / "objects").to_pandas()
    cols = ["object_id", "frame_path", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask_rle", "area_px"]
    return sorted(map(tuple, t[cols].itertuples(index=False)))


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed segplank command")
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, cruise, tiny_checkpoint):
    cfg = tmp_path / "cfg.yaml"
    # one frame per shard: progress is saved after every frame, so the kill lands between shards or inside one
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.0}\noutput: {shard_frames: 1}\n")
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cruise, whole, tiny_checkpoint, cfg), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cruise, killed, tiny_checkpoint, cfg), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((killed / "frames").glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "frames").glob("part-*.parquet")))
    assert 3 <= done < 8, "the kill must land mid-run"

    r = subprocess.run(_cmd(cruise, killed, tiny_checkpoint, cfg), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _objects(killed) == _objects(whole)
    frames = pq.read_table(killed / "frames").column("frame_path").to_pylist()
    assert sorted(frames) == sorted(set(frames)) and len(frames) == 8  # every frame once
    assert not list(killed.rglob(".*.tmp"))
