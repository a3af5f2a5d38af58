"""Draw a cruise frame's ground-truth outlines, coloured by category, to eyeball the truth."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# BGR, one per category id, distinguishable on grey
COLOURS: dict[int, tuple[int, int, int]] = {
    1: (0, 0, 230), 2: (0, 160, 0), 3: (230, 90, 0), 4: (200, 0, 200),
    5: (0, 170, 230), 6: (140, 140, 0), 7: (40, 90, 160), 8: (230, 0, 110),
}


def preview(cruise_dir: Path, frame_index: int, out_png: Path, max_side: int = 1024) -> Path:
    """Write frame `frame_index` (0-based) of a cruise, downscaled, with GT outlines and a legend."""
    from pycocotools import mask as mask_utils

    cruise_dir = Path(cruise_dir)
    coco = json.loads((cruise_dir / "ground_truth.coco.json").read_text(encoding="utf-8"))
    image = coco["images"][frame_index]
    grey = cv2.imread(str(cruise_dir / image["file_name"]), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise FileNotFoundError(cruise_dir / image["file_name"])
    scale = min(1.0, max_side / max(grey.shape))
    canvas = cv2.cvtColor(cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA),
                          cv2.COLOR_GRAY2BGR)
    counts: dict[int, int] = {}
    for ann in coco["annotations"]:
        if ann["image_id"] != image["id"]:
            continue
        cid = ann["category_id"]
        counts[cid] = counts.get(cid, 0) + 1
        _draw_outline(canvas, mask_utils.decode(ann["segmentation"]), ann["bbox"], scale, COLOURS[cid])
    _legend(canvas, coco["categories"], counts)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out_png


def _draw_outline(canvas: np.ndarray, mask: np.ndarray, bbox: list, scale: float, colour: tuple) -> None:
    """Contours found in the object's box only (cheap), drawn at preview scale."""
    x, y, w, h = (int(v) for v in bbox)
    crop = np.ascontiguousarray(mask[y:y + h, x:x + w])
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    for c in contours:
        pts = ((c.reshape(-1, 2) + [x, y] + 0.5) * scale * 16).astype(np.int32)
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], True, colour, 1, cv2.LINE_AA, 4)


def _legend(canvas: np.ndarray, categories: list[dict], counts: dict[int, int]) -> None:
    x0, y0, line = 8, 8, 18
    box_h = line * len(categories) + 8
    cv2.rectangle(canvas, (x0, y0), (x0 + 190, y0 + box_h), (255, 255, 255), -1)
    cv2.rectangle(canvas, (x0, y0), (x0 + 190, y0 + box_h), (0, 0, 0), 1)
    for i, cat in enumerate(categories):
        y = y0 + 8 + i * line
        cv2.rectangle(canvas, (x0 + 6, y), (x0 + 18, y + 12), COLOURS[cat["id"]], -1)
        cv2.putText(canvas, f"{cat['name']} ({counts.get(cat['id'], 0)})", (x0 + 24, y + 11),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
