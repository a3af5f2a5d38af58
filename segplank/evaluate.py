"""Evaluation: the figures plankton ecologists judge a run by, and COCO's for everyone else.

Object level: a greedy one-to-one match by mask IoU per frame, class-agnostic (a prediction
in score order takes its best still-free ground-truth object with IoU ≥ ``iou``). Every
figure comes from that one match, so the per-class table, the confusion matrix and the
precision-recall curves agree with each other: share of organisms found (recall), share of
objects kept as plankton that are organisms (precision), F1, segments per frame.

COCO level: pycocotools' ``COCOeval`` for boxes and masks on the same files.

Frames are matched by file name and classes by category name, so ground truth and
predictions need not share ids. Predictions are a COCO dataset (as ``segplank infer`` writes
``predictions.coco.json``) or a bare COCO results list using the ground truth's ids.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from .export.coco import SCORE_DECIMALS
from .io.rle import to_rle

IouType = Literal["bbox", "segm"]
Source = Union[Path, str, dict, list]
# COCOeval's default maxDets (1, 10, 100) caps detections per frame *and class*; a plankton
# frame holds thousands of objects, so AP would silently count only the best 100 copepods.
MAX_DETS: tuple[int, int, int] = (1, 100, 10000)
# COCO's object sizes in pixels² (area of the mask, or of the box for boxes), as COCOeval uses them
AREA_RANGES = {"small": [0, 32 ** 2], "medium": [32 ** 2, 96 ** 2], "large": [96 ** 2, None]}
FALSE_DETECTION = "false detection"  # confusion row: predictions matching no ground truth
MISSED = "missed"  # confusion column: ground-truth objects no prediction matched
INTERNAL_KEYS = ("records", "found_ids", "detections")  # per-object lists, not for eval.json


# ---------------------------------------------------------------- reading and aligning


@dataclass(frozen=True)
class Aligned:
    """Ground truth and predictions on the ground truth's frames and class names."""

    gt: dict  # the ground-truth COCO dataset
    images: list[dict]  # ground-truth frames, in file order
    gt_anns: dict[int, list[dict]]  # ground-truth image id -> its objects
    pred_anns: dict[int, list[dict]]  # ground-truth image id -> predictions, best score first
    gt_names: dict[int, str]  # ground-truth category id -> name
    pred_names: dict[int, str]  # prediction category id -> name
    classes: list[str]  # ground-truth classes by id, then classes only the predictions have
    plankton: frozenset[str]
    unmatched_pred_frames: int  # prediction frames whose file name the ground truth lacks
    unpredicted_gt_frames: int  # ground-truth frames the predictions do not list (none found there)


def _read(src: Source) -> dict | list:
    return json.loads(Path(src).read_text()) if isinstance(src, (str, Path)) else src


def _plankton_names(categories: list[dict]) -> set[str]:
    return {c["name"] for c in categories if not str(c.get("supercategory", "")).lower().startswith("non")}


class EvalError(ValueError):
    """Ground truth and predictions that cannot be scored together; the message says why."""


def align(gt: dict, pred: dict | list) -> Aligned:
    """Put predictions on ground-truth frame ids (by file name) and class names."""
    if isinstance(pred, list):  # a bare results list speaks the ground truth's ids
        pred = {"annotations": pred}
    if not isinstance(pred, dict) or "annotations" not in pred:
        raise EvalError("the predictions are not COCO (no 'annotations'): pass OUT/predictions.coco.json of a "
                        "`segplank infer` run, or a COCO results list")
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise EvalError("the ground truth is not a COCO dataset (no 'images' or 'annotations')")
    gt_cats = sorted(gt["categories"], key=lambda c: c["id"])
    pred_cats = sorted(pred.get("categories", gt_cats), key=lambda c: c["id"])
    gt_names = {c["id"]: c["name"] for c in gt_cats}
    known = set(gt_names.values())
    extra = [c for c in pred_cats if c["name"] not in known]
    classes = list(dict.fromkeys([c["name"] for c in gt_cats] + [c["name"] for c in extra]))
    gt_by_file = {Path(im["file_name"]).name: im["id"] for im in gt["images"]}
    to_gt = {im["id"]: gt_by_file.get(Path(im["file_name"]).name) for im in pred.get("images", gt["images"])}
    if to_gt and gt_by_file and all(v is None for v in to_gt.values()):
        first_pred = Path(next(iter(pred["images"]))["file_name"]).name
        raise EvalError(f"the predictions share no frame with the ground truth (e.g. {first_pred} vs "
                        f"{next(iter(gt_by_file))}): score a run of the ground truth's own cruise")
    unpredicted = len(set(gt_by_file.values()) - set(to_gt.values()))
    pred_anns: dict[int, list[dict]] = {}
    for a in pred["annotations"]:
        if (g := to_gt.get(a["image_id"])) is not None:
            pred_anns.setdefault(g, []).append(a)
    for anns in pred_anns.values():
        anns.sort(key=lambda a: -a.get("score", 1.0))
    gt_anns: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        gt_anns.setdefault(a["image_id"], []).append(a)
    return Aligned(gt, list(gt["images"]), gt_anns, pred_anns, gt_names, {c["id"]: c["name"] for c in pred_cats},
                   classes, frozenset(_plankton_names(gt_cats + extra)), sum(v is None for v in to_gt.values()),
                   unpredicted)


# ---------------------------------------------------------------- object-level matching


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


def _mask_ious(pred: list[dict], gt: list[dict], height: int, width: int) -> np.ndarray:
    """(P, G) mask IoU; pycocotools skips pairs whose boxes do not meet, so dense frames stay cheap."""
    if not pred or not gt:
        return np.zeros((len(pred), len(gt)))
    ious = mask_utils.iou([to_rle(a["segmentation"], height, width) for a in pred],
                          [to_rle(a["segmentation"], height, width) for a in gt], [0] * len(gt))
    return np.asarray(ious).reshape(len(pred), len(gt))


def _kept(al: Aligned, image_id: int, min_score: float | Mapping[str, float]) -> list[dict]:
    """The frame's predictions at or above the (global or per-class) score threshold."""
    anns = al.pred_anns.get(image_id, [])
    if isinstance(min_score, Mapping):
        return [a for a in anns if a.get("score", 1.0) >= min_score.get(al.pred_names[a["category_id"]], 0.0)]
    return [a for a in anns if a.get("score", 1.0) >= min_score]


def _match(al: Aligned, iou: float, min_score: float | Mapping[str, float]) -> tuple[list, list, list, list]:
    """Per prediction (class, score, matched ground-truth class or None); missed ground-truth
    classes; found ground-truth ids; per-frame counts."""
    detections: list[tuple[str, float, str | None]] = []
    missed: list[str] = []
    found_ids: list[int] = []
    per_frame: list[dict] = []
    for im in al.images:
        g = al.gt_anns.get(im["id"], [])
        p = _kept(al, im["id"], min_score)
        match = _greedy(_mask_ious(p, g, im["height"], im["width"]), iou)
        for i, a in enumerate(p):
            hit = g[match[i]] if i in match else None
            detections.append((al.pred_names[a["category_id"]], float(a.get("score", 1.0)),
                               None if hit is None else al.gt_names[hit["category_id"]]))
        matched = set(match.values())
        found_ids += [a["id"] for j, a in enumerate(g) if j in matched]
        missed += [al.gt_names[a["category_id"]] for j, a in enumerate(g) if j not in matched]
        per_frame.append({"file_name": im["file_name"], "gt": len(g), "pred": len(p), "matched": len(match)})
    return detections, missed, found_ids, per_frame


def confusion_counts(detections: Sequence[tuple[str, float, str | None]], missed: Sequence[str],
                     classes: Sequence[str]) -> np.ndarray:
    """(C+1, C+1) counts: rows ground-truth class + false detection, columns predicted class + missed."""
    idx = {c: k for k, c in enumerate(classes)}
    n = len(classes)
    m = np.zeros((n + 1, n + 1), np.int64)
    for p, _, g in detections:
        m[n if g is None else idx[g], idx[p]] += 1
    for g in missed:
        m[idx[g], n] += 1
    return m


def _ratio(a: int, b: int) -> float | None:
    """None where the figure is undefined (nothing to divide by), rather than a misleading 0."""
    return float(a / b) if b else None


def _scores(gt: int, pred: int, correct: int, detected: int) -> dict:
    return {"gt": gt, "pred": pred, "correct": correct, "recall": _ratio(correct, gt),
            "precision": _ratio(correct, pred), "f1": _ratio(2 * correct, gt + pred),
            "detected": detected, "detection_recall": _ratio(detected, gt)}


def _block(m: np.ndarray, idx: list[int]) -> dict:
    """Scores of a set of classes pooled: right when ground truth and prediction both fall in it."""
    n = m.shape[0] - 1
    gt, pred = int(m[idx, :].sum()), int(m[:, idx].sum())
    return _scores(gt, pred, int(m[np.ix_(idx, idx)].sum()), gt - int(m[idx, n].sum()))


def _harmonic(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _per_frame(n_frames: int, pl: dict, non: dict) -> dict:
    """Mean objects per ground-truth frame: how crowded frames are, and whether the model over- or under-segments."""
    n = max(1, n_frames)
    return {"frames": n_frames, "gt": (pl["gt"] + non["gt"]) / n, "pred": (pl["pred"] + non["pred"]) / n,
            "gt_plankton": pl["gt"] / n, "pred_plankton": pl["pred"] / n}


def _notes(al: Aligned, non: dict) -> list[str]:
    """What a reader must know before trusting the table."""
    notes = []
    if non["gt"] and not non["pred"]:
        notes.append("the predictions hold no non-plankton objects (infer drops them unless told to keep them): "
                     "non-plankton rows, and COCO AP over all classes, count those objects as missed")
    if al.unmatched_pred_frames:
        notes.append(f"{al.unmatched_pred_frames} prediction frames have no ground-truth frame of that name (ignored)")
    if al.unpredicted_gt_frames:
        notes.append(f"{al.unpredicted_gt_frames} ground-truth frames are not in the predictions (nothing found there)")
    return notes


def _summarise(al: Aligned, iou: float, min_score: float | Mapping[str, float]) -> dict:
    detections, missed, found_ids, per_frame = _match(al, iou, min_score)
    classes, plankton = al.classes, al.plankton
    m = confusion_counts(detections, missed, classes)
    per_class = {c: _block(m, [k]) for k, c in enumerate(classes)}
    pl = _block(m, [k for k, c in enumerate(classes) if c in plankton])
    non = _block(m, [k for k, c in enumerate(classes) if c not in plankton])
    n_frames = len(per_frame)
    rec, prec = pl["detected"] / max(1, pl["gt"]), pl["correct"] / max(1, pl["pred"])
    with_gt = sorted(c for c in classes if per_class[c]["gt"])
    return {
        # the figures this module has always returned (bench, demo and old JSON rely on them)
        "plankton_recall": rec, "plankton_precision": prec, "plankton_f1": _harmonic(prec, rec),
        "gt_plankton": pl["gt"], "pred_plankton": pl["pred"],
        "recall_per_class": {c: per_class[c]["detection_recall"] for c in with_gt},
        "gt_per_class": {c: per_class[c]["gt"] for c in with_gt},
        "found_ids": found_ids,
        "records": [(p, s, g is not None and (g in plankton or p not in plankton)) for p, s, g in detections],
        # added
        "iou": iou, "min_score": dict(min_score) if isinstance(min_score, Mapping) else min_score,
        "classes": list(classes), "plankton_classes": [c for c in classes if c in plankton],
        "per_class": per_class, "plankton": pl, "non_plankton": non,
        "segments_per_frame": _per_frame(n_frames, pl, non),
        "confusion": {"rows": [*classes, FALSE_DETECTION], "columns": [*classes, MISSED], "counts": m.tolist()},
        "per_frame": per_frame, "unmatched_pred_frames": al.unmatched_pred_frames,
        "unpredicted_gt_frames": al.unpredicted_gt_frames, "notes": _notes(al, non),
        "detections": detections,
    }


def object_match(gt_path: Source, pred_path: Source, iou: float = 0.5,
                 min_score: float | Mapping[str, float] = 0.0) -> dict:
    """Object-level figures at mask IoU ≥ ``iou`` from one class-agnostic greedy match per frame.

    ``min_score`` drops predictions below it (a mapping gives per-class thresholds, as
    ``infer`` applies them). Keys:

    - ``plankton_recall``: share of plankton objects matched by any prediction (organisms
      found); ``plankton_precision``: share of predictions of plankton classes matching a
      plankton object (class-agnostic within plankton); ``plankton_f1`` their harmonic mean.
    - ``per_class[c]``, ``plankton``, ``non_plankton``: ``gt``, ``pred``, ``correct``
      (matched pairs with both sides in the class or group), ``recall``/``precision``/``f1``
      on ``correct`` (class-aware), ``detected``/``detection_recall`` (matched by any
      prediction). None marks a ratio with nothing to divide by. ``plankton.precision``
      equals ``plankton_precision``, ``plankton.detection_recall`` equals ``plankton_recall``.
    - ``recall_per_class``: ``per_class[c].detection_recall`` for classes with ground truth.
    - ``confusion``: counts of ground-truth class (rows, plus ``false detection``) against
      predicted class (columns, plus ``missed``).
    - ``segments_per_frame``: mean objects per ground-truth frame, predicted and true.
    - ``records``: (class, score, right) per prediction for ``choose_thresholds``;
      ``detections``: (class, score, matched ground-truth class or None) per prediction.
    """
    return _summarise(align(_read(gt_path), _read(pred_path)), iou, min_score)


def pr_curves(detections: Sequence[tuple[str, float, str | None]], gt_counts: Mapping[str, int]) -> dict[str, dict]:
    """Per class with ground truth and predictions: precision and recall as its score threshold falls.

    A prediction of class c is right when the match paired it with a ground-truth object of
    class c; with greedy matching in score order, each point is what thresholding at that
    score would give, and the last point is the table's recall and precision.
    """
    out: dict[str, dict] = {}
    for name, n_gt in gt_counts.items():
        rows = sorted(((s, g == name) for p, s, g in detections if p == name), key=lambda r: -r[0])
        if not n_gt or not rows:
            continue
        right = np.cumsum([ok for _, ok in rows])
        out[name] = {"score": np.array([s for s, _ in rows]), "precision": right / np.arange(1, len(rows) + 1),
                     "recall": right / n_gt}
    return out


def choose_thresholds(records: list[tuple[str, float, bool]], target_precision: float,
                      floor: float = 0.05) -> dict[str, float]:
    """Per class, the lowest score threshold whose kept predictions reach ``target_precision``.

    A prediction is right when it matches an organism (plankton classes) or any object
    (non-plankton classes). A class that never reaches the target gets the threshold of its
    most precise score band, so it still keeps what it does best; classes without
    predictions are left out (the config's default applies). Scores are read back rounded
    (``SCORE_DECIMALS``), so the threshold sits half a rounding step under the last score
    kept: equal to it, it dropped that prediction at inference (one organism per class on the
    calibration cruise).
    """
    out: dict[str, float] = {}
    for name in sorted({r[0] for r in records}):
        rows = sorted(((s, ok) for n, s, ok in records if n == name), key=lambda r: -r[0])
        scores = np.array([r[0] for r in rows])
        right = np.cumsum([r[1] for r in rows])
        precision = right / np.arange(1, len(rows) + 1)
        ok = np.flatnonzero(precision >= target_precision)
        k = ok[-1] if len(ok) else int(np.argmax(precision))
        out[name] = float(max(floor, scores[k] - 0.5 * 10.0 ** -SCORE_DECIMALS))
    return out


# ---------------------------------------------------------------- COCOeval


def stat_names(max_dets: Sequence[int] = MAX_DETS) -> list[str]:
    """Names of COCOeval's 12 summary figures; the AR@k names follow ``max_dets``."""
    return ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
            *(f"AR_{k}" for k in max_dets), "AR_small", "AR_medium", "AR_large"]


def _coco_gt(gt: dict):
    """The ground truth as a pycocotools ``COCO``, with ``iscrowd``/``area``/``bbox`` filled where missing."""
    from pycocotools.coco import COCO

    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    anns = []
    for a in gt["annotations"]:
        a = dict(a)
        a.setdefault("iscrowd", 0)
        if "area" not in a or "bbox" not in a:
            rle = to_rle(a["segmentation"], *size[a["image_id"]])
            a.setdefault("area", float(mask_utils.area(rle)))
            a.setdefault("bbox", mask_utils.toBbox(rle).tolist())
        anns.append(a)
    coco = COCO()
    coco.dataset = {**gt, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_results(al: Aligned) -> tuple[list[dict], int]:
    """Predictions as a COCO results list on ground-truth ids; those of classes the ground truth
    lacks are dropped (COCOeval would ignore them) and counted."""
    cat_id = {n: i for i, n in al.gt_names.items()}
    size = {im["id"]: (im["height"], im["width"]) for im in al.images}
    out, dropped = [], 0
    for image_id, anns in al.pred_anns.items():
        for a in anns:
            name = al.pred_names[a["category_id"]]
            if name not in cat_id:
                dropped += 1
                continue
            rle = to_rle(a["segmentation"], *size[image_id]) if "segmentation" in a else None
            box = a.get("bbox") or (mask_utils.toBbox(rle).tolist() if rle is not None else None)
            out.append({"image_id": image_id, "category_id": cat_id[name], "score": float(a.get("score", 1.0)),
                        "bbox": box, "segmentation": rle})
    return out, dropped


class FastCOCOeval(COCOeval):
    """``COCOeval`` whose per-frame matching visits only the pairs that can match.

    pycocotools' ``evaluateImg`` loops over every (threshold, detection, ground truth) in
    Python: a frame with 1,000 marine-snow particles takes 10 s per iou type. Here each
    detection walks only the ground truths with IoU ≥ the lowest threshold, in the same order;
    the skipped ones can neither match nor change where the loop stops (ignored ground truths
    come last), so the results are identical (a test compares them).
    """
    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802, N803 (pycocotools' names)
        p = self.params
        gt = self._gts[imgId, catId] if p.useCats else [g for c in p.catIds for g in self._gts[imgId, c]]
        dt = self._dts[imgId, catId] if p.useCats else [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return None
        for g in gt:
            g["_ignore"] = int(bool(g["ignore"] or g["area"] < aRng[0] or g["area"] > aRng[1]))
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")[:maxDet]]
        ious = self.ious[imgId, catId]
        ious = ious[:, gtind] if len(ious) else ious
        gtIg = np.array([g["_ignore"] for g in gt])  # noqa: N806
        gtm, dtm, dtIg = _match_coco(ious, p.iouThrs, gt, dt, gtIg)  # noqa: N806
        outside = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt]).reshape((1, len(dt)))
        dtIg = np.logical_or(dtIg, np.logical_and(dtm == 0, np.repeat(outside, len(p.iouThrs), 0)))  # noqa: N806
        return {"image_id": imgId, "category_id": catId, "aRng": aRng, "maxDet": maxDet,
                "dtIds": [d["id"] for d in dt], "gtIds": [g["id"] for g in gt], "dtMatches": dtm,
                "gtMatches": gtm, "dtScores": [d["score"] for d in dt], "gtIgnore": gtIg, "dtIgnore": dtIg}


def _match_coco(ious, thresholds: np.ndarray, gt: list[dict], dt: list[dict],
                gt_ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval's greedy match per IoU threshold over candidate pairs only: (T, G) and (T, D)
    matched ids, (T, D) ignore flags, as ``evaluateImg`` fills them."""
    T, G, D = len(thresholds), len(gt), len(dt)  # noqa: N806
    gtm, dtm, dt_ig = np.zeros((T, G)), np.zeros((T, D)), np.zeros((T, D))
    if len(ious) == 0:
        return gtm, dtm, dt_ig
    iscrowd = [int(g["iscrowd"]) for g in gt]
    thr = np.minimum(thresholds, 1 - 1e-10)
    candidates = [np.flatnonzero(row >= thr.min()).tolist() for row in np.asarray(ious)]
    for tind, t in enumerate(thr):
        for dind, d in enumerate(dt):
            best, m = t, -1
            for gind in candidates[dind]:
                if gtm[tind, gind] > 0 and not iscrowd[gind]:
                    continue
                if m > -1 and gt_ignore[m] == 0 and gt_ignore[gind] == 1:
                    break
                if ious[dind, gind] < best:
                    continue
                best, m = ious[dind, gind], gind
            if m > -1:
                dt_ig[tind, dind] = gt_ignore[m]
                dtm[tind, dind] = gt[m]["id"]
                gtm[tind, m] = d["id"]
    return gtm, dtm, dt_ig


def _run_cocoeval(coco_gt, results: list[dict], iou_type: IouType, max_dets: Sequence[int]):
    """Evaluate and accumulate (quietly). For masks the box is dropped, so a detection's area is
    its mask area (detectron2 does the same); pycocotools would otherwise size it by its box."""
    from pycocotools.coco import COCO

    keep = "bbox" if iou_type == "bbox" else "segmentation"
    dets = [{k: v for k, v in r.items() if k not in ("bbox", "segmentation")} | {keep: r[keep]}
            for r in results if r[keep] is not None]
    with contextlib.redirect_stdout(io.StringIO()):
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = FastCOCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean(ev, ap: bool, iou_thr: float | None = None, area: str = "all", max_det: int | None = None,
          k: int | list[int] | slice = slice(None)) -> float:
    """COCOeval's ``_summarize``: mean over cells > -1, -1 if none."""
    p = ev.params
    s = ev.eval["precision" if ap else "recall"]
    if iou_thr is not None:
        s = s[np.flatnonzero(np.isclose(p.iouThrs, iou_thr))]
    a, m = p.areaRngLbl.index(area), list(p.maxDets).index(p.maxDets[-1] if max_det is None else max_det)
    s = s[:, :, k, a, m] if ap else s[:, k, a, m]
    s = s[s > -1]
    return float(s.mean()) if s.size else -1.0


def coco_stats(ev) -> list[float]:
    """COCOeval's 12 summary figures, except that AP over IoU 0.50:0.95 uses the largest maxDets.

    pycocotools' ``summarize`` hard-codes maxDets=100 for that one figure (and returns -1
    when 100 is not in maxDets); every other figure already uses the params.
    """
    md = ev.params.maxDets
    return [_mean(ev, True), _mean(ev, True, .5), _mean(ev, True, .75),
            *(_mean(ev, True, area=a) for a in ("small", "medium", "large")),
            *(_mean(ev, False, max_det=m) for m in md),
            *(_mean(ev, False, area=a) for a in ("small", "medium", "large"))]


def _none(x: float) -> float | None:
    return None if x == -1 else x


def _coco_block(ev, al: Aligned, max_dets: Sequence[int]) -> dict:
    out: dict[str, Any] = {n: _none(v) for n, v in zip(stat_names(max_dets), coco_stats(ev))}
    out["per_class"] = {al.gt_names[c]: {"AP": _none(_mean(ev, True, k=k)), "AP50": _none(_mean(ev, True, .5, k=k))}
                        for k, c in enumerate(ev.params.catIds)}
    plankton = [k for k, c in enumerate(ev.params.catIds) if al.gt_names[c] in al.plankton]
    out["AP_plankton"] = _none(_mean(ev, True, k=plankton)) if plankton else None  # mean over plankton classes
    out["AP50_plankton"] = _none(_mean(ev, True, .5, k=plankton)) if plankton else None
    return out


def _coco_metrics(al: Aligned, iou_types: Sequence[IouType], max_dets: Sequence[int]) -> dict:
    coco_gt = _coco_gt(al.gt)
    results, dropped = _coco_results(al)
    out: dict[str, Any] = {"max_dets": list(max_dets), "area_ranges": AREA_RANGES, "dropped_predictions": dropped}
    for t in iou_types:
        out[t] = _coco_block(_run_cocoeval(coco_gt, results, t, max_dets), al, max_dets)
    return out


def coco_metrics(gt_path: Source, pred_path: Source, iou_types: Sequence[IouType] = ("bbox", "segm"),
                 max_dets: Sequence[int] = MAX_DETS) -> dict:
    """pycocotools COCOeval on the same files as ``object_match``: per iou type the 12 summary
    figures (``stat_names``; None where COCO gives -1, i.e. no objects in that size range) and
    per-class AP/AP50. ``max_dets`` is per frame and class: keep the last one above the densest
    frame's count (COCO's default 100 would cut plankton frames short).

    Predictions of classes the ground truth lacks are dropped (``dropped_predictions``).
    """
    return _coco_metrics(align(_read(gt_path), _read(pred_path)), iou_types, max_dets)


# ---------------------------------------------------------------- everything at once


def to_json(result: dict) -> dict:
    """The result without per-object lists, as plain JSON types."""
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in INTERNAL_KEYS}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        return x
    return clean(result)


def evaluate(gt_path: Source, pred_path: Source, out_dir: Path | None = None, iou: float = 0.5, *,
             min_score: float | Mapping[str, float] = 0.0, target_precision: float | None = None,
             iou_types: Sequence[IouType] = ("bbox", "segm"), max_dets: Sequence[int] = MAX_DETS) -> dict:
    """Object-level figures (``objects``, see ``object_match``), COCOeval (``coco``, see
    ``coco_metrics``; it ranks every prediction, ``min_score`` applies to the object level
    only) and, with ``target_precision``, per-class ``thresholds`` plus the object-level
    figures they would give (``at_thresholds``, every class kept). With ``out_dir``: eval.json
    (``to_json``), confusion.csv, confusion.png, pr_curves.png; their paths under ``files``.
    The files are read once for all of it.
    """
    al = align(_read(gt_path), _read(pred_path))
    result: dict[str, Any] = {
        "ground_truth": str(gt_path) if isinstance(gt_path, (str, Path)) else None,
        "predictions": str(pred_path) if isinstance(pred_path, (str, Path)) else None,
        "iou": iou, "objects": _summarise(al, iou, min_score),
    }
    if iou_types:
        result["coco"] = _coco_metrics(al, iou_types, max_dets)
    if target_precision is not None:
        thresholds = choose_thresholds(result["objects"]["records"], target_precision)
        result |= {"target_precision": target_precision, "thresholds": thresholds,
                   "at_thresholds": _summarise(al, iou, thresholds)}
    if out_dir is not None:
        from .eval_report import write_report

        result["files"] = {k: str(v) for k, v in write_report(result, Path(out_dir)).items()}
    return result


__all__ = ["MAX_DETS", "AREA_RANGES", "FALSE_DETECTION", "MISSED", "Aligned", "align", "object_match",
           "confusion_counts", "pr_curves", "choose_thresholds", "FastCOCOeval", "stat_names", "coco_stats",
           "coco_metrics", "to_json", "evaluate"]
