"""The Ray engine, on a Ray runtime started by the test (2 CPUs): the local engine's objects, resumable."""
import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from segplank.config import load_config
from segplank.engine.local import LocalRunner
from segplank.model.checkpoint import load_checkpoint

ray = pytest.importorskip("ray")
# Ray's own warnings, raised when it copies its context
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

from segplank.engine.ray_engine import RayRunner  # noqa: E402

CFG = {"tiling": {"tile_size": 256, "overlap": 32}, "filter": {"score_threshold": 0.0}}


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    """Build a runner of either engine for a cruise (one torch thread; restored after)."""
    before = torch.get_num_threads()
    ckpt = load_checkpoint(tiny_checkpoint)

    def make(kind, cruise, **cfg):
        c = load_config(None, cruise, {**CFG, **cfg})
        if kind == "local":
            return LocalRunner(c, ckpt, tiny_checkpoint, torch.device("cpu"), threads=1)
        return RayRunner(c, ckpt, tiny_checkpoint)

    yield make
    torch.set_num_threads(before)


def _objects(out):
    t = pq.read_table(out / "objects").to_pandas()
    return t.sort_values("object_id").reset_index(drop=True)


def _frames(out):
    t = pq.read_table(out / "frames").to_pandas().drop(columns="shard")
    return t.sort_values("frame_index").reset_index(drop=True)


def test_ray_objects_equal_the_local_engine(ray_local, engines, small_cruise, tmp_path):
    here = engines("local", small_cruise).run(small_cruise, tmp_path / "local")
    there = engines("ray", small_cruise).run(small_cruise, tmp_path / "ray")
    assert there.frames_done == here.frames_done == 3 and there.objects == here.objects > 0
    assert _objects(tmp_path / "ray").equals(_objects(tmp_path / "local"))
    assert _frames(tmp_path / "ray").equals(_frames(tmp_path / "local"))
    coco = [(tmp_path / d / "predictions.coco.json").read_text() for d in ("local", "ray")]
    assert coco[0] == coco[1]
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray"))
    assert b["complete"] and b["engine"]["name"] == "ray" and b["config"] == a["config"]
    for key in ("counts", "tiles", "frames", "geo"):
        assert b[key] == a[key], key
    assert {"decode", "model", "stitch", "measure", "write"} <= there.stage_seconds.keys()


def test_ray_resumes_a_partial_run(ray_local, engines, small_cruise, tmp_path):
    cruise = tmp_path / "c"
    shutil.copytree(small_cruise, cruise)
    bad = sorted((cruise / "frames").glob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:2000])
    engines("local", cruise).run(cruise, tmp_path / "local")

    out = tmp_path / "ray"
    first = engines("ray", cruise, output={"shard_frames": 1}).run(cruise, out, limit=1)
    assert first.frames_done == 1 and len(list((out / "frames").glob("part-*"))) == 1
    # a shard a killed run left without its frame table: not done, removed, its frames redone
    shutil.copy(next((out / "objects").glob("part-*")), out / "objects" / "part-00007.parquet")
    rest = engines("ray", cruise, output={"shard_frames": 1}).run(cruise, out)
    assert rest.frames_resumed == 1 and rest.frames_done == 1 and len(rest.skipped) == 1
    assert "truncated" in rest.skipped[0].reason
    assert _objects(out).equals(_objects(tmp_path / "local"))
    man = json.loads((out / "manifest.json").read_text())
    assert man["counts"]["objects_written"] == len(_objects(out))
    assert not (out / "objects" / "part-00007.parquet").exists() and not list(out.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def line_scan_cruise(tmp_path_factory):
    """Seven line-scan frames whose organisms cross the cuts (several across two)."""
    from segplank.synth import make_cruise

    d = tmp_path_factory.mktemp("stream") / "c"
    make_cruise(d, 7, seed=11, size=(128, 256))
    return d


def test_ray_line_stream_equals_the_local_engine(ray_local, tiny_checkpoint, line_scan_cruise, tmp_path):
    """A line stream under Ray, in segments of 2 frames run as separate tasks, writes what the
    local engine writes as one uncut stream: every object once, every column, every frame row."""
    cruise = line_scan_cruise
    truth = json.loads((cruise / "ground_truth_stream.json").read_text())["objects"]
    assert sum(len(o["frames"]) > 1 for o in truth) >= 3
    ckpt = load_checkpoint(tiny_checkpoint)
    cfg = load_config(None, cruise, {**CFG, "output": {"shard_frames": 1}})
    here = LocalRunner(cfg, ckpt, tiny_checkpoint, torch.device("cpu"), threads=1, stream=True).run(
        cruise, tmp_path / "local")
    there = RayRunner(cfg, ckpt, tiny_checkpoint, stream=True, segment_frames=2).run(cruise, tmp_path / "ray")
    assert there.frames_done == here.frames_done == 7 and there.objects == here.objects > 0
    a, b = _objects(tmp_path / "local"), _objects(tmp_path / "ray")
    assert a["object_id"].is_unique and b.equals(a)
    assert (a["bbox_y"] + a["bbox_h"] > 128).any()  # organisms reaching past their frame, whole
    assert _frames(tmp_path / "ray").equals(_frames(tmp_path / "local"))
    man = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert man["complete"] and man["config"]["stream"]["enabled"] and man["engine"]["segment_frames"] == 2
    assert man["counts"] == json.loads((tmp_path / "local" / "manifest.json").read_text())["counts"]


def test_ray_line_stream_resumes_segments_finished_out_of_order(ray_local, tiny_checkpoint, line_scan_cruise,
                                                                 tmp_path):
    """A killed Ray run may leave a later segment finished and an earlier one not: resumed, the
    earlier segment's objects run on through the finished frames (unwritten), none lost or doubled."""
    import shutil

    cruise = line_scan_cruise
    ckpt = load_checkpoint(tiny_checkpoint)
    cfg = load_config(None, cruise, {**CFG, "output": {"shard_frames": 1}})
    whole = tmp_path / "whole"
    RayRunner(cfg, ckpt, tiny_checkpoint, stream=True, segment_frames=2).run(cruise, whole)
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    shards = sorted((out / "frames").glob("part-*.parquet"))
    assert len(shards) == 7
    for p in shards[1:3]:  # frames 1 and 2 lost: frame 3 on was finished by other segments
        p.unlink()
    objs = _objects(whole)
    index = {p: k for k, p in enumerate(sorted(objs["frame_path"].unique()))}
    bottom = objs["frame_path"].map(index) * 128 + objs["bbox_y"] + objs["bbox_h"]
    assert ((objs["frame_path"].map(index) <= 2) & (bottom > 3 * 128)).any()  # reaching the finished frames
    rest = RayRunner(cfg, ckpt, tiny_checkpoint, stream=True, segment_frames=2).run(cruise, out)
    assert rest.frames_done == 2 and rest.frames_resumed == 5
    assert _objects(out).equals(_objects(whole))
    assert _frames(out).equals(_frames(whole))
