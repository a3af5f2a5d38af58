"""`segplank infer` end to end, with a tiny random-weight model (the code paths) and bad inputs."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from segplank.cli import app
from segplank.export.parquet import SCHEMA
from segplank.model.checkpoint import load_checkpoint

runner = CliRunner()


def _cfg(tmp_path, **filter_kw):
    p = tmp_path / "cfg.yaml"
    extra = "".join(f"  {k}: {v}\n" for k, v in filter_kw.items())
    p.write_text("tiling:\n  tile_size: 256\n  overlap: 32\nfilter:\n  score_threshold: 0.0\n" + extra)
    return p


def _infer(cruise, out, model, cfg, *more):
    return runner.invoke(app, ["infer", str(cruise), "-o", str(out), "--model", str(model), "--config", str(cfg), *more])


def test_outputs_schema_coco_and_manifest(tmp_path, small_cruise, tiny_checkpoint):
    out = tmp_path / "out"
    r = _infer(small_cruise, out, tiny_checkpoint, _cfg(tmp_path))
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["frames"]["found"] == 3 and man["frames"]["done_this_run"] == 3
    assert len(man["model"]["sha256"]) == 64 and man["config"]["tiling"]["tile_size"] == 256
    table = pq.read_table(sorted((out / "objects").glob("part-*.parquet")))
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == man["counts"]["objects_written"] > 0
    assert table.column("is_plankton").to_numpy().all()  # non-plankton are counted, not written
    assert len(set(table.column("object_id").to_pylist())) == table.num_rows
    assert np.isfinite(table.column("lat").to_numpy()).all()  # nav covers the frames
    # a line-scan camera: each object's time is that of its centroid's line
    frames = pq.read_table(out / "frames").to_pandas().set_index("frame_path")
    objs = table.to_pandas()
    rate = man["config"]["instrument"]["line_rate_hz"]
    dt = (objs["time"].reset_index(drop=True) - frames.loc[objs["frame_path"], "time"].reset_index(drop=True))
    dt = dt.dt.total_seconds().to_numpy()
    assert rate == 2.0 * 384 and np.allclose(dt, objs["centroid_y"] / rate, atol=1e-6)
    assert man["geo"]["outside_nav"] == 0 and man["geo"]["frames"] == 3 and frames["lat"].notna().all()
    coco = COCO(str(out / "predictions.coco.json"))
    # a line stream (the default for a line-scan camera): an object across a frame cut has a piece in each frame
    assert man["config"]["stream"]["enabled"]
    pieces = coco.loadAnns(coco.getAnnIds())
    assert {a["object_id"] for a in pieces} == set(table.column("object_id").to_pylist())
    assert len(pieces) >= table.num_rows
    ann = coco.loadAnns(coco.getAnnIds()[:1])[0]
    m = coco.annToMask(ann)
    assert m.sum() == ann["area"]
    detected = sum(man["counts"]["detected_per_class"].values())
    assert detected >= table.num_rows
    assert not list(out.rglob(".*.tmp"))


def test_non_plankton_counted_and_written_only_on_request(tmp_path, small_cruise, tiny_snow_checkpoint):
    cfg = _cfg(tmp_path)
    r = _infer(small_cruise, tmp_path / "a", tiny_snow_checkpoint, cfg)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["counts"]["detected_per_class"].get("marine_snow", 0) > 0
    assert pq.read_table(tmp_path / "a" / "objects").num_rows == 0
    r = _infer(small_cruise, tmp_path / "b", tiny_snow_checkpoint, cfg, "--keep-non-plankton")
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "b" / "objects")
    assert t.num_rows > 0 and not t.column("is_plankton").to_numpy().any()
    assert set(t.column("label_name").to_pylist()) == {"marine_snow"}


def test_rerun_resumes_and_other_run_is_refused(tmp_path, small_cruise, tiny_checkpoint):
    out = tmp_path / "out"
    cfg = _cfg(tmp_path)
    assert _infer(small_cruise, out, tiny_checkpoint, cfg, "--limit", "2").exit_code == 0
    first = pq.read_table(out / "objects").num_rows
    r = _infer(small_cruise, out, tiny_checkpoint, cfg)
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["frames"]["done_before"] == 2 and man["frames"]["done_this_run"] == 1
    table = pq.read_table(out / "objects")
    assert len(set(table.column("frame_path").to_pylist())) == 3
    assert len(set(table.column("object_id").to_pylist())) == table.num_rows >= first
    assert man["counts"]["objects_written"] == table.num_rows  # totals cover both runs
    assert sum(man["counts"]["written_per_class"].values()) == table.num_rows
    r = _infer(small_cruise, out, tiny_checkpoint, cfg)  # nothing left to do: no rate to report
    assert r.exit_code == 0 and "frames already done (resumed)" in r.output and "throughput" not in r.output
    # a different config on the same folder: one clear line, exit 2, nothing lost
    other = tmp_path / "other.yaml"
    other.write_text("tiling:\n  tile_size: 320\n  overlap: 32\n")
    r = _infer(small_cruise, out, tiny_checkpoint, other)
    assert r.exit_code == 2 and "another config or model" in r.output
    assert pq.read_table(out / "objects").num_rows == table.num_rows


def test_corrupt_frames_are_skipped_and_reported(tmp_path, small_cruise, tiny_checkpoint):
    cruise = tmp_path / "cruise"
    shutil.copytree(small_cruise, cruise)
    frames = sorted((cruise / "frames").glob("*.png"))
    data = frames[1].read_bytes()
    frames[1].write_bytes(data[: len(data) // 2])
    (cruise / "frames" / "ISIIS_20260601_130000_000.png").write_bytes(b"")
    r = _infer(cruise, tmp_path / "out", tiny_checkpoint, _cfg(tmp_path))
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in man["frames"]["skipped"]}
    assert len(reasons) == 2 and man["frames"]["done_this_run"] == 2
    assert "skipped" in r.output


def test_empty_folder_and_bad_model(tmp_path, small_cruise, tiny_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _infer(empty, tmp_path / "o1", tiny_checkpoint, _cfg(tmp_path))
    assert r.exit_code == 2 and "no frames found" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    r = _infer(small_cruise, tmp_path / "o2", bad, _cfg(tmp_path))
    assert r.exit_code == 2 and "not a readable segplank checkpoint" in r.output
    r = runner.invoke(app, ["infer", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "not a folder" in r.output


def test_bad_config_fails_before_work(tmp_path, small_cruise, tiny_checkpoint):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  tile_sise: 3\n")
    r = _infer(small_cruise, tmp_path / "o", tiny_checkpoint, p)
    assert r.exit_code == 2 and "tiling.tile_sise" in r.output
    assert not (tmp_path / "o").exists()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("segplank ")


def test_uvp_cruise_uses_its_polarity(tmp_path, tiny_checkpoint):
    from segplank.synth import make_cruise

    cruise = tmp_path / "uvp"
    make_cruise(cruise, 1, seed=9, preset="uvp", size=(384, 384))
    r = _infer(cruise, tmp_path / "out", tiny_checkpoint, _cfg(tmp_path))
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["config"]["instrument"]["polarity"] == "bright_on_dark"
    assert man["tiles"]["run"] >= 1  # lit objects on a dark background are found as foreground


def test_eval_matches_and_writes_thresholds(tmp_path, small_cruise, tiny_checkpoint):
    from segplank.evaluate import object_match
    from segplank.model.checkpoint import load_checkpoint

    gt = small_cruise / "ground_truth.coco.json"
    # the ground truth scored against itself is perfect
    res = object_match(gt, gt)
    assert res["plankton_recall"] == 1.0 and res["plankton_precision"] == 1.0
    out = tmp_path / "m.pt"
    r = runner.invoke(app, ["eval", str(gt), "--model", str(tiny_checkpoint), "--target-precision", "0.9",
                            "--write-model", str(out), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "e.json").read_text())
    ck = load_checkpoint(out)
    assert {n: t for n, t in zip(ck.classes.names, ck.classes.thresholds) if t is not None} == summary["thresholds"]


def test_choose_thresholds_reaches_target():
    from segplank.evaluate import choose_thresholds

    recs = [("copepod", s, ok) for s, ok in [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.5, False), (0.4, False)]]
    assert choose_thresholds(recs, 0.75)["copepod"] == pytest.approx(0.6, abs=1e-5)  # top 4: 3/4 right
    assert choose_thresholds(recs, 1.0)["copepod"] == pytest.approx(0.8, abs=1e-5)
    assert choose_thresholds([("x", 0.3, False), ("x", 0.2, False)], 0.9)["x"] == pytest.approx(0.3, abs=1e-5)
    # the last one kept, read back rounded (0.758055 written as 0.75806), is still kept at inference
    thr = choose_thresholds([("m", 0.75806, True), ("m", 0.75805, False)], 0.9)["m"]
    assert 0.75805 < thr <= 0.758055  # above the first dropped, under the true score of the last kept


def test_stream_option(tmp_path, small_cruise, tiny_checkpoint):
    """--stream writes each frame once with the line-stream stitcher."""
    cfg = _cfg(tmp_path)
    r = _infer(small_cruise, tmp_path / "s", tiny_checkpoint, cfg, "--stream", "--threads", "1")
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["config"]["stream"]["enabled"] and man["frames"]["done_this_run"] == 3
    frames = pq.read_table(tmp_path / "s" / "frames").column("frame_path").to_pylist()
    assert sorted(frames) == sorted(set(frames)) and len(frames) == 3


def test_a_line_scan_camera_runs_as_a_stream_unless_told_otherwise(tmp_path, small_cruise, tiny_checkpoint):
    """stream.enabled unset: on when the cruise's instrument scans lines (line_rate_hz), under
    either engine, off for a snapshot camera; the manifest records what the run did."""
    from segplank.config import load_config
    from segplank.engine import make_runner

    assert "line_rate_hz" in (small_cruise / "cruise.yaml").read_text()  # the synthetic ISIIS preset
    cfg = _cfg(tmp_path)
    on_ray = load_config(cfg, small_cruise, {"engine": {"kind": "ray"}})
    runner = make_runner(on_ray, load_checkpoint(tiny_checkpoint), tiny_checkpoint)
    assert runner.cfg.stream.enabled is True and runner.stream and runner.segment_frames == 64
    for flag, expected in (((), True), (("--no-stream",), False)):
        out = tmp_path / f"o{len(flag)}"
        r = _infer(small_cruise, out, tiny_checkpoint, cfg, "--threads", "1", *flag)
        assert r.exit_code == 0, r.output
        assert json.loads((out / "manifest.json").read_text())["config"]["stream"]["enabled"] is expected
    snapshots = tmp_path / "snap"  # the same frames from a camera without a line rate
    shutil.copytree(small_cruise / "frames", snapshots / "frames")
    (snapshots / "cruise.yaml").write_text("".join(
        line for line in (small_cruise / "cruise.yaml").read_text().splitlines(True) if "line_rate_hz" not in line))
    assert not load_config(cfg, snapshots).line_stream and load_config(cfg, small_cruise).line_stream


def test_frames_outside_the_records_are_counted_once(tmp_path, small_cruise, tiny_checkpoint, caplog):
    """Navigation covering the first frame only, no CTD: counted in the manifest, one warning, and a
    resumed run counts every frame of the output, not only its own."""
    cruise = tmp_path / "c"
    shutil.copytree(small_cruise / "frames", cruise / "frames")
    shutil.copy(small_cruise / "cruise.yaml", cruise / "cruise.yaml")
    nav = (small_cruise / "nav.csv").read_text().splitlines()
    (cruise / "nav.csv").write_text("\n".join([nav[0]] + [l for l in nav[1:] if l < "2026-06-01T12:00:01"]) + "\n")
    out, cfg = tmp_path / "out", _cfg(tmp_path)
    assert _infer(cruise, out, tiny_checkpoint, cfg, "--limit", "1").exit_code == 0
    r = _infer(cruise, out, tiny_checkpoint, cfg)
    assert r.exit_code == 0, r.output
    geo = json.loads((out / "manifest.json").read_text())["geo"]
    assert (geo["frames"], geo["outside_nav"], geo["outside_ctd"]) == (3, 2, 3)
    assert geo["nav"].endswith("nav.csv") and geo["ctd"] is None
    assert " ".join(r.output.split()).count("had no position") == 1


def test_help_reads_as_it_should():
    """Flags are flags (no `<bool>`), and help text is not eaten as markup."""
    r = runner.invoke(app, ["infer", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "pip install 'segplank[ray]'" in r.output and "<bool>" not in r.output
    assert "--keep-non-plankton " in r.output and "--stream / --no-stream" in r.output
    top = runner.invoke(app, ["--help"], terminal_width=200).output
    assert "Concentrations (individuals per m³)" in top
