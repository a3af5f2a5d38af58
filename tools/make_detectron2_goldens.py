"""Golden detections from detectron2 itself, for tests/test_detectron2.py (never a dependency).

Run once, in a throwaway virtual environment where ../shared/vendor/detectron2-src.tar.gz is
installed (torch and torchvision first, ``setuptools<70``, opencv-python-headless, then
``pip install --no-build-isolation -e detectron2-src``):

    /tmp/d2/venv/bin/python tools/make_detectron2_goldens.py

For a multi-class and a one-class mask_rcnn_R_50_FPN_3x (detectron2's defaults, the input
not resized), it writes ``tests/data/detectron2/layout_<n>.json`` (the state dict's names
and shapes), fills them with ``tests/d2_weights.weights`` (rebuilt by the test without
detectron2), runs detectron2's predictor on the golden frame and writes
``golden_<n>.json``: boxes, scores, classes and RLE masks of every detection.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import d2_weights  # noqa: E402

DATA = ROOT / "tests" / "data" / "detectron2"
D2_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"


def _cfg(n_classes: int):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(D2_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = n_classes
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: segplank runs tiles at their own size
    # fewer detections than DETECTIONS_PER_IMAGE: which of near-tied scores the cap keeps is not maths
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = {3: 0.8, 1: 0.45}[n_classes]
    return cfg


def main() -> None:
    from detectron2.modeling import build_model
    from pycocotools import mask as mask_utils

    import cv2

    DATA.mkdir(parents=True, exist_ok=True)
    frame = cv2.imread(str(DATA / "frame.png"), cv2.IMREAD_GRAYSCALE)
    for n in (3, 1):
        cfg = _cfg(n)
        model = build_model(cfg).eval()
        names = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        (DATA / f"layout_{n}.json").write_text(json.dumps(names))
        weights = d2_weights.weights(n)
        model.load_state_dict(weights, strict=True)
        (DATA / f"config_{n}.yaml").write_text(cfg.dump())
        bgr = np.repeat(frame[:, :, None], 3, axis=2)
        with torch.no_grad():
            inst = model([{"image": torch.as_tensor(bgr.transpose(2, 0, 1).astype("float32")),
                           "height": frame.shape[0], "width": frame.shape[1]}])[0]["instances"]
        masks = inst.pred_masks.numpy()
        golden = {"boxes": inst.pred_boxes.tensor.tolist(), "scores": inst.scores.tolist(),
                  "classes": inst.pred_classes.tolist(),
                  "masks": [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
                            for m in masks],
                  "size": list(frame.shape)}
        (DATA / f"golden_{n}.json").write_text(json.dumps(golden))
        s = np.array(golden["scores"])
        print(f"{n} class(es): {len(s)} detections, scores {s.min():.3f}-{s.max():.3f}, "
              f"classes {np.bincount(golden['classes'], minlength=n).tolist()}")


if __name__ == "__main__":
    main()
