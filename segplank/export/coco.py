"""COCO predictions with frame-relative RLE masks: for pycocotools, CVAT and `segplank train`."""
from __future__ import annotations

import json
from pathlib import Path


from ..structures import Detections
from ..stream import frame_pieces
from ..io.atomic import write_json
from ..io.rle import encode_in_frame

SCORE_DECIMALS = 5  # scores in COCO files are rounded to this many decimals


def coco_categories(names: list[str], is_plankton: list[bool]) -> list[dict]:
    return [{"id": k + 1, "name": n, "supercategory": "plankton" if p else "non-plankton"}
            for k, (n, p) in enumerate(zip(names, is_plankton))]


def coco_image(dets: Detections, file_name: str) -> dict:
    f = dets.frame
    img = {"id": f.index + 1, "file_name": file_name, "width": f.width, "height": f.height}
    if f.timestamp is not None:
        img["date_captured"] = f.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return img


def coco_annotations(dets: Detections, object_ids: list[str], line_stream: bool = False) -> list[dict]:
    """Annotations with frame-relative RLE; ``id`` is assigned when shards are merged.

    In a ``line_stream``, an object that reaches the next frame (or the previous one) has one
    annotation per frame it lies in, each that frame's piece, under one ``object_id``: COCO
    images are frames, and a tool that opens one sees all that is in it.
    """
    f = dets.frame
    out = []
    for k in range(len(dets)):
        bm, origin = dets.masks.bitmaps[k], dets.masks.origins[k]
        pieces = frame_pieces(bm, origin, f.height) if line_stream else [(0, origin, bm)]
        for step, (ox, oy), bm in pieces:
            out.append({
                "image_id": f.index + 1 + step, "category_id": int(dets.labels[k]),
                "segmentation": encode_in_frame(bm, (ox, oy), f.height, f.width),
                "area": int(bm.sum()), "bbox": [int(ox), int(oy), int(bm.shape[1]), int(bm.shape[0])],
                "score": round(float(dets.scores[k]), SCORE_DECIMALS), "iscrowd": 0, "object_id": object_ids[k],
            })
    return out


def write_coco_shard(path: Path, images: list[dict], annotations: list[dict]) -> None:
    write_json(path, {"images": images, "annotations": annotations})


def merge_coco_shards(shards: list[Path], categories: list[dict], out: Path, info: dict) -> int:
    """One COCO dataset from the shard files, images ordered by id; returns the annotation count."""
    images: dict[int, dict] = {}
    annotations: list[dict] = []
    for s in shards:
        part = json.loads(Path(s).read_text())
        for im in part["images"]:
            images[im["id"]] = im
        annotations.extend(part["annotations"])
    # a stream object's piece in a frame not written yet (a --limit run) waits for that frame's shard
    annotations = [a for a in annotations if a["image_id"] in images]
    annotations.sort(key=lambda a: (a["image_id"], a["object_id"]))
    for k, a in enumerate(annotations):
        a["id"] = k + 1
    write_json(out, {"info": info, "images": [images[k] for k in sorted(images)], "categories": categories,
                     "annotations": annotations})
    return len(annotations)


__all__ = ["coco_categories", "coco_image", "coco_annotations", "write_coco_shard", "merge_coco_shards"]
