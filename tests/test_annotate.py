"""The annotation loop: predictions -> editable COCO polygons -> a scripted correction -> one training step."""
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segplank.annotate import (clip_to_window, export_for_annotation, image_stem, image_uncertainty, mask_polygons,
                               tile_windows)
from segplank.config import TrainConfig
from segplank.model.checkpoint import load_checkpoint
from segplank.runs import read_objects, rewrite_shards
from segplank.train import load_coco_frames, train

from .conftest import TINY

TRAIN = TrainConfig(model=TINY, chip_size=128, batch_size=1, iterations=1, warmup_iters=0, val_every=1, threads=1)


@pytest.fixture(scope="module")
def run(kept_run):
    return kept_run


def _parquet_masks(run) -> dict[str, tuple[int, int, np.ndarray]]:
    """object_id -> (x0, y0, box mask) from the run's table."""
    t = read_objects(run)
    return {o: (int(x), int(y), mask_utils.decode({"size": [int(h), int(w)], "counts": c.encode()}).astype(bool))
            for o, x, y, w, h, c in zip(t.object_id, t.bbox_x, t.bbox_y, t.bbox_w, t.bbox_h, t.mask_rle)}


def _paste(x0: int, y0: int, bitmap: np.ndarray, h: int, w: int) -> np.ndarray:
    full = np.zeros((h, w), bool)
    full[y0:y0 + bitmap.shape[0], x0:x0 + bitmap.shape[1]] = bitmap
    return full


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def test_export_is_valid_coco_and_polygons_give_the_masks_back(run, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="segplank"):
        path = export_for_annotation(run, tmp_path / "ann")
    assert "non-plankton" not in caplog.text  # the run kept them
    coco = COCO(str(path))
    doc = json.loads(path.read_text())
    man = json.loads((run / "manifest.json").read_text())
    assert [c["name"] for c in doc["categories"]] == [c["name"] for c in man["model"]["classes"]]
    assert {c["supercategory"] for c in doc["categories"]} == {"plankton", "non-plankton"}
    masks = _parquet_masks(run)
    assert len(doc["annotations"]) == len(masks) and [im["id"] for im in doc["images"]] == [1, 2, 3]
    for im in doc["images"]:
        png = cv2.imread(str(tmp_path / "ann" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (im["height"], im["width"])
    ious = []
    for a in doc["annotations"]:
        im = coco.imgs[a["image_id"]]
        got = coco.annToMask(a).astype(bool)
        want = _paste(*masks[a["attributes"]["object_id"]], im["height"], im["width"])
        assert a["attributes"]["model_label"] == doc["categories"][a["category_id"] - 1]["name"]
        assert a["score"] == a["attributes"]["score"] and a["area"] == got.sum()
        if want.sum() >= 20:
            ious.append(_iou(got, want))
    assert ious and min(ious) >= 0.9


def test_mask_polygons_give_the_mask_back_one_per_piece_holes_filled():
    one = np.zeros((3, 4), bool)
    one[1, 2] = True
    polys, filled = mask_polygons(one)
    assert len(polys) == 1 and sorted(zip(polys[0][::2], polys[0][1::2])) == [(2, 1.5), (2.5, 1), (2.5, 2), (3, 1.5)]
    assert (filled == one).all()
    two = np.zeros((6, 9), bool)
    two[1:4, 1:3] = two[2:5, 5:8] = True
    polys, filled = mask_polygons(two)
    assert len(polys) == 2 and (filled == two).all()
    ring = np.ones((7, 7), bool)
    ring[3, 3] = False
    polys, filled = mask_polygons(ring)
    assert len(polys) == 1 and filled.all()  # COCO polygons hold no holes
    long = np.zeros((40, 200), bool)
    cv2.line(long.view(np.uint8), (5, 5), (190, 30), 1, 3)
    polys, filled = mask_polygons(long)
    assert len(polys[0]) // 2 < 100 and _iou(filled, long) >= 0.95  # 440 pixel edges, simplified


def test_uncertain_first_orders_images_by_mean_uncertainty(run, tmp_path):
    assert image_uncertainty(np.array([0.5])) == 1.0 and image_uncertainty(np.array([0.0, 1.0])) == 0.0
    assert image_uncertainty(np.array([0.25, 0.9])) == pytest.approx((0.5 + 0.2) / 2)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    score = {0: 0.99, 1: 0.5, 2: 0.8}  # uncertainty 0.02, 1.0, 0.4
    rewrite_shards(copy, "objects", lambda df: df.assign(score=df["frame_index"].map(score).astype("float32")))
    plain = json.loads(export_for_annotation(copy, tmp_path / "a").read_text())
    ranked = json.loads(export_for_annotation(copy, tmp_path / "b", uncertain_first=True).read_text())
    frame_of = {fp: k for k, fp in enumerate(sorted(im["frame_path"] for im in plain["images"]))}
    assert [frame_of[im["frame_path"]] for im in plain["images"]] == [0, 1, 2]
    assert [frame_of[im["frame_path"]] for im in ranked["images"]] == [1, 2, 0]
    assert [im["id"] for im in ranked["images"]] == [1, 2, 3]
    names = [im["file_name"] for im in ranked["images"]]
    assert names == sorted(names) and names[0] == "images/1_frames__" + plain["images"][1]["file_name"][14:]
    assert all((tmp_path / "b" / n).is_file() for n in names)
    assert [im["uncertainty"] for im in ranked["images"]] == pytest.approx([1.0, 0.4, 0.02], abs=1e-5)
    by_id = {im["id"]: im["frame_path"] for im in ranked["images"]}
    objects = read_objects(copy).set_index("object_id")["frame_path"]
    assert all(by_id[a["image_id"]] == objects[a["attributes"]["object_id"]] for a in ranked["annotations"])


def test_tiles_hold_the_clipped_objects_at_tile_coordinates(run, tmp_path, small_cruise):
    assert tile_windows(384, 300, 160).tolist() == [[0, 0, 160, 160], [160, 0, 300, 160], [0, 160, 160, 320],
                                                    [160, 160, 300, 320], [0, 320, 160, 384], [160, 320, 300, 384]]
    assert clip_to_window(np.ones((4, 4), bool), (10, 10), (12, 0, 20, 20))[1:] == ((0, 10), True)
    path = export_for_annotation(run, tmp_path / "t", unit="tile", tile_size=160)
    coco = COCO(str(path))
    doc = json.loads(path.read_text())
    masks = _parquet_masks(run)
    seen = set()
    for im in doc["images"]:
        x0, y0 = im["frame_offset"]
        assert x0 % 160 == 0 and y0 % 160 == 0 and im["width"] == min(160, 384 - x0)
        frame = cv2.imread(str(small_cruise / im["frame_path"]), cv2.IMREAD_UNCHANGED)
        tile = cv2.imread(str(tmp_path / "t" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert (tile == frame[y0:y0 + im["height"], x0:x0 + im["width"]]).all()
        anns = coco.imgToAnns[im["id"]]
        assert anns  # tiles without objects are not written
        for a in anns:
            oid = a["attributes"]["object_id"]
            seen.add(oid)
            ox, oy, bm = masks[oid]
            want = _paste(ox, oy, bm, 384, 384)[y0:y0 + im["height"], x0:x0 + im["width"]]
            got = coco.annToMask(a).astype(bool)
            if want.sum() >= 20:
                assert _iou(got, want) >= 0.9
            assert a["attributes"]["truncated"] == (int(want.sum()) < int(bm.sum()))
    assert seen == set(masks)
    assert any(a["attributes"]["truncated"] for a in doc["annotations"])
    assert image_stem("frames/a.png") == "frames/a" and image_stem("/abs/a.tif") == "abs/a_tif"


def test_non_plankton_offered_only_when_the_run_kept_them(run, tmp_path, caplog):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rewrite_shards(copy, "objects", lambda df: df.assign(
        is_plankton=df.index % 2 == 0, label=np.where(df.index % 2 == 0, df["label"], 6).astype("int32")))
    every = json.loads(export_for_annotation(copy, tmp_path / "a").read_text())
    assert {a["category_id"] for a in every["annotations"]} >= {6}
    only = json.loads(export_for_annotation(copy, tmp_path / "b", include_non_plankton=False).read_text())
    assert {a["category_id"] for a in only["annotations"]} <= {1, 2, 3, 4, 5}
    assert len(only["annotations"]) < len(every["annotations"])
    man = json.loads((copy / "manifest.json").read_text())
    man["config"]["filter"]["keep_non_plankton"] = False
    (copy / "manifest.json").write_text(json.dumps(man))
    with caplog.at_level(logging.WARNING, logger="segplank"):
        export_for_annotation(copy, tmp_path / "c")
    assert "--keep-non-plankton" in caplog.text


def test_round_trip_correct_then_train_one_step(run, tmp_path):
    out = tmp_path / "ann"
    path = export_for_annotation(run, out, uncertain_first=True)
    doc = json.loads(path.read_text())
    cat = {c["name"]: c["id"] for c in doc["categories"]}
    anns = doc["annotations"]
    n = len(anns)
    # the annotator: delete one, relabel one, move a vertex, draw a new object
    deleted = anns.pop(0)
    anns[0]["category_id"] = cat["chaetognath"]
    relabelled = anns[0]["attributes"]["object_id"]
    moved = anns[1]
    before = json.loads(json.dumps(moved))
    moved["segmentation"][0][0] += 3
    anns.append({"id": max(a["id"] for a in anns) + 1, "image_id": 2, "category_id": cat["medusa"], "iscrowd": 0,
                 "segmentation": [[300, 300, 330, 300, 330, 330, 300, 330]], "area": 900, "bbox": [300, 300, 30, 30]})
    fixed = tmp_path / "corrected.json"
    fixed.write_text(json.dumps(doc))

    coco = COCO(str(fixed))
    assert len(coco.getAnnIds()) == n and deleted["id"] not in coco.anns
    assert (coco.annToMask(coco.anns[moved["id"]]) != coco.annToMask(before)).any()
    frames, classes, _ = load_coco_frames(fixed, out, "dark_on_bright")
    labels = sorted(a.label for f in frames for a in f.annotations)
    assert len(labels) == n and labels.count(cat["medusa"]) == 1 and labels.count(cat["chaetognath"]) == 1
    assert relabelled != deleted["attributes"]["object_id"]

    ckpt = tmp_path / "next.pt"
    train(TRAIN, fixed, ckpt, image_root=out)
    model = load_checkpoint(ckpt)
    assert model.classes.names == tuple(c["name"] for c in doc["categories"])
    assert model.trained_on["objects"] == n and model.metrics["iterations"] == 1
