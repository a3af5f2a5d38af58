"""detectron2 checkpoints in: the imported network gives detectron2's own detections.

The goldens (``tests/data/detectron2/golden_<n>.json``) were made by detectron2 itself
(``tools/make_detectron2_goldens.py``) from weights that ``tests/d2_weights.py`` rebuilds
here without detectron2.
"""
import json
import pickle

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from segplank.cli import app
from segplank.model.checkpoint import CheckpointError, load_checkpoint
from segplank.model.detectron2 import import_detectron2, read_weights
from segplank.model.predict import TilePredictor

from . import d2_weights

DATA = d2_weights.LAYOUTS
NAMES = {3: ["copepod", "chaetognath", "marine_snow"], 1: ["plankton"]}


def _pth(tmp_path, n):
    path = tmp_path / f"model_final_{n}.pth"
    torch.save({"model": d2_weights.weights(n), "iteration": 0}, path)
    return path


def _detect(ckpt, frame):
    """The imported network on the frame as one tile, every detection over the model's own threshold."""
    model = ckpt.build("cpu", tile_size=frame.shape[0])
    pred = TilePredictor(model, ckpt.classes, torch.device("cpu"),
                         score_thresholds=np.zeros(len(ckpt.classes) + 1, np.float32), masks_for_non_plankton=True)
    d = pred(torch.as_tensor(frame[None] / 255.0, dtype=torch.float32))[0]
    boxes = d.boxes.numpy()
    masks = d.masks.to_cropped(boxes)
    full = []
    for (x0, y0), bm in zip(masks.origins, masks.bitmaps):
        m = np.zeros(frame.shape, bool)
        y1, x1 = min(frame.shape[0], y0 + bm.shape[0]), min(frame.shape[1], x0 + bm.shape[1])
        m[max(y0, 0):y1, max(x0, 0):x1] = bm[max(-y0, 0):y1 - y0, max(-x0, 0):x1 - x0]
        full.append(m)
    return boxes, d.scores.numpy(), d.labels.numpy() - 1, full


def _iou(a, b):
    x0, y0 = np.maximum(a[:2], b[:2])
    x1, y1 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("n", [3, 1])
def test_imported_model_gives_detectron2s_detections(tmp_path, n):
    golden = json.loads((DATA / f"golden_{n}.json").read_text())
    assert len(golden["scores"]) >= 10, "a golden worth testing against"
    frame = cv2.imread(str(DATA / "frame.png"), cv2.IMREAD_GRAYSCALE)
    ckpt, ignored = import_detectron2(_pth(tmp_path, n), DATA / f"config_{n}.yaml", NAMES[n] if n > 1 else None)
    assert ignored == []  # every tensor of the file is a weight of the network
    boxes, scores, classes, masks = _detect(ckpt, frame)
    assert len(scores) == len(golden["scores"])  # none extra, none missing
    unmatched = list(range(len(scores)))
    for gb, gs, gc, grle in zip(golden["boxes"], golden["scores"], golden["classes"], golden["masks"]):
        gmask = mask_utils.decode({"size": golden["size"], "counts": grle}).astype(bool)
        best = max(unmatched, key=lambda k: _iou(boxes[k], np.array(gb)))
        # the issue asks box IoU >= 0.99, |dscore| <= 0.01, mask IoU >= 0.95; the maths are the same, so
        # tighter holds (measured: |dscore| ~1e-6, every box and mask IoU 1.000)
        assert _iou(boxes[best], np.array(gb)) >= 0.999 and classes[best] == gc and abs(scores[best] - gs) <= 1e-3
        inter, union = (masks[best] & gmask).sum(), (masks[best] | gmask).sum()
        assert union == 0 or inter / union >= 0.99
        unmatched.remove(best)


def test_one_class_model_is_plankton_not_background(tmp_path):
    ckpt, _ = import_detectron2(_pth(tmp_path, 1))
    assert ckpt.classes.names == ("plankton",) and ckpt.classes.is_plankton == (True,)
    d2 = d2_weights.weights(1)["roi_heads.box_predictor.cls_score.weight"]
    ours = ckpt.state_dict["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(ours[0], d2[1]) and torch.equal(ours[1], d2[0])  # background first here, last there


def test_import_model_command_writes_a_segplank_checkpoint(tmp_path):
    out = tmp_path / "model.pt"
    r = CliRunner().invoke(app, ["import-model", "detectron2", str(_pth(tmp_path, 3)), "--config",
                                 str(DATA / "config_3.yaml"), "--classes", ",".join(NAMES[3]),
                                 "--non-plankton", "marine_snow", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(out)
    assert ckpt.classes.names == tuple(NAMES[3]) and ckpt.classes.is_plankton == (True, True, False)
    assert ckpt.trained_on["imported_from"] == "detectron2" and ckpt.model_config.backbone == "detectron2_r50"
    r = CliRunner().invoke(app, ["import-model", "detectron2", str(_pth(tmp_path, 3)), "-o", str(out)])
    assert r.exit_code == 2 and "3 classes and no names for them; pass --classes" in r.output


def test_what_the_converter_does_not_know_is_one_line(tmp_path):
    w = d2_weights.weights(1)
    no_mask = {k: v for k, v in w.items() if not k.startswith("roi_heads.mask_head")}
    torch.save({"model": no_mask}, tmp_path / "faster.pth")
    with pytest.raises(CheckpointError, match="without a mask head"):
        import_detectron2(tmp_path / "faster.pth")
    deeper = dict(w)
    for b in range(6, 23):  # res4 of a ResNet-101
        for part in ("conv1.weight", "conv2.weight", "conv3.weight"):
            deeper[f"backbone.bottom_up.res4.{b}.{part}"] = w[f"backbone.bottom_up.res4.1.{part}"]
    torch.save({"model": deeper}, tmp_path / "r101.pth")
    with pytest.raises(CheckpointError, match="ResNet-101; the converter knows ResNet-50-FPN only"):
        import_detectron2(tmp_path / "r101.pth")
    extra = {**w, "roi_heads.keypoint_head.fcn1.weight": torch.zeros(1)}
    torch.save({"model": extra}, tmp_path / "extra.pth")
    assert import_detectron2(tmp_path / "extra.pth")[1] == ["roi_heads.keypoint_head.fcn1.weight"]  # named
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a detectron2 FPN R-CNN"):
        import_detectron2(tmp_path / "other.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_is_read_for_numpy_arrays_only(tmp_path, capsys):
    w = {k: v.numpy() for k, v in d2_weights.weights(1).items()}
    good = tmp_path / "model_final.pkl"
    good.write_bytes(pickle.dumps({"model": w, "__author__": "Detectron2 Model Zoo"}))
    got = read_weights(good)
    key = "roi_heads.box_predictor.cls_score.weight"
    assert set(got) == set(w) and torch.equal(got[key], torch.from_numpy(w[key]))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": w, "x": _Evil()}))
    with pytest.raises(CheckpointError, match="refused: this pickle needs builtins.print"):
        read_weights(evil)
    assert "never run" not in capsys.readouterr().out
    evil_pth = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, evil_pth)
    with pytest.raises(CheckpointError, match="not a readable detectron2 checkpoint with weights only"):
        read_weights(evil_pth)


def test_an_imported_model_runs_through_infer_and_fine_tunes(tmp_path, small_cruise):
    model = tmp_path / "d2.pt"
    assert CliRunner().invoke(app, ["import-model", "detectron2", str(_pth(tmp_path, 1)), "-o", str(model)]).exit_code == 0
    cfg = tmp_path / "p.yaml"
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.45}\n")
    r = CliRunner().invoke(app, ["infer", str(small_cruise), "-o", str(tmp_path / "out"), "--model", str(model),
                                 "-c", str(cfg), "--limit", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    objects = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["written_per_class"]
    assert objects.get("plankton", 0) > 0  # tiled, stitched, refined, measured and written like any model's
    train_cfg = tmp_path / "t.yaml"
    train_cfg.write_text("chip_size: 128\nbatch_size: 1\niterations: 1\nwarmup_iters: 0\nthreads: 1\n")
    r = CliRunner().invoke(app, ["train", str(small_cruise / "ground_truth.coco.json"), "-c", str(train_cfg),
                                 "--init", str(model), "-o", str(tmp_path / "tuned.pt")])
    assert r.exit_code == 0, r.output
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    assert tuned.model_config.backbone == "detectron2_r50" and tuned.model_config.roi_aligned  # its own maths kept
