"""Scoring a ``--stream`` run the way its organisms exist: each once, whole, in stream rows.

A line-scan (ISIIS) cruise is one stream of lines cut into frames, and a frame-by-frame
ground truth counts each cut organism once per frame it reaches, as a piece (on a 2048²
synthetic cruise about a third of the organisms are cut by a frame's edge). A ``--stream``
run writes each organism once, owned by the frame of its first line, with rows reaching
into the next frames; ``ground_truth_stream.json`` (``segplank synth``) holds each organism
once in stream rows. Both are put here on one tall image per stream, so the evaluator's own
object match (``evaluate.py``) scores them unchanged.

The stream rows of an object come from its frame's index in the cruise (``frame_index``
of the object table): this is for a synthetic cruise, whose frames are one stream.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from .io.rle import decode_cropped, encode_in_frame

STREAM_FILE = "stream"  # the file name of the one tall image both sides are put on


def is_stream_truth(data: object) -> bool:
    return isinstance(data, dict) and "objects" in data and "frame_height" in data


def _image(truth: dict) -> dict:
    return {"id": 1, "file_name": STREAM_FILE, "height": int(truth["frame_height"]) * int(truth["n_frames"]),
            "width": int(truth["width"])}


def stream_truth_coco(truth: dict) -> dict:
    """``ground_truth_stream.json`` as a COCO dataset of one image (the whole stream)."""
    im = _image(truth)
    anns = []
    for o in truth["objects"]:
        seg = o["segmentation"]
        bitmap = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")})
        anns.append({"id": int(o["id"]), "image_id": 1, "category_id": int(o["category_id"]), "iscrowd": 0,
                     "segmentation": encode_in_frame(bitmap, (o["x0"], o["y0"]), im["height"], im["width"]),
                     "area": int(o["area"]), "bbox": [int(o["x0"]), int(o["y0"]), int(bitmap.shape[1]),
                                                       int(bitmap.shape[0])]})
    return {"images": [im], "annotations": anns, "categories": truth["categories"]}


def stream_run_coco(run_dir: Path, truth: dict) -> dict:
    """A run's object table (``RUN/objects``) as COCO predictions on the stream image of ``truth``."""
    objects = Path(run_dir) / "objects"
    if not objects.is_dir():
        raise FileNotFoundError(f"{run_dir}: no objects/ folder: give the output folder of a `segplank infer --stream` run")
    cols = ["frame_index", "label", "label_name", "is_plankton", "score", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
            "mask_rle"]
    t = pq.read_table(objects, columns=cols).to_pydict()
    im = _image(truth)
    step = int(truth["frame_height"])
    anns = []
    for k in range(len(t["label"])):
        w, h = int(t["bbox_w"][k]), int(t["bbox_h"][k])
        origin = (int(t["bbox_x"][k]), int(t["frame_index"][k]) * step + int(t["bbox_y"][k]))
        bitmap = decode_cropped(t["mask_rle"][k], w, h)
        anns.append({"id": k + 1, "image_id": 1, "category_id": int(t["label"][k]), "score": float(t["score"][k]),
                     "segmentation": encode_in_frame(bitmap, origin, im["height"], im["width"]),
                     "area": int(np.count_nonzero(bitmap)), "bbox": [origin[0], origin[1], w, h], "iscrowd": 0})
    names = {int(lab): (str(n), bool(p)) for lab, n, p in zip(t["label"], t["label_name"], t["is_plankton"])}
    cats = [{"id": i, "name": n, "supercategory": "plankton" if p else "non-plankton"} for i, (n, p) in sorted(names.items())]
    return {"images": [im], "annotations": anns, "categories": cats}
