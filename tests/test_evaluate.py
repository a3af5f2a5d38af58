"""Evaluation on hand-drawn frames with answers worked out by hand.

Three 64×64 frames. Ground truth: copepod (id 1), medusa (id 2), detritus (id 3, non-plankton).
Predictions use other ids for frames (by file name) and classes (by name).

frame a: A1 copepod, A2 copepod, A3 medusa (disc), A4 detritus
         predicted: copepod on A1 (0.9), copepod on A3 (0.8), detritus on A4 (0.7),
         detritus on A2 (0.65), a copepod on nothing (0.6), a second copepod on A1 (0.5)
frame b: B1 copepod, B2 detritus (40×30: the one medium object)
         predicted: copepod half off B1 (0.95, IoU 1/3), medusa on B2 (0.4)
frame c: empty; predicted: detritus on nothing (0.3)
frame z: predictions only (not in the ground truth, ignored)
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segplank.evaluate import (MAX_DETS, choose_thresholds, coco_metrics, coco_stats, evaluate, object_match,
                               pr_curves, stat_names)

S = 64
GT_CATS = [{"id": 1, "name": "copepod", "supercategory": "plankton"},
           {"id": 2, "name": "medusa", "supercategory": "plankton"},
           {"id": 3, "name": "detritus", "supercategory": "non-plankton"}]
PRED_CATS = [{"id": 7, "name": "detritus", "supercategory": "non-plankton"},
             {"id": 5, "name": "copepod", "supercategory": "plankton"},
             {"id": 9, "name": "medusa", "supercategory": "plankton"}]
GT_IMG = {"a.png": 1, "b.png": 2, "c.png": 3}
PRED_IMG = {"c.png": 10, "a.png": 11, "b.png": 12, "z.png": 13}
CAT_TO_GT = {7: 3, 5: 1, 9: 2}
IMG_TO_GT = {10: 3, 11: 1, 12: 2}


def rect(x0: int, y0: int, x1: int, y1: int, size: int = S) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def disc(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def ann(k: int, image_id: int, cat: int, mask: np.ndarray, score: float | None = None) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    a = {"id": k, "image_id": image_id, "category_id": cat,
         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
         "area": float(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
    if score is not None:
        a["score"] = score
    return a


def images(ids: dict[str, int], prefix: str = "", size: int = S) -> list[dict]:
    return [{"id": i, "file_name": prefix + n, "width": size, "height": size} for n, i in ids.items()]


A1, A2, A3, A4 = rect(2, 2, 12, 12), rect(20, 2, 30, 10), disc(45, 15, 7), rect(2, 40, 14, 52)
B1, B2 = rect(10, 10, 20, 20), rect(10, 30, 50, 60)


def gt_dataset() -> dict:
    a, b = GT_IMG["a.png"], GT_IMG["b.png"]
    anns = [ann(1, a, 1, A1), ann(2, a, 1, A2), ann(3, a, 2, A3), ann(4, a, 3, A4), ann(5, b, 1, B1), ann(6, b, 3, B2)]
    return {"images": images(GT_IMG), "categories": GT_CATS, "annotations": anns}


def pred_dataset() -> dict:
    a, b, c, z = (PRED_IMG[n] for n in ("a.png", "b.png", "c.png", "z.png"))
    cop, med, det = 5, 9, 7
    anns = [ann(1, a, cop, A1, 0.9), ann(2, a, cop, A3, 0.8), ann(3, a, det, A4, 0.7), ann(4, a, det, A2, 0.65),
            ann(5, a, cop, rect(50, 50, 58, 58), 0.6), ann(6, a, cop, rect(3, 2, 13, 12), 0.5),
            ann(7, b, cop, rect(15, 10, 25, 20), 0.95), ann(8, b, med, B2, 0.4),
            ann(9, c, det, rect(30, 30, 36, 36), 0.3), ann(10, z, cop, A1, 0.99)]
    return {"images": images(PRED_IMG, "frames/"), "categories": PRED_CATS, "annotations": anns}


@pytest.fixture()
def files(tmp_path):
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.coco.json"
    gt.write_text(json.dumps(gt_dataset()))
    pred.write_text(json.dumps(pred_dataset()))
    return gt, pred


# ---------------------------------------------------------------- object level


def test_object_match_per_class_and_groups(files):
    r = object_match(*files)
    pc = r["per_class"]
    assert [pc["copepod"][k] for k in ("gt", "pred", "correct", "detected")] == [3, 5, 1, 2]
    assert pc["copepod"]["recall"] == pytest.approx(1 / 3) and pc["copepod"]["precision"] == pytest.approx(1 / 5)
    assert pc["copepod"]["f1"] == pytest.approx(0.25)
    assert [pc["medusa"][k] for k in ("recall", "precision", "f1", "detection_recall")] == [0, 0, 0, 1]
    assert (pc["detritus"]["recall"], pc["detritus"]["detection_recall"]) == (0.5, 1.0)
    assert pc["detritus"]["precision"] == pytest.approx(1 / 3) and pc["detritus"]["f1"] == pytest.approx(0.4)
    # plankton: 4 organisms, 3 found by some prediction, 2 named plankton; 6 kept as plankton, 2 on organisms
    assert r["plankton_recall"] == 0.75 and r["plankton_precision"] == pytest.approx(1 / 3)
    assert r["plankton_f1"] == pytest.approx(6 / 13)
    assert (r["gt_plankton"], r["pred_plankton"]) == (4, 6)
    pl = r["plankton"]
    assert (pl["gt"], pl["pred"], pl["correct"], pl["detected"]) == (4, 6, 2, 3)
    assert pl["recall"] == 0.5 and pl["f1"] == pytest.approx(0.4) and pl["detection_recall"] == r["plankton_recall"]
    assert pl["precision"] == r["plankton_precision"]
    non = r["non_plankton"]
    assert (non["gt"], non["pred"], non["correct"], non["detected"]) == (2, 3, 1, 2)
    assert non["recall"] == 0.5 and non["precision"] == pytest.approx(1 / 3)
    # the keys this function has always had
    assert r["recall_per_class"] == {"copepod": pytest.approx(2 / 3), "detritus": 1.0, "medusa": 1.0}
    assert r["gt_per_class"] == {"copepod": 3, "detritus": 2, "medusa": 1}
    assert sorted(r["found_ids"]) == [1, 2, 3, 4, 6]
    assert sorted(r["records"], key=lambda x: -x[1]) == [
        ("copepod", 0.95, False), ("copepod", 0.9, True), ("copepod", 0.8, True), ("detritus", 0.7, True),
        ("detritus", 0.65, True), ("copepod", 0.6, False), ("copepod", 0.5, False), ("medusa", 0.4, False),
        ("detritus", 0.3, False)]
    assert r["unmatched_pred_frames"] == 1 and r["unpredicted_gt_frames"] == 0
    assert r["notes"] == ["1 prediction frames have no ground-truth frame of that name (ignored)"]


def test_notes_when_predictions_lack_non_plankton_or_frames(tmp_path, files):
    gt, _ = files
    pred = pred_dataset()
    pred["annotations"] = [a for a in pred["annotations"] if a["category_id"] != 7]  # as infer writes by default
    pred["images"] = [im for im in pred["images"] if im["file_name"] != "frames/c.png"]
    r = object_match(gt, pred)
    assert r["unpredicted_gt_frames"] == 1 and len(r["notes"]) == 3 and "non-plankton" in r["notes"][0]
    assert r["non_plankton"]["pred"] == 0 and r["non_plankton"]["precision"] is None


def test_confusion_and_segments_per_frame(files):
    r = object_match(*files)
    c = r["confusion"]
    assert c["rows"] == ["copepod", "medusa", "detritus", "false detection"]
    assert c["columns"] == ["copepod", "medusa", "detritus", "missed"]
    assert c["counts"] == [[1, 0, 1, 1],
                           [1, 0, 0, 0],
                           [0, 1, 1, 0],
                           [3, 0, 1, 0]]
    spf = r["segments_per_frame"]
    assert spf == {"frames": 3, "gt": 2.0, "pred": 3.0, "gt_plankton": pytest.approx(4 / 3), "pred_plankton": 2.0}
    assert [(f["gt"], f["pred"], f["matched"]) for f in r["per_frame"]] == [(4, 6, 4), (2, 2, 1), (0, 1, 0)]


def test_iou_and_per_class_thresholds(files):
    loose = object_match(*files, iou=0.3)  # the half-off copepod on B1 (IoU 1/3) now counts
    assert loose["confusion"]["counts"][0] == [2, 0, 1, 0] and loose["confusion"]["counts"][3] == [2, 0, 1, 0]
    kept = object_match(*files, min_score={"copepod": 0.85})  # other classes: every score
    assert kept["per_class"]["copepod"]["pred"] == 2 and kept["per_class"]["detritus"]["pred"] == 3
    assert kept["confusion"]["counts"][1] == [0, 0, 0, 1]  # the medusa is missed now
    kept = object_match(*files, min_score=0.62)  # 0.95, 0.9, 0.8, 0.7, 0.65
    assert kept["segments_per_frame"]["pred"] == pytest.approx(5 / 3)


def test_pr_curves_end_at_the_table(files):
    r = object_match(*files)
    curves = pr_curves(r["detections"], {c: v["gt"] for c, v in r["per_class"].items()})
    np.testing.assert_allclose(curves["copepod"]["precision"], [0, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    np.testing.assert_allclose(curves["copepod"]["recall"], [0, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(curves["detritus"]["precision"], [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(curves["medusa"]["recall"], [0])
    for name, c in curves.items():
        assert c["precision"][-1] == pytest.approx(r["per_class"][name]["precision"])
        assert c["recall"][-1] == pytest.approx(r["per_class"][name]["recall"])


def test_ground_truth_against_itself_and_no_predictions(tmp_path, files):
    gt, _ = files
    r = object_match(gt, gt)
    assert r["plankton_recall"] == r["plankton_precision"] == r["plankton_f1"] == 1.0
    assert all(v["recall"] == v["precision"] == 1.0 for v in r["per_class"].values())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**pred_dataset(), "annotations": []}))
    r = object_match(gt, empty)
    assert r["plankton_recall"] == 0 and r["plankton_precision"] == 0 and r["per_class"]["copepod"]["precision"] is None
    assert r["confusion"]["counts"][0] == [0, 0, 0, 3]
    m = coco_metrics(gt, empty)
    assert m["segm"]["AP"] == 0.0 and m["segm"]["AP_large"] is None


def test_choose_thresholds_on_match_records(files):
    thr = choose_thresholds(object_match(*files)["records"], 0.99)
    assert thr == pytest.approx({"copepod": 0.8, "detritus": 0.65, "medusa": 0.4}, abs=1e-5)


# ---------------------------------------------------------------- COCOeval


def direct_cocoeval(gt_file, results, iou_type: str, max_dets=MAX_DETS) -> COCOeval:
    """pycocotools as its README runs it, with our maxDets."""
    coco_gt = COCO(str(gt_file))
    ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _no_minus_one(stats) -> list:
    return [None if s == -1 else pytest.approx(float(s), abs=1e-12) for s in stats]


def _results_file(tmp_path, iou_type: str, anns: list[dict]) -> str:
    """The results list as a file; for masks without boxes, so a detection's area is its mask area."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    path = tmp_path / f"results_{iou_type}.json"
    path.write_text(json.dumps([{k: v for k, v in a.items() if k not in (drop, "id", "area")} for a in anns]))
    return str(path)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_metrics_match_direct_cocoeval(tmp_path, files, iou_type):
    gt, pred = files
    # the direct run gets the predictions on ground-truth ids, mapped by hand
    anns = [a | {"image_id": IMG_TO_GT[a["image_id"]], "category_id": CAT_TO_GT[a["category_id"]]}
            for a in pred_dataset()["annotations"] if a["image_id"] in IMG_TO_GT]
    ev = direct_cocoeval(gt, _results_file(tmp_path, iou_type, anns), iou_type)
    m = coco_metrics(gt, pred, iou_types=(iou_type,))
    assert [m[iou_type][n] for n in stat_names()] == _no_minus_one(ev.stats)
    assert m["max_dets"] == list(MAX_DETS) and m["dropped_predictions"] == 0
    assert m[iou_type]["AP_medium"] is not None and m[iou_type]["AP_large"] is None
    per = m[iou_type]["per_class"]
    assert m[iou_type]["AP_plankton"] == pytest.approx((per["copepod"]["AP"] + per["medusa"]["AP"]) / 2)
    # per class: COCO's precision array, class by class
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        assert m[iou_type]["per_class"][GT_CATS[cat - 1]["name"]]["AP"] == pytest.approx(p[p > -1].mean())


def test_coco_metrics_bare_results_list(tmp_path, files):
    gt, _ = files
    anns = [a | {"image_id": IMG_TO_GT[a["image_id"]], "category_id": CAT_TO_GT[a["category_id"]]}
            for a in pred_dataset()["annotations"] if a["image_id"] in IMG_TO_GT]
    bare = tmp_path / "results.json"
    bare.write_text(json.dumps([{k: v for k, v in a.items() if k not in ("id", "area")} for a in anns]))
    m = coco_metrics(gt, bare)
    assert [m["bbox"][n] for n in stat_names()] == _no_minus_one(direct_cocoeval(gt, str(bare), "bbox").stats)
    ev = direct_cocoeval(gt, _results_file(tmp_path, "segm", anns), "segm")
    assert [m["segm"][n] for n in stat_names()] == _no_minus_one(ev.stats)
    assert object_match(gt, bare)["confusion"] == object_match(*files)["confusion"]


def test_ap_counts_every_detection_of_a_dense_frame(tmp_path):
    """150 copepods in one frame: pycocotools' summarize takes AP at 100 detections; ours at maxDets[-1]."""
    size = 128
    masks = [rect(x, y, x + 3, y + 3, size) for y in range(0, 50, 5) for x in range(0, 75, 5)]
    gt = {"images": images({"d.png": 1}, size=size), "categories": GT_CATS,
          "annotations": [ann(k + 1, 1, 1, m) for k, m in enumerate(masks)]}
    preds = [ann(k + 1, 1, 1, m, 0.5 + k / 1000) for k, m in enumerate(masks)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    m = coco_metrics(tmp_path / "gt.json", preds, iou_types=("segm",))
    ev = direct_cocoeval(tmp_path / "gt.json", _results_file(tmp_path, "segm", preds), "segm")
    assert m["segm"]["AP"] == pytest.approx(1.0) and ev.stats[0] < 0.7  # summarize's hard-coded 100
    assert m["segm"]["AP50"] == pytest.approx(ev.stats[1]) == pytest.approx(1.0)
    assert coco_stats(ev)[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- evaluate and its files


def test_evaluate_writes_report(tmp_path, files):
    from PIL import Image

    from segplank.eval_report import coco_table, format_table

    out = tmp_path / "report"
    r = evaluate(*files, out_dir=out, target_precision=0.99)
    for name in ("eval.json", "confusion.csv", "confusion.png", "pr_curves.png"):
        assert (out / name).is_file()
    for name in ("confusion.png", "pr_curves.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    saved = json.loads((out / "eval.json").read_text())
    assert set(saved) >= {"objects", "coco", "thresholds", "at_thresholds", "iou"}
    assert "records" not in saved["objects"] and "detections" not in saved["objects"]
    assert saved["objects"]["plankton_precision"] == pytest.approx(1 / 3)
    assert saved["thresholds"] == pytest.approx({"copepod": 0.8, "detritus": 0.65, "medusa": 0.4}, abs=1e-5)
    assert saved["coco"]["segm"]["AP50"] == r["coco"]["segm"]["AP50"]
    # at those thresholds every prediction of frame c and the low copepods of frame a go
    assert saved["at_thresholds"]["per_class"]["copepod"]["pred"] == 3
    assert saved["at_thresholds"]["segments_per_frame"]["pred"] == pytest.approx(6 / 3)
    with open(out / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ground truth \\ predicted", "copepod", "medusa", "detritus", "missed"]
    assert rows[4] == ["false detection", "3", "0", "1", "0"]
    assert format_table(r).row_count == 5 and coco_table(r).row_count == 14


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_fast_cocoeval_equals_pycocotools(tmp_path, iou_type):
    """Overlapping objects of every size, crowd regions and duplicates: every per-frame match identical."""
    from segplank.evaluate import FastCOCOeval

    rng = np.random.default_rng(7)
    size, anns, preds = 256, [], []
    for k in range(80):
        w, h = (rng.integers(4, 30, 2) if k % 10 else rng.integers(60, 140, 2))
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        cat = int(rng.integers(1, 3))
        anns.append(ann(k + 1, 1, cat, rect(x, y, x + w, y + h, size)) | {"iscrowd": int(k % 17 == 0)})
        for _ in range(int(rng.integers(0, 3))):  # jittered copies, some with the other class
            dx, dy = rng.integers(-4, 5, 2)
            m = rect(max(0, x + dx), max(0, y + dy), x + dx + w, y + dy + h, size)
            preds.append(ann(0, 1, cat if rng.random() < 0.8 else 3 - cat, m, float(rng.random())))
    gt = {"images": images({"r.png": 1}, size=size), "categories": GT_CATS[:2], "annotations": anns}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    path = _results_file(tmp_path, iou_type, preds)
    stock = direct_cocoeval(tmp_path / "gt.json", path, iou_type)
    coco_gt = COCO(str(tmp_path / "gt.json"))
    fast = FastCOCOeval(coco_gt, coco_gt.loadRes(path), iou_type)
    fast.params.maxDets = list(MAX_DETS)
    fast.evaluate()
    fast.accumulate()
    for a, b in zip(stock.evalImgs, fast.evalImgs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            for key in ("dtIds", "gtIds", "dtMatches", "gtMatches", "dtIgnore", "gtIgnore", "dtScores"):
                np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(stock.eval["precision"], fast.eval["precision"])
    assert stock.stats[1] > 0.3  # the data do match


def test_predictions_of_another_cruise_or_not_coco_are_refused(tmp_path):
    from typer.testing import CliRunner

    from segplank.cli import app

    cats = [{"id": 1, "name": "copepod", "supercategory": "plankton"}]
    gt = {"images": [{"id": 1, "file_name": "frames/a.png", "width": 10, "height": 10}], "annotations": [],
          "categories": cats}
    other = {"images": [{"id": 1, "file_name": "frames/b.png", "width": 10, "height": 10}], "annotations": [],
             "categories": cats}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "bad.json").write_text(json.dumps({"objects": []}))
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "gt.json"), str(tmp_path / "other.json"), "--no-coco"])
    assert r.exit_code == 2 and "share no frame" in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "gt.json"), str(tmp_path / "bad.json"), "--no-coco"])
    assert r.exit_code == 2 and "not COCO" in " ".join(r.output.split()), r.output
