"""COCO RLE for box-cropped masks, without ever building a full-frame bitmap."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def to_rle(segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def encode_cropped(bitmap: np.ndarray) -> dict:
    """RLE of the bitmap itself (box-relative), counts as str: compact for Parquet rows."""
    rle = mask_utils.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    return {"size": [int(bitmap.shape[0]), int(bitmap.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode_cropped(counts: str, width: int, height: int) -> np.ndarray:
    """Bool bitmap of a box-relative RLE (the inverse of ``encode_cropped``)."""
    return mask_utils.decode({"size": [int(height), int(width)], "counts": str(counts).encode("ascii")}).astype(bool)


def encode_in_frame(bitmap: np.ndarray, origin: tuple[int, int], height: int, width: int) -> dict:
    """Frame-relative COCO RLE of a bitmap placed at ``origin`` (x0, y0).

    COCO RLE runs down columns: columns left of the box are all zero, so only an
    (H × box width) strip is encoded and the leading/trailing zero runs are added to the
    uncompressed counts.
    """
    x0, y0 = int(origin[0]), int(origin[1])
    h, w = bitmap.shape
    # clip the bitmap to the frame
    cx0, cy0 = max(0, -x0), max(0, -y0)
    cx1, cy1 = min(w, width - x0), min(h, height - y0)
    strip = np.zeros((height, max(0, cx1 - cx0)), np.uint8, order="F")
    if cx1 > cx0 and cy1 > cy0:
        strip[y0 + cy0:y0 + cy1, :] = bitmap[cy0:cy1, cx0:cx1]
    counts = _runs(strip)
    lead = (x0 + cx0) * height
    trail = (width - (x0 + cx0) - strip.shape[1]) * height
    counts[0] += lead
    if len(counts) % 2 == 1:  # ends on a zero run
        counts[-1] += trail
    elif trail:
        counts.append(trail)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _runs(strip: np.ndarray) -> list[int]:
    """Uncompressed COCO counts (column-major, starting with a zero run)."""
    flat = strip.ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs.insert(0, 0)
    return runs
