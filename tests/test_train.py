"""`segplank train`: COCO checks and merging, sampling, augmentation, validation, resume, init.

Everything runs the tiny model on a 256 px synthetic cruise for a few iterations.
"""
import csv
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segplank.cli import app
from segplank.config import ConfigError, TrainConfig, build_config
from segplank.model.build import build_model
from segplank.model.checkpoint import ClassMap, load_checkpoint
from segplank.synth import make_cruise
from segplank.train import _model, adapt_heads, make_val_set, mask_ap, train
from segplank.train_data import (Annotation, ChipSampler, CocoError, TrainFrame, augment, load_coco_frames,
                                 plankton_augmentations, repeat_factors, to_target)

from .conftest import TINY, make_tiny

runner = CliRunner()
CATS = [{"id": 1, "name": "copepod", "supercategory": "plankton"},
        {"id": 2, "name": "marine_snow", "supercategory": "non-plankton"}]


@pytest.fixture(scope="module")
def cruise(tmp_path_factory):
    d = tmp_path_factory.mktemp("train") / "c"
    make_cruise(d, 3, seed=5, size=(256, 256), density="dense")
    return d


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(model=TINY, chip_size=128, batch_size=2, iterations=4, warmup_iters=1, val_every=2,
                checkpoint_every=2, threads=1, device="cpu")
    return TrainConfig(**{**base, **kw})


# --- COCO input ------------------------------------------------------------------------------

def write_coco(folder, annotations, images=None, categories=None, name="a.json"):
    """A 32 x 32 frame with the given annotations; returns the COCO path."""
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "f.png"), np.full((32, 32), 200, np.uint8))
    doc = {"images": images or [{"id": 1, "file_name": "f.png", "width": 32, "height": 32}],
           "annotations": annotations, "categories": categories or CATS}
    (folder / name).write_text(json.dumps(doc))
    return folder / name


def square(i, x0=4, y0=4, s=8, cat=1, **kw):
    return {"id": i, "image_id": 1, "category_id": cat, "iscrowd": 0,
            "segmentation": [[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]], **kw}


def test_two_coco_files_merge_by_category_name(tmp_path):
    a = write_coco(tmp_path / "a", [square(1), square(2, 16, 16, cat=2)])
    cats_b = [{"id": 7, "name": "marine_snow", "supercategory": "non-plankton"},
              {"id": 3, "name": "medusa", "supercategory": "plankton"}]
    b = write_coco(tmp_path / "b", [square(1, cat=7), square(2, 20, 4, cat=3)], categories=cats_b)
    frames, classes, cats = load_coco_frames([a, b], None, "dark_on_bright")
    assert classes.names == ("copepod", "marine_snow", "medusa")
    assert [c["id"] for c in cats] == [1, 2, 3] and cats[2]["name"] == "medusa"
    assert [list(f.labels) for f in frames] == [[1, 2], [2, 3]]  # same ids in both files, remapped by name
    assert [f.path.parent.name for f in frames] == ["a", "b"]  # each file's images beside it
    assert frames[0].annotations[0].origin == (4, 4) and frames[0].areas[0] == 64


@pytest.mark.parametrize("change, words", [
    (lambda d: d["images"][0].update(file_name="gone.png"), ["image 1", "image file not found", "gone.png"]),
    (lambda d: d["annotations"][0].update(category_id=9), ["annotation 1", "unknown category_id 9"]),
    (lambda d: d["annotations"][0].update(image_id=5), ["annotation 1", "image_id 5 is not in images"]),
    (lambda d: d["annotations"].append(square(1, 10, 10)), ["annotation 1", "duplicate id"]),
    (lambda d: d["images"].append({**d["images"][0], "width": 64}), ["image 1", "duplicate id"]),
    (lambda d: d["categories"].append({"id": 2, "name": "x"}), ["category 2", "duplicate category id"]),
    (lambda d: d["annotations"].append(square(3, 40, 40)), ["annotation 3", "entirely outside"]),
    (lambda d: d["annotations"][0].update(segmentation={"size": [16, 16], "counts": "PPYo0"}),
     ["annotation 1", "RLE size [16, 16]", "[32, 32]"]),
    (lambda d: d["images"][0].update(width=40), ["image 1", "32x32 px", "says 40x32"]),
    (lambda d: d["annotations"][0].pop("segmentation"), ["annotation 1", "no segmentation"]),
    (lambda d: d["annotations"][1].update(segmentation={"size": [32, 32], "counts": "garbage!!"}),
     ["annotation 2 (image 1)", "its RLE counts do not decode to a 32x32 mask", "re-export the annotation"]),
    (lambda d: d["annotations"][0].update(segmentation={"size": [32, 32], "counts": "T2880000000000000l1"}),
     ["annotation 1 (image 1)", "32x32 mask (their runs cover 256 px, not 1024)"]),  # a 16 x 16 mask's counts
    (lambda d: d["annotations"][0].update(segmentation={"size": [32, 32], "counts": [10, 20]}),
     ["annotation 1 (image 1)", "32x32 mask (their runs cover 30 px, not 1024)"]),
    (lambda d: d["annotations"][0].update(segmentation={"size": [32, 32], "counts": [1000, 24.5]}),
     ["annotation 1 (image 1)", "runs must be non-negative integers"]),
    (lambda d: d["annotations"][0].update(image_id="1"),
     ["a.json: annotation 1: image_id '1' is a string; COCO ids are integers"]),
    (lambda d: d["annotations"][0].update(image_id="img1"), ["annotation 1: image_id 'img1' is a string"]),
    (lambda d: d["annotations"][0].update(image_id=True), ["annotation 1: image_id True is not an integer"]),
    (lambda d: d["annotations"][0].update(category_id="2"), ["annotation 1: category_id '2' is a string"]),
])
def test_inconsistent_coco_is_an_error_naming_file_and_annotation(tmp_path, change, words):
    path = write_coco(tmp_path, [square(1), square(2, 16, 16, cat=2)])
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(CocoError) as e:
        load_coco_frames(path, None, "dark_on_bright")
    assert "a.json" in str(e.value) and "nothing was trained" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_train_refuses_rle_counts_that_do_not_fit_the_image(tmp_path):
    """pycocotools decodes short counts from uninitialised memory: refused, naming file, annotation and image."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text("iterations: 1\nwarmup_iters: 0\nchip_size: 64\nbatch_size: 1\nmodel:\n  width_mult: 0.25\n"
                   "  fpn_channels: 16\n  box_head_dim: 32\n  mask_head_channels: 16\n")
    for counts in ("garbage!!", [10, 20]):
        path = write_coco(tmp_path, [square(1), square(2, 16, 16, segmentation={"size": [32, 32], "counts": counts})])
        r = runner.invoke(app, ["train", str(path), "-c", str(cfg), "-o", str(tmp_path / "m.pt")])
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and "a.json: annotation 2 (image 1): its RLE counts do not decode to a 32x32 mask" in out
        assert "re-export the annotation" in out and not (tmp_path / "m.pt").exists()


def test_obvious_repairs_are_made_and_counted(tmp_path, caplog):
    anns = [square(1), square(2, 28, 28, cat=2), square(3, 24, 2, bbox=[24, 2, 12, 8]),  # two partly outside
            square(4, 10, 10, s=0), square(5, 20, 20, iscrowd=1), square(6, 16, 4)]
    anns.append(dict(anns[0]))  # an exact duplicate
    path = write_coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger="segplank"):
        frames, _, _ = load_coco_frames(path, None, "dark_on_bright")
    assert len(frames[0].annotations) == 4  # 1, 2 and 3 (clipped), 6
    assert frames[0].boxes[1].tolist() == [28, 28, 32, 32] and frames[0].boxes[2].tolist() == [24, 2, 32, 10]
    text = caplog.text
    assert "2 annotation(s) partly outside their image, clipped" in text and "a.json: annotation 2" in text
    assert "1 annotation(s) with an empty mask" in text and "a.json: annotation 4" in text
    assert "1 iscrowd annotation(s) used as ignore regions" in text and "1 exact duplicate" in text
    assert len(frames[0].ignore) == 1 and frames[0].ignore[0].origin == (20, 20)


def test_ignore_regions_are_painted_with_the_background():
    """Unlabelled objects (iscrowd) are neither objects nor background: chips show background there."""
    pixels = np.full((64, 64), 200, np.uint8)
    pixels[10:20, 10:20] = 40  # a labelled object
    pixels[30:40, 30:40] = 40  # an object nobody validated
    fr = TrainFrame(pixels, (Annotation(1, (10, 10), np.ones((10, 10), bool)),), "dark_on_bright",
                    ignore=(Annotation(2, (30, 30), np.ones((10, 10), bool)),))
    img, masks, labels = fr.chip(0, 0, 64)
    assert labels.tolist() == [1] and masks[0, 10:20, 10:20].all()
    assert np.allclose(img[28:42, 28:42], 200 / 255)  # painted, 2 px dilation included
    assert np.allclose(img[10:20, 10:20], 40 / 255)  # the labelled object untouched


def test_validation_set_follows_the_training_classes(tmp_path):
    val = write_coco(tmp_path, [square(1, cat=5)], categories=[{"id": 5, "name": "medusa"}])
    _, classes, _ = load_coco_frames(write_coco(tmp_path / "t", [square(1)]), None, "dark_on_bright")
    with pytest.raises(CocoError, match="'medusa' is not among the training classes"):
        load_coco_frames(val, None, "dark_on_bright", classes=classes)


# --- chips and sampling ------------------------------------------------------------------------

def frame(objects, size=64):
    """A frame of square objects (label, x0, y0, side)."""
    anns = tuple(Annotation(label, (x, y), np.ones((s, s), bool)) for label, x, y, s in objects)
    return TrainFrame(np.full((size, size), 255, np.uint8), anns)


def test_repeat_factors_are_lvis_on_object_chips():
    # 25 objects: 20 of class 1 (f = 0.8), 4 of class 2 (f = 0.16), 1 of class 3 (f = 0.04)
    frames = [frame([(1, 0, 0, 2)] * 12), frame([(1, 0, 0, 2)] * 8 + [(2, 5, 5, 3)] * 4 + [(3, 9, 9, 1)])]
    r = repeat_factors(frames, 3, "repeat_factor", 0.64)
    assert np.allclose(r, [1.0] * 20 + [2.0] * 4 + [4.0])  # sqrt(0.64 / f), never below 1
    assert np.allclose(repeat_factors(frames, 3, "class_uniform", 0.64), [25 / 60] * 20 + [25 / 12] * 4 + [25 / 3])
    assert np.allclose(repeat_factors(frames, 3, "none", 0.64), 1.0)
    sampler = ChipSampler(frames, 64, 3, seed=0, background_share=0.2, rfs_threshold=0.64)
    order = sampler.epoch_order(0)
    assert np.bincount(order[order >= 0]).tolist() == [1] * 20 + [2] * 4 + [4]  # integer factors: exact copies
    assert (order < 0).sum() == 8  # background: 20 % of the list


def test_chips_of_empty_frames_padding_and_one_pixel_objects():
    f = frame([(2, 30, 30, 1), (1, 0, 0, 4)], size=40)
    img, masks, labels = f.chip(20, 20, 64)  # runs past the frame: padded
    assert img.shape == (64, 64) and img.dtype == np.float32 and labels.tolist() == [2]
    assert masks.sum() == 1 and masks[0, 10, 10] == 1
    _, target = to_target(img, masks, labels)
    assert target["boxes"].tolist() == [[10.0, 10.0, 11.0, 11.0]]
    img, masks, labels = frame([]).chip(0, 0, 32)
    image, target = to_target(img, masks, labels)
    assert image.shape == (3, 32, 32) and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 32, 32)
    assert frame([(1, 0, 0, 4)]).chip(3, 0, 32)[2].tolist() == [1]  # a 1 x 4 px strip of it: kept
    assert frame([(1, 0, 0, 4)]).chip(3, 3, 32)[2].tolist() == []  # a 1-px corner cut off it: left out


def test_augmentations_keep_masks_on_their_objects():
    mask = np.zeros((48, 48), np.uint8)
    mask[8:40, 8:16] = 1  # an L: no flip or turn maps it onto itself
    mask[32:40, 8:30] = 1
    img = np.where(mask, 0.15, 0.85).astype(np.float32)
    aug = plankton_augmentations()
    seen = set()
    for seed in range(40):
        out, masks = augment(aug, img, mask[None], seed)
        assert masks.shape == (1, 48, 48) and masks.dtype == np.uint8 and masks.sum() == mask.sum()
        dark = out < 0.5
        assert (dark & (masks[0] == 1)).sum() / (dark | (masks[0] == 1)).sum() > 0.99
        seen.add(masks[0].tobytes())
        out2, _ = augment(aug, img, mask[None], seed)
        assert np.array_equal(out, out2)  # reproducible from the seed
    assert len(seen) == 8  # all flips and turns occur


def test_mask_ap_is_one_for_perfect_predictions():
    f = frame([(1, 4, 4, 6), (2, 30, 8, 8), (1, 50, 40, 5)])
    from segplank.model.checkpoint import ClassMap

    val = make_val_set([f], ClassMap(("a", "b"), (True, False)), 32)
    assert len(val.windows) == 4 and len(val.gt.dataset["annotations"]) == 4  # object 2 spans two chips
    perfect = [{**a, "score": 1.0} for a in val.gt.dataset["annotations"]]
    assert mask_ap(val.gt, perfect) == (1.0, 1.0)
    assert mask_ap(val.gt, []) == (0.0, 0.0)


# --- training ------------------------------------------------------------------------------------

def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, cruise):
    gt = cruise / "ground_truth.coco.json"
    cfg = tiny_cfg()
    rows = []
    best = train(cfg, gt, tmp_path / "a" / "m.pt", val_coco=gt, progress=lambda i, r: rows.append(r))
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and "mask_AP" in rows[1] and "mask_AP" in rows[3]

    class Stop(Exception):
        pass

    def stop_at_3(i, row):
        if i == 3:  # the state was saved at 2: iteration 3 is lost, as in a crash
            raise Stop

    with pytest.raises(Stop):
        train(cfg, gt, tmp_path / "b" / "m.pt", val_coco=gt, progress=stop_at_3)
    train(cfg, gt, tmp_path / "b" / "m.pt", val_coco=gt, resume=True)
    a, b = (torch.load(tmp_path / d / "m.state.pt", weights_only=True) for d in "ab")
    assert a["iteration"] == b["iteration"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    no_time = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert no_time(a["history"]) == no_time(b["history"])

    # outputs: best (out), last, metrics log and figure
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["m.last.pt", "m.metrics.csv", "m.metrics.png", "m.pt", "m.state.pt"]
    last = load_checkpoint(tmp_path / "a" / "m.last.pt")
    assert last.metrics["iterations"] == 4 and last.metrics["mask_AP"] is not None
    assert best.metrics["iterations"] in (2, 4) and best.trained_on["frames"] == 3
    assert best.trained_on["train_config"]["sampling"] == "repeat_factor"
    with open(tmp_path / "a" / "m.metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["iteration"] for r in table] == ["1", "2", "3", "4"]
    assert table[0]["val_loss"] == "" and float(table[1]["val_loss"]) > 0 and table[3]["mask_AP"] != ""
    assert (tmp_path / "a" / "m.metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_a_changed_run(tmp_path, cruise):
    gt = cruise / "ground_truth.coco.json"
    with pytest.raises(ValueError, match="no training state to resume"):
        train(tiny_cfg(), gt, tmp_path / "m.pt", resume=True)
    train(tiny_cfg(iterations=2), gt, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.last.pt", "m.metrics.csv", "m.metrics.png", "m.pt",
                                                         "m.state.pt"]  # without val: out is the last
    with pytest.raises(ValueError, match=r"lr: 0\.01 -> 0\.02"):
        train(tiny_cfg(iterations=2, lr=0.02), gt, tmp_path / "m.pt", resume=True)


def test_init_from_a_checkpoint_with_other_classes(tmp_path, cruise, caplog):
    old = make_tiny(tmp_path / "old.pt")
    doc = json.loads((cruise / "ground_truth.coco.json").read_text())
    for c in doc["categories"]:
        c["name"] = {"bubble": "gas_bubble"}.get(c["name"], c["name"])
    gt = cruise / "renamed.coco.json"
    gt.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="segplank"):
        ck = train(tiny_cfg(iterations=1, lr=1e-9, seed=1), gt, tmp_path / "m.pt", init=old)
    assert "classes differ" in caplog.text and "7 shared" in caplog.text and "gas_bubble" in caplog.text
    before, after = load_checkpoint(old).state_dict, ck.state_dict
    w = "roi_heads.mask_predictor.mask_fcn_logits.weight"
    assert torch.allclose(after[w][:8].float(), before[w][:8].float(), atol=1e-3)  # background + 7 shared kept
    assert not torch.allclose(after[w][8].float(), before[w][8].float(), atol=1e-3)  # bubble's row not reused


def test_adapt_heads_copies_rows_by_class_name():
    torch.manual_seed(0)
    old = build_model(TINY, 3).state_dict()
    fresh = build_model(TINY, 2).state_dict()
    new = adapt_heads(old, fresh, ("a", "b", "c"), ("c", "z"))
    box = "roi_heads.box_predictor.bbox_pred.weight"
    assert new[box].shape == fresh[box].shape
    assert torch.equal(new[box][:4], old[box][:4]) and torch.equal(new[box][4:8], old[box][12:16])  # bg, c
    assert torch.equal(new[box][8:], fresh[box][8:])  # z is new


def test_init_names_torchvision_weights_or_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="resnet50_v2"):
        train(tiny_cfg(), tmp_path / "none.json", tmp_path / "m.pt", init="coco")
    with pytest.raises(ValueError, match="old.pt: model file not found"):
        train(tiny_cfg(), tmp_path / "none.json", tmp_path / "m.pt", init=tmp_path / "old.pt")
    wider = tiny_cfg(model=TINY.model_copy(update={"fpn_channels": 32}))
    with pytest.raises(ValueError, match="do not fit the model in the training config"):
        train(wider, write_coco(tmp_path, [square(1)]), tmp_path / "m.pt", init=make_tiny(tmp_path / "old.pt"))


def test_sampling_modes_and_the_older_balanced_key():
    assert TrainConfig().sampling == "repeat_factor"
    assert build_config({"balanced": True}, "t", TrainConfig).sampling == "class_uniform"
    assert build_config({"balanced": False}, "t", TrainConfig).sampling == "none"
    with pytest.raises(ConfigError, match="give 'sampling' only"):
        build_config({"balanced": True, "sampling": "none"}, "t", TrainConfig)


def test_the_box_head_learns_from_the_configured_number_of_proposals():
    classes = ClassMap(("copepod", "marine_snow"), (True, False))
    assert _model(tiny_cfg(), classes, None).roi_heads.fg_bg_sampler.batch_size_per_image == 512  # torchvision's
    model = _model(tiny_cfg(roi_samples_per_image=64), classes, None)
    assert model.training and model.roi_heads.fg_bg_sampler.batch_size_per_image == 64


# --- the command ---------------------------------------------------------------------------------

def test_train_writes_a_usable_self_describing_checkpoint(tmp_path, small_cruise):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("model:\n  width_mult: 0.25\n  fpn_channels: 16\n  box_head_dim: 32\n  mask_head_channels: 16\n"
                   "  detections_per_tile: 50\n  rpn_pre_nms_top_n: 200\n  rpn_post_nms_top_n: 100\n"
                   "chip_size: 128\nbatch_size: 2\niterations: 3\nwarmup_iters: 1\nval_every: 2\nthreads: 1\n")
    out = tmp_path / "m.pt"
    gt = small_cruise / "ground_truth.coco.json"
    r = runner.invoke(app, ["train", str(gt), "--val", str(gt), "-c", str(cfg), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out)
    assert ck.classes.names == tuple(c["name"] for c in json.loads(gt.read_text())["categories"])
    assert ck.trained_on["frames"] == 3 and ck.metrics["iterations"] in (2, 3)  # the best of two validations
    assert ck.metrics["val_loss"] is not None and ck.metrics["final_loss"] > 0
    assert load_checkpoint(tmp_path / "m.last.pt").metrics["iterations"] == 3
    # continue from it
    r = runner.invoke(app, ["train", str(gt), "-c", str(cfg), "-o", str(tmp_path / "m2.pt"), "--init", str(out)])
    assert r.exit_code == 0, r.output
    # and it runs in infer
    pipe = tmp_path / "p.yaml"
    pipe.write_text("tiling: {tile_size: 192, overlap: 32}\ndetector: {proposals_per_tile: 100, candidates_per_level: 200}\n")
    r = runner.invoke(app, ["infer", str(small_cruise), "-o", str(tmp_path / "o"), "--model", str(out), "-c", str(pipe), "--limit", "1"])
    assert r.exit_code == 0, r.output


def test_train_refuses_bad_inputs(tmp_path, small_cruise):
    r = runner.invoke(app, ["train", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "not found" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 0\n")
    r = runner.invoke(app, ["train", str(small_cruise / "ground_truth.coco.json"), "-c", str(bad)])
    assert r.exit_code == 2 and "iterations" in r.output
    broken = tmp_path / "c"
    shutil.copytree(small_cruise, broken)
    (broken / "frames" / sorted(p.name for p in (broken / "frames").iterdir())[0]).unlink()
    r = runner.invoke(app, ["train", str(broken / "ground_truth.coco.json"), "-o", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "image file not found" in " ".join(r.output.split())
    assert not (tmp_path / "m.pt").exists()
