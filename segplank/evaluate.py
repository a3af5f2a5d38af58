"""Object-level evaluation: the figures plankton ecologists judge a run by.

Share of organisms found (plankton recall) and share of objects written as plankton that
are plankton (plankton precision), from a greedy one-to-one match by mask IoU per frame.
Frames are matched by file name, so ground truth and predictions need not share ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .export.rle import to_rle


def _plankton_names(categories: list[dict]) -> set[str]:
    return {c["name"] for c in categories if not str(c.get("supercategory", "")).lower().startswith("non")}


def object_match(gt_path: Path, pred_path: Path, iou: float = 0.5, min_score: float = 0.0) -> dict:
    """Plankton recall/precision and per-class recall at mask IoU ≥ ``iou``."""
    gt = json.loads(Path(gt_path).read_text())
    pr = json.loads(Path(pred_path).read_text())
    g_name = {c["id"]: c["name"] for c in gt["categories"]}
    p_name = {c["id"]: c["name"] for c in pr.get("categories", gt["categories"])}
    plankton = _plankton_names(gt["categories"])
    pred_by_file = {Path(im["file_name"]).name: im["id"] for im in pr.get("images", gt["images"])}
    preds: dict[int, list[dict]] = {}
    for a in pr["annotations"] if isinstance(pr, dict) else pr:
        if a.get("score", 1.0) >= min_score:
            preds.setdefault(a["image_id"], []).append(a)
    gts: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        gts.setdefault(a["image_id"], []).append(a)
    tp = fn = kept = kept_true = 0
    per_class: dict[str, list[int]] = {}
    found_ids: list[int] = []
    records: list[tuple[str, float, bool]] = []  # per prediction: class, score, counted as right
    for im in gt["images"]:
        h, w = im["height"], im["width"]
        g = gts.get(im["id"], [])
        p = sorted(preds.get(pred_by_file.get(Path(im["file_name"]).name, -1), []), key=lambda a: -a.get("score", 1))
        ious = (mask_utils.iou([to_rle(a["segmentation"], h, w) for a in p], [to_rle(a["segmentation"], h, w) for a in g],
                               [0] * len(g)) if g and p else np.zeros((len(p), len(g))))
        match = _greedy(np.asarray(ious).reshape(len(p), len(g)), iou)
        matched_gt = set(match.values())
        for j, a in enumerate(g):
            name = g_name[a["category_id"]]
            found = j in matched_gt
            if found:
                found_ids.append(a["id"])
            per_class.setdefault(name, [0, 0])[0 if found else 1] += 1
            if name in plankton:
                tp += found
                fn += not found
        for i, a in enumerate(p):
            name = p_name[a["category_id"]]
            right = i in match and (g_name[g[match[i]]["category_id"]] in plankton or name not in plankton)
            records.append((name, float(a.get("score", 1.0)), bool(right)))
            if name in plankton:
                kept += 1
                kept_true += right
    return {
        "plankton_recall": tp / max(1, tp + fn), "plankton_precision": kept_true / max(1, kept),
        "gt_plankton": tp + fn, "pred_plankton": kept,
        "recall_per_class": {k: v[0] / max(1, sum(v)) for k, v in sorted(per_class.items())},
        "gt_per_class": {k: sum(v) for k, v in sorted(per_class.items())},
        "found_ids": found_ids,
        "records": records,
    }


def choose_thresholds(records: list[tuple[str, float, bool]], target_precision: float,
                      floor: float = 0.05) -> dict[str, float]:
    """Per class, the lowest score threshold whose kept predictions reach ``target_precision``.

    A prediction is right when it matches an organism (plankton classes) or any object
    (non-plankton classes). A class that never reaches the target gets the threshold of its
    most precise score band, so it still keeps what it does best; classes without
    predictions are left out (the config's default applies).
    """
    out: dict[str, float] = {}
    for name in sorted({r[0] for r in records}):
        rows = sorted(((s, ok) for n, s, ok in records if n == name), key=lambda r: -r[0])
        scores = np.array([r[0] for r in rows])
        right = np.cumsum([r[1] for r in rows])
        precision = right / np.arange(1, len(rows) + 1)
        ok = np.flatnonzero(precision >= target_precision)
        k = ok[-1] if len(ok) else int(np.argmax(precision))
        out[name] = float(max(floor, scores[k]))
    return out


def _greedy(ious: np.ndarray, thr: float) -> dict[int, int]:
    """Prediction i (in score order) takes its best still-free ground truth with IoU ≥ thr."""
    used: set[int] = set()
    match: dict[int, int] = {}
    for i in range(ious.shape[0]):
        for j in np.argsort(-ious[i]):
            if ious[i, j] < thr:
                break
            if j not in used:
                used.add(int(j))
                match[i] = int(j)
                break
    return match
