"""Plankton recall split by where organisms lie: inside one tile, across seams, larger than a tile.

Usage: python tools/seam_recall.py GT.coco.json PRED.coco.json [--tile 560 --overlap 64]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from segplank.evaluate import object_match
from segplank.tiling import tile_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gt")
    ap.add_argument("pred")
    ap.add_argument("--tile", type=int, default=560)
    ap.add_argument("--overlap", type=int, default=64)
    a = ap.parse_args()
    gt = json.load(open(a.gt))
    res = object_match(a.gt, a.pred)
    found = set(res["found_ids"])
    plankton = {c["id"] for c in gt["categories"] if not c["supercategory"].startswith("non")}
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    groups: dict[str, list[bool]] = {"inside one tile": [], "across a seam": [], "larger than a tile": []}
    for ann in gt["annotations"]:
        if ann["category_id"] not in plankton:
            continue
        h, w = sizes[ann["image_id"]]
        win = tile_grid(h, w, a.tile, a.overlap)
        x, y, bw, bh = ann["bbox"]
        inside = ((win[:, 0] <= x) & (win[:, 1] <= y) & (win[:, 2] >= x + bw) & (win[:, 3] >= y + bh)).any()
        key = "inside one tile" if inside else ("larger than a tile" if max(bw, bh) > a.tile else "across a seam")
        groups[key].append(ann["id"] in found)
    for k, v in groups.items():
        print(f"{k:>20}: {np.sum(v)}/{len(v)} found" + (f" (recall {np.mean(v):.3f})" if v else ""))
    print(f"plankton recall {res['plankton_recall']:.3f}, precision {res['plankton_precision']:.3f}")


if __name__ == "__main__":
    main()
