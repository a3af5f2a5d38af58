"""segplank against SAHI's sliced prediction, with the same detector on the same frames.

SAHI (https://github.com/obss/sahi) is the common way to run a detector on frames larger
than its input: slices with overlap, each through the model, predictions shifted back and
merged (GREEDYNMM by IOS). Here it runs segplank's own detector network (the checkpoint's
Mask R-CNN with the proposal budget of the pipeline config, batch norms folded), on the
same tile size and overlap, and its merged predictions of plankton classes at a confidence
threshold are scored as segplank's rows are (`evaluate.object_match`, mask IoU >= 0.5). segplank runs its whole pipeline: refinement and vignette classifier included.

    pip install --target /tmp/sahi_site sahi fire tqdm --no-deps   # SAHI is not a dependency
    PYTHONPATH=/tmp/sahi_site .venv/bin/python tools/sahi_compare.py CRUISE -o OUT [--frames 2]

Prints one markdown table and writes OUT/sahi_compare.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils


def _sahi_model(stages, ckpt, threshold: float):
    from sahi.models.torchvision import TorchVisionDetectionModel
    from sahi.utils.cv import get_coco_segmentation_from_bool_mask

    class Model(TorchVisionDetectionModel):
        """SAHI raises on a mask without a polygon (a speck under the mask threshold, sahi
        issue 235): such detections are dropped before it sees them."""

        def perform_inference(self, image, image_size=None):
            super().perform_inference(image, image_size)
            for p in self._original_predictions:
                masks = p["masks"][:, 0] > self.mask_threshold
                small = masks.flatten(1).sum(1) < 64
                ok = ~small
                for i in torch.nonzero(small).flatten().tolist():
                    ok[i] = bool(get_coco_segmentation_from_bool_mask(masks[i].cpu().numpy()))
                for k in ("boxes", "scores", "labels", "masks"):
                    p[k] = p[k][ok]

    names = {str(i + 1): n for i, n in enumerate(ckpt.network_classes.names)}
    net = stages.detector.predictor.model
    net.roi_heads.score_thresh = threshold  # as a SAHI user would: no masks for what the threshold drops
    return Model(model=net, device="cpu",
                                     confidence_threshold=threshold, category_mapping=names, mask_threshold=0.5)


def _to_rle(seg: list, h: int, w: int) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if seg else mask_utils.encode(
        np.zeros((h, w, 1), np.uint8, order="F"))[0]
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def run_sahi(cruise: Path, gt: dict, frames: list[dict], stages, ckpt, tile: int, overlap: int,
             threshold: float) -> tuple[list, float]:
    """SAHI's merged predictions of plankton classes scoring ``threshold`` (COCO results), and its seconds."""
    from sahi.predict import get_sliced_prediction

    classes = ckpt.network_classes
    plankton = {n for n, p in zip(classes.names, classes.is_plankton) if p}
    model = _sahi_model(stages, ckpt, threshold)
    gt_ids = {c["name"]: c["id"] for c in gt["categories"]}
    out, seconds = [], 0.0
    import cv2

    for im in frames:
        grey = cv2.imread(str(cruise / im["file_name"]), cv2.IMREAD_GRAYSCALE)
        rgb = np.repeat(grey[:, :, None], 3, 2)  # dark on bright: the model's input is grey / 255, as SAHI feeds it
        t = time.perf_counter()
        with torch.inference_mode():
            res = get_sliced_prediction(rgb, model, slice_height=tile, slice_width=tile,
                                        overlap_height_ratio=overlap / tile, overlap_width_ratio=overlap / tile,
                                        perform_standard_pred=False, postprocess_type="GREEDYNMM",
                                        postprocess_match_metric="IOS", postprocess_match_threshold=0.5,
                                        force_postprocess_type=True, verbose=0)
        seconds += time.perf_counter() - t
        h, w = grey.shape
        for p in res.object_prediction_list:
            name, score = p.category.name, float(p.score.value)
            if name not in plankton:
                continue
            seg = p.mask.segmentation if p.mask is not None else []
            out.append({"image_id": im["id"], "category_id": gt_ids[name], "score": score,
                        "segmentation": _to_rle(seg, h, w)})
    return out, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cruise", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, action="append",
                    help="SAHI's confidence threshold (repeatable; default 0.5 and 0.05, segplank's candidate score)")
    a = ap.parse_args()
    from segplank.config import load_config
    from segplank.engine import make_runner
    from segplank.engine.local import build_stages
    from segplank.evaluate import object_match
    from segplank.model.checkpoint import DEMO_MODEL, load_checkpoint

    torch.set_num_threads(a.threads)
    model_path = a.model or DEMO_MODEL
    ckpt = load_checkpoint(model_path)
    cfg = load_config(None, a.cruise, {"stream": {"enabled": False}})
    gt = json.loads((a.cruise / "ground_truth.coco.json").read_text())
    frames = sorted(gt["images"], key=lambda im: im["file_name"])[:a.frames]
    gt_sub = {**gt, "images": frames,
              "annotations": [g for g in gt["annotations"] if g["image_id"] in {im["id"] for im in frames}]}
    a.out.mkdir(parents=True, exist_ok=True)

    runner = make_runner(cfg, ckpt, model_path, a.threads)
    stats = runner.run(a.cruise, a.out / "segplank", force=True, limit=a.frames)
    ours = object_match(gt_sub, a.out / "segplank" / "predictions.coco.json")

    n = len(frames)
    rows = {"segplank": (stats.seconds / n, ours)}
    for thr in a.threshold or [0.5, 0.05]:
        stages = build_stages(cfg, ckpt, torch.device("cpu"))
        preds, sahi_seconds = run_sahi(a.cruise, gt, frames, stages, ckpt, cfg.tiling.tile_size, cfg.tiling.overlap,
                                       thr)
        (a.out / f"sahi_{thr}.coco.json").write_text(json.dumps(preds))
        rows[f"SAHI, same detector, score >= {thr}, GREEDYNMM/IOS 0.5"] = (sahi_seconds / n, object_match(gt_sub, preds))
    print(f"{n} frames of {a.cruise}, {a.threads} threads, tile {cfg.tiling.tile_size}, overlap {cfg.tiling.overlap}")
    print("| | s per frame | plankton recall | plankton precision | plankton rows |")
    print("|---|---|---|---|---|")
    for name, (s, m) in rows.items():
        print(f"| {name} | {s:.2f} | {m['plankton_recall']:.3f} | {m['plankton_precision']:.3f} | {m['plankton']['pred']} |")
    (a.out / "sahi_compare.json").write_text(json.dumps(
        {k: {"seconds_per_frame": s, "plankton_recall": m["plankton_recall"],
             "plankton_precision": m["plankton_precision"], "plankton_rows": m["plankton"]["pred"]}
         for k, (s, m) in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
