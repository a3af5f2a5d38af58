"""The local engine: decode workers and the background shard writer change nothing in the output."""
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from segplank.config import load_config
from segplank.engine import local
from segplank.engine.local import LocalRunner, ShardWriter, _next_shard, _remove_unfinished_shards
from segplank.engine.prefetch import Decoded, prefetch
from segplank.engine.stages import Tiler
from segplank.frames import SkippedFrame, find_frames
from segplank.model.checkpoint import load_checkpoint

CFG = {"tiling": {"tile_size": 256, "overlap": 32}, "filter": {"score_threshold": 0.0}, "output": {"shard_frames": 1}}


@pytest.fixture(scope="module")
def cruise(tmp_path_factory, small_cruise):
    """The small cruise with its middle frame cut short: skipped, reported, never fatal."""
    d = tmp_path_factory.mktemp("engine") / "c"
    shutil.copytree(small_cruise, d)
    bad = sorted((d / "frames").glob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:2000])
    return d


@pytest.fixture(scope="module")
def run(cruise, tiny_checkpoint):
    """Run the cruise into a folder; torch threads as they were afterwards."""
    before = torch.get_num_threads()
    cfg = load_config(None, cruise, CFG)
    ckpt = load_checkpoint(tiny_checkpoint)

    def go(out, **kw):
        runner = LocalRunner(cfg, ckpt, tiny_checkpoint, torch.device("cpu"), threads=1, **kw)
        return runner.run(cruise, out)

    yield go
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "ref"
    return out, run(out)


def _shards(out, kind="objects"):
    return {p.name: pq.read_table(p).to_pandas() for p in sorted((out / kind).glob("part-*.parquet"))}


def test_decode_workers_change_nothing(run, reference, tmp_path):
    ref, ref_stats = reference
    stats = run(tmp_path / "w2", decode_workers=2, write_queue=2)
    assert stats.frames_done == ref_stats.frames_done == 2 and stats.objects == ref_stats.objects > 0
    assert [(s.path.name, s.reason) for s in stats.skipped] == [(s.path.name, s.reason) for s in ref_stats.skipped]
    assert len(stats.skipped) == 1 and "truncated" in stats.skipped[0].reason
    for kind in ("objects", "frames"):  # the same shards, holding the same rows
        a, b = _shards(ref, kind), _shards(tmp_path / "w2", kind)
        assert a.keys() == b.keys() and len(a) == 2
        for name in a:
            assert a[name].equals(b[name]), (kind, name)
    assert (ref / "predictions.coco.json").read_text() == (tmp_path / "w2" / "predictions.coco.json").read_text()
    assert {"decode", "tile", "wait", "model", "write"} <= stats.stage_seconds.keys()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pinned_tiles_on_cuda_change_nothing(cruise, tiny_checkpoint, tmp_path):
    cfg = load_config(None, cruise, CFG)
    ckpt = load_checkpoint(tiny_checkpoint)
    for w in (0, 2):
        LocalRunner(cfg, ckpt, tiny_checkpoint, torch.device("cuda"), decode_workers=w).run(cruise, tmp_path / f"w{w}")
    assert pq.read_table(tmp_path / "w0" / "objects").equals(pq.read_table(tmp_path / "w2" / "objects"))


def test_prefetch_keeps_order_and_marks_bad_frames(cruise):
    frames = find_frames(cruise, load_config(None, cruise).instrument)
    tiler = Tiler(load_config(None, cruise, CFG).tiling, "dark_on_bright")
    here, ahead = list(prefetch(frames, tiler, 0)), list(prefetch(frames, tiler, 2))
    assert [type(x) for x in here] == [type(x) for x in ahead] == [Decoded, SkippedFrame, Decoded]
    for a, b in zip(here, ahead):
        if isinstance(a, Decoded):
            assert a.tf.frame.path == b.tf.frame.path and a.tf.image.dtype == b.tf.image.dtype
            assert np.array_equal(a.tf.image, b.tf.image) and np.array_equal(a.tf.tiles, b.tf.tiles)
            assert np.array_equal(a.tf.run, b.tf.run)
        else:
            assert a == b


def test_writer_error_stops_the_run_then_resume_completes(run, reference, tmp_path, monkeypatch):
    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local, "write_coco_shard", full_disk)
    out = tmp_path / "out"
    with pytest.raises(local.RunError, match=r"out: cannot write the output \(No space left on device\); free some "
                       r"space .* rerun the same command"):
        run(out)
    assert not list((out / "frames").glob("part-*"))  # nothing marked done
    monkeypatch.undo()
    stats = run(out)
    assert stats.frames_done == 2 and stats.frames_resumed == 0
    ref = pq.read_table(reference[0] / "objects").to_pandas()
    assert pq.read_table(out / "objects").to_pandas().equals(ref)


class _Buffer:
    def __init__(self, fail=False):
        self.fail = fail
        self.flushed = None

    def flush(self, out_dir, shard):
        if self.fail:
            raise ValueError(f"shard {shard} failed")
        self.flushed = shard


def test_shard_writer_raises_in_the_caller_and_stops(tmp_path):
    bufs = [_Buffer(), _Buffer(fail=True), _Buffer(), _Buffer()]
    writer = ShardWriter(tmp_path, pending=4)
    with pytest.raises(ValueError, match="shard 1 failed"):
        for k, b in enumerate(bufs):
            writer.submit(b, k)
        writer.close()
    writer.close()
    assert bufs[0].flushed == 0 and bufs[2].flushed is None and bufs[3].flushed is None  # none after the failed one


def test_unfinished_shards_removed_and_numbers_sort_as_numbers(tmp_path):
    for sub, name in [("frames", "part-99999.parquet"), ("frames", "part-100000.parquet"),
                      ("objects", "part-100000.parquet"), ("objects", "part-100001.parquet"),
                      ("coco", "part-100001.json")]:
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(b"")
    _remove_unfinished_shards(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("part-*")) == ["part-100000.parquet"] * 2 + ["part-99999.parquet"]
    assert _next_shard(tmp_path) == 100001


def test_ray_engine_is_optional(monkeypatch, small_cruise, tiny_checkpoint):
    from segplank.engine.local import RunError
    from segplank.engine.ray_engine import RayRunner

    # segplank imports without Ray (it is imported only when a Ray run starts)
    code = "import sys; sys.modules['ray'] = None; import segplank.cli, segplank.engine.ray_engine"
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: one clear line, before any work
    with pytest.raises(RunError, match=r"pip install 'segplank\[ray\]'"):
        RayRunner(load_config(None, small_cruise), load_checkpoint(tiny_checkpoint), tiny_checkpoint)


def test_tiles_full_of_detections_are_reported_per_frame(tmp_path, small_cruise, tiny_checkpoint, caplog):
    """A tile whose candidates fill detections_per_tile may miss objects: each frame says how
    many of its tiles did (the predictor returns it with the tiles' detections), the manifest
    sums them, and the run warns."""
    import json

    ck = load_checkpoint(tiny_checkpoint)
    one = ck.replace_config(ck.model_config.model_copy(update={"detections_per_tile": 1}))
    path = one.save(tmp_path / "one.pt")
    cfg = load_config(None, small_cruise, {**CFG, "detector": {"vignette_classifier": False}})
    with caplog.at_level("WARNING", logger="segplank"):
        stats = LocalRunner(cfg, load_checkpoint(path), path, torch.device("cpu"), threads=1).run(
            small_cruise, tmp_path / "o")
    assert 0 < stats.capped_tiles <= stats.tiles_run
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["tiles"]["capped"] == stats.capped_tiles
    assert "reached detections_per_tile=1" in caplog.text
