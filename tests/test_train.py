"""`segplank train`: a few real iterations on a small synthetic cruise, then the checkpoint runs."""
import json

from typer.testing import CliRunner

from segplank.cli import app
from segplank.model.checkpoint import load_checkpoint

runner = CliRunner()


def test_train_writes_a_usable_self_describing_checkpoint(tmp_path, small_cruise):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("model:\n  width_mult: 0.25\n  fpn_channels: 16\n  box_head_dim: 32\n  mask_head_channels: 16\n"
                   "chip_size: 128\nbatch_size: 2\niterations: 3\nwarmup_iters: 1\nval_every: 2\n")
    out = tmp_path / "m.pt"
    gt = small_cruise / "ground_truth.coco.json"
    r = runner.invoke(app, ["train", str(gt), "--val", str(gt), "-c", str(cfg), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out)
    assert ck.classes.names == tuple(c["name"] for c in json.loads(gt.read_text())["categories"])
    assert ck.trained_on["frames"] == 3 and ck.metrics["iterations"] == 3
    assert ck.metrics["val_loss"] is not None and ck.metrics["final_loss"] > 0
    # continue from it
    r = runner.invoke(app, ["train", str(gt), "-c", str(cfg), "-o", str(tmp_path / "m2.pt"), "--init", str(out)])
    assert r.exit_code == 0, r.output
    # and it runs in infer
    pipe = tmp_path / "p.yaml"
    pipe.write_text("tiling: {tile_size: 192, overlap: 32}\ndetector: {proposals_per_tile: 100, candidates_per_level: 200}\n")
    r = runner.invoke(app, ["infer", str(small_cruise), "-o", str(tmp_path / "o"), "--model", str(out), "-c", str(pipe), "--limit", "1"])
    assert r.exit_code == 0, r.output


def test_train_refuses_bad_inputs(tmp_path, small_cruise, tiny_checkpoint):
    r = runner.invoke(app, ["train", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "not found" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 0\n")
    r = runner.invoke(app, ["train", str(small_cruise / "ground_truth.coco.json"), "-c", str(bad)])
    assert r.exit_code == 2 and "iterations" in r.output
