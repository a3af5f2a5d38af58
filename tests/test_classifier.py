"""The vignette classifier: its input, its training, its place in the checkpoint and the pipeline."""
import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch

from segplank.config import FilterConfig, MeasureConfig
from segplank.engine.stages import Postprocessor
from segplank.model.checkpoint import CheckpointError, load_checkpoint
from segplank.model.classifier import ClassifierConfig, VignetteClassifier, VignetteNet, vignettes, windows
from segplank.structures import CroppedMasks, Detections, FrameCounts, FrameInfo, FrameRecord
from segplank.train_classifier import (ClassifierTrainConfig, candidate_labels, draw_probabilities,
                                       train_classifier, vignette_set)
from segplank.train_data import Annotation, TrainFrame


def _disc_frame(radius=10, centre=(40, 50), shape=(100, 120), grey=200, ink=80):
    img = np.full(shape, grey, np.uint8)
    cv2.circle(img, centre, radius, ink, -1)
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    ys, xs = np.nonzero(mask)
    x0, y0 = xs.min(), ys.min()
    bitmap = mask[y0:ys.max() + 1, x0:xs.max() + 1].astype(bool)
    return img, CroppedMasks(np.array([[x0, y0]]), (bitmap,))


def test_vignette_of_a_disc_is_its_contrast_and_mask_with_sizes_in_um():
    img, masks = _disc_frame()
    x, s = vignettes(img, masks, "dark_on_bright", pixel_size_um=10.0, size=32)
    assert x.shape == (1, 2, 32, 32) and s.shape == (1, 3)
    contrast, mask = x[0]
    assert contrast[16, 16] == pytest.approx(1 - 80 / 200, abs=0.01)  # the disc's opacity
    assert abs(contrast[1, 1]) < 1e-6  # the background is 0 whatever its grey level
    assert mask[16, 16] == pytest.approx(1.0) and mask[1, 1] == 0
    area = masks.bitmaps[0].sum()
    esd_um = 2 * math.sqrt(area / math.pi) * 10.0
    assert s[0, 0] == pytest.approx(math.log(esd_um / 100.0), abs=1e-5)
    assert s[0, 1] == pytest.approx(math.log(21 * 10.0 / 100.0), abs=1e-5)
    assert s[0, 2] == pytest.approx(area / 21 ** 2, abs=1e-5)


def test_vignettes_follow_polarity_and_gain():
    img, masks = _disc_frame()
    dark, _ = vignettes(img, masks, "dark_on_bright", 10.0, 32)
    lit, _ = vignettes(255 - img, masks, "bright_on_dark", 10.0, 32)
    np.testing.assert_allclose(dark, lit, atol=1e-5)
    brighter, _ = vignettes((img.astype(np.float32) * 1.2).clip(0, 255).astype(np.uint8), masks, "dark_on_bright",
                            10.0, 32)
    np.testing.assert_allclose(dark, brighter, atol=0.01)  # a camera gain cancels


def test_vignette_at_the_frame_edge_and_of_nothing():
    img, masks = _disc_frame(radius=6, centre=(3, 2))
    x, s = vignettes(img, masks, "dark_on_bright", 10.0, 24)
    assert np.isfinite(x).all() and np.isfinite(s).all() and x[0, 1].max() > 0.5
    x, s = vignettes(img, CroppedMasks.empty(), "dark_on_bright", 10.0, 24)
    assert x.shape == (0, 2, 24, 24) and s.shape == (0, 3)


def test_windows_are_square_and_hold_the_box():
    w = windows(np.array([[10, 20, 110, 40], [5, 5, 6, 6]], np.float32))
    assert (w[:, 0] <= [10, 5]).all() and (w[:, 1] <= [20, 5]).all()
    assert (w[:, 0] + w[:, 2] >= [110, 6]).all() and (w[:, 1] + w[:, 2] >= [40, 6]).all()
    assert w[1, 2] >= 16  # a speck is seen with background around it


def test_candidate_labels_match_at_mask_iou_half():
    img, masks = _disc_frame(radius=12)
    bitmap = masks.bitmaps[0]
    fr = TrainFrame(img, (Annotation(3, tuple(int(v) for v in masks.origins[0]), bitmap),))
    half = bitmap.copy()
    half[:, bitmap.shape[1] // 3:] = False  # a third of the disc: a fragment
    cands = CroppedMasks(np.array([masks.origins[0], masks.origins[0], [90, 80]]),
                         (bitmap, half, np.ones((5, 5), bool)))
    assert candidate_labels(cands, fr).tolist() == [3, 0, 0]


def _shapes(n, rng, size=24):
    """Discs (label 1) and bars (label 2) of random size and angle, on their own little frames."""
    frames = []
    for k in range(n):
        img = np.full((64, 64), 210, np.uint8)
        m = np.zeros((64, 64), np.uint8)
        label = 1 + k % 2
        r = int(rng.integers(5, 12))
        if label == 1:
            cv2.circle(m, (32, 32), r, 1, -1)
        else:
            cv2.ellipse(m, (32, 32), (2 * r, 2), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        img[m > 0] = int(rng.integers(60, 140))
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        frames.append(TrainFrame(img, (Annotation(label, (x0, y0), m[y0:ys.max() + 1, x0:xs.max() + 1] > 0),)))
    return frames


def test_training_separates_discs_from_bars():
    rng = np.random.default_rng(0)
    train = vignette_set(_shapes(40, rng), "dark_on_bright", MeasureConfig(), 24, 10.0)
    val = vignette_set(_shapes(20, rng), "dark_on_bright", MeasureConfig(), 24, 10.0, annotated_too=False)
    assert len(train.labels) == 80 and len(val.labels) == 20  # refined and as drawn
    cfg = ClassifierTrainConfig(ClassifierConfig(24, 8), iterations=60, batch_size=32, lr=3e-3, threads=1)
    net, metrics = train_classifier(cfg, train, 2, val)
    assert metrics["val_accuracy"] >= 0.95, metrics
    assert net.head[-1].out_features == 3  # two classes and "not an object"


def test_training_in_bf16_separates_discs_from_bars_too():
    rng = np.random.default_rng(0)
    train = vignette_set(_shapes(40, rng), "dark_on_bright", MeasureConfig(), 24, 10.0)
    val = vignette_set(_shapes(20, rng), "dark_on_bright", MeasureConfig(), 24, 10.0, annotated_too=False)
    cfg = ClassifierTrainConfig(ClassifierConfig(24, 8), iterations=60, batch_size=32, lr=3e-3, threads=1, bf16=True)
    net, metrics = train_classifier(cfg, train, 2, val)
    assert metrics["val_accuracy"] >= 0.95, metrics
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast, weights stay float32


def test_plankton_share_balances_the_sides_whatever_their_number_of_classes():
    labels = np.array([0, 1, 2, 3, 4])  # 0: not an object; 1-3 plankton taxa, 4 marine snow
    counts = np.array([500, 10, 40, 90, 1000])
    plankton = np.array([False, True, True, True, False])
    p = draw_probabilities(labels, counts, ClassifierTrainConfig(class_power=0.0), plankton)
    assert p[0] == pytest.approx(0.25) and p[1:] == pytest.approx([0.1875] * 4)  # one class, one share
    p = draw_probabilities(labels, counts, ClassifierTrainConfig(class_power=0.0, plankton_share=0.5), plankton)
    assert p[0] == pytest.approx(0.25) and p[4] == pytest.approx(0.375) and p[1:4].sum() == pytest.approx(0.375)
    assert p[1:4] == pytest.approx([0.125] * 3)  # within a side, still by class_power
    p = draw_probabilities(labels, counts, ClassifierTrainConfig(class_power=0.5, plankton_share=0.2), plankton)
    assert p[1:4].sum() == pytest.approx(0.15) and p[2] / p[1] == pytest.approx(2.0)
    # one side missing: nothing to balance
    p = draw_probabilities(labels[:4], counts[:4], ClassifierTrainConfig(plankton_share=0.5), plankton)
    assert p[1:].sum() == pytest.approx(0.75) and p[1:] == pytest.approx([0.25] * 3)


def test_checkpoint_carries_the_classifier(tmp_path, tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    assert ck.classifier is None and ck.build_classifier() is None
    torch.manual_seed(0)
    net = VignetteNet(len(ck.classes) + 1, 8).eval()
    path = ck.with_classifier(ClassifierConfig(24, 8), net.state_dict(), {"note": "random"}).save(tmp_path / "c.pt")
    back = load_checkpoint(path)
    clf = back.build_classifier()
    x = torch.rand(3, 2, 24, 24)
    s = torch.zeros(3, 3)
    with torch.no_grad():  # fp16 storage: close, not equal
        np.testing.assert_allclose(torch.softmax(net(x, s), 1).numpy(), clf.predict(x.numpy(), s.numpy()), atol=2e-3)
    assert back.classifier["trained_on"] == {"note": "random"}
    wrong = ck.with_classifier(ClassifierConfig(24, 8), VignetteNet(4, 8).state_dict(), {})
    with pytest.raises(CheckpointError, match="classifier weights do not fit"):
        load_checkpoint(wrong.save(tmp_path / "w.pt")).build_classifier()


class _Fixed(VignetteClassifier):
    """The classifier's interface with chosen probabilities: tests the postprocessor's rules alone."""

    def __init__(self, probs):
        self.probs = np.asarray(probs, np.float32)

    def __call__(self, image, masks, polarity, px):
        assert len(masks) == len(self.probs)
        return self.probs


def test_postprocessor_renames_counts_and_drops_by_the_classifier(tiny_checkpoint):
    classes = load_checkpoint(tiny_checkpoint).classes  # 1..5 plankton, 6..8 not
    img = np.full((200, 200), 200, np.uint8)
    boxes = np.array([[10, 10, 30, 30], [11, 10, 30, 31], [60, 60, 90, 80], [120, 120, 140, 140],
                      [150, 20, 170, 40]], np.float32)
    for x0, y0, x1, y1 in boxes.astype(int):
        img[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = 90
    k = len(classes) + 1
    probs = np.zeros((5, k), np.float32)
    probs[0, 2] = probs[1, 2] = 0.9  # one chaetognath seen twice
    probs[2, 6] = 0.8  # marine snow, though the box head said copepod
    probs[3, 0] = 0.7  # not an object
    probs[4, 1] = 0.3  # a weak copepod, under the threshold
    rest = probs == 0
    probs[rest] = np.repeat((1 - probs.sum(1)) / rest.sum(1), rest.sum(1))  # spread thin over the others
    masks = CroppedMasks(boxes[:, :2].astype(np.int64), tuple(np.ones((int(b[3] - b[1]), int(b[2] - b[0])), bool)
                                                                for b in boxes))
    d = Detections(boxes, np.full(5, 0.2, np.float32), np.array([1, 1, 1, 1, 1]), masks,
                   frame=FrameInfo(__file__, 0, None, pixel_size_um=10.0))
    post = Postprocessor(classes.__class__(classes.names, classes.is_plankton), FilterConfig(score_threshold=0.5),
                         MeasureConfig(), "dark_on_bright", _Fixed(probs))
    counts = FrameCounts(per_class=np.bincount(d.labels, minlength=k))
    rec = post(FrameRecord(d, img, counts))
    kept, cols = rec.dets, rec.columns
    assert kept.labels.tolist() == [2] and kept.scores.tolist() == pytest.approx([0.9])
    assert counts.duplicates == 1
    # per class: chaetognath 1, copepod 1 (the weak one is counted, not written), snow 1; "not an object" is nothing
    assert counts.per_class.tolist() == [0, 1, 1, 0, 0, 0, 1, 0, 0]
    assert counts.written == 1 and len(cols["area_px"]) == 1


def test_a_part_inside_a_more_confident_object_is_dropped_touching_ones_stay(tiny_checkpoint):
    classes = load_checkpoint(tiny_checkpoint).classes
    whole = np.ones((20, 40), bool)
    part = np.ones((20, 10), bool)  # its left quarter
    neighbour = np.ones((20, 10), bool)  # touching its right edge, outside it
    masks = CroppedMasks(np.array([[10, 10], [10, 10], [50, 10]]), (whole, part, neighbour))
    d = Detections(np.array([[10, 10, 50, 30], [10, 10, 20, 30], [50, 10, 60, 30]], np.float32),
                   np.array([0.9, 0.5, 0.6], np.float32), np.array([2, 2, 1]), masks)
    post = Postprocessor(classes, FilterConfig(), MeasureConfig(), "dark_on_bright", candidates=True)
    assert post.distinct(d).tolist() == [0, 2]
    # a small object more confident than the large one around it (a radiolarian on a copepod)
    # does not make the large one a part of it: both stay
    d2 = d.replace(scores=np.array([0.9, 0.95, 0.6], np.float32))
    assert post.distinct(d2).tolist() == [0, 1, 2]
    # the same object twice (a duplicate the box NMS missed) is kept once
    d3 = Detections(d.boxes[[0, 0]], np.array([0.7, 0.8], np.float32), np.array([2, 2]),
                    CroppedMasks(masks.origins[[0, 0]], (whole, whole)))
    assert post.distinct(d3).tolist() == [1]


@pytest.mark.parametrize("inner_label, inner_score, overlying_score, kept", [
    (1, 0.85, 0.8, True),  # a confident copepod lying over a chaetognath: an organism
    (1, 0.85, None, False),  # the rule off: a part like any other
    (1, 0.6, 0.8, False),  # not sure enough it is something else: a part
    (2, 0.85, 0.8, False),  # named as its container: a part of it
    (6, 0.85, 0.8, False),  # marine snow on an organism: not plankton, still a part
])
def test_an_organism_lying_over_another_is_not_a_part_of_it(tiny_checkpoint, inner_label, inner_score,
                                                             overlying_score, kept):
    classes = load_checkpoint(tiny_checkpoint).classes  # 1..5 plankton, 6..8 not
    whole = np.ones((20, 40), bool)  # the refined mask of the lower organism holds the upper one too
    inner = np.ones((12, 12), bool)
    masks = CroppedMasks(np.array([[10, 10], [20, 14]]), (whole, inner))
    d = Detections(np.array([[10, 10, 50, 30], [20, 14, 32, 26]], np.float32),
                   np.array([0.95, inner_score], np.float32), np.array([2, inner_label]), masks)
    post = Postprocessor(classes, FilterConfig(), MeasureConfig(overlying_score=overlying_score),
                         "dark_on_bright", candidates=True)
    assert post.distinct(d).tolist() == ([0, 1] if kept else [0])


def test_train_classifier_then_infer_with_it(tmp_path, small_cruise, tiny_checkpoint):
    """The CLI loop: candidates mined with the tiny detector, a classifier trained, used by infer."""
    from typer.testing import CliRunner

    from segplank.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling:\n  tile_size: 256\n  overlap: 32\n")
    gt = small_cruise / "ground_truth.coco.json"
    r = CliRunner().invoke(app, ["train-classifier", str(gt), "--model", str(tiny_checkpoint), "-o",
                                 str(tmp_path / "c.pt"), "--val", str(gt), "-c", str(cfg), "--mine-frames", "1",
                                 "--iterations", "3", "--batch-size", "8", "--size", "24", "--width", "4",
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "c.pt")
    t = ck.classifier["trained_on"]
    assert t["mined_frames"] == 1 and t["val_vignettes"] > 0 and "not an object" in t["val_accuracy_per_class"]
    assert t["train_vignettes"] > 2 * len(__import__("json").loads(gt.read_text())["annotations"]) / 3
    r = CliRunner().invoke(app, ["infer", str(small_cruise), "-o", str(tmp_path / "run"), "--model",
                                 str(tmp_path / "c.pt"), "-c", str(cfg), "--keep-non-plankton"])
    assert r.exit_code == 0, r.output
    import json

    import pandas as pd

    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    rows = pd.read_parquet(tmp_path / "run" / "objects")
    detected = sum(m["counts"]["detected_per_class"].values())
    assert len(rows) == m["counts"]["objects_written"] <= detected  # every row is a named, counted object
    assert set(rows["label_name"]) <= set(ck.classes.names)
    for mode in (["--no-stream"], ["--stream"]):  # the classifier's names are what is counted, frame by frame and across cuts
        out = tmp_path / f"run{mode[0]}"
        r = CliRunner().invoke(app, ["infer", str(small_cruise), "-o", str(out), "--model", str(tmp_path / "c.pt"),
                                     "-c", str(cfg), *mode])
        assert r.exit_code == 0, r.output
        c = json.loads((out / "manifest.json").read_text())["counts"]
        assert all(v >= 0 for v in c["detected_per_class"].values()), c
        assert all(c["detected_per_class"].get(k, 0) >= v for k, v in c["written_per_class"].items()), c
        per_frame = [v for counts in pd.read_parquet(out / "frames")["counts"] for v in json.loads(counts).values()]
        assert min(per_frame, default=0) >= 0
    r = CliRunner().invoke(app, ["train-classifier", str(gt), "--model", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and "model file not found" in r.output


def test_cut_vignettes_are_reused_only_for_the_same_detector(tmp_path, small_cruise, tiny_checkpoint, monkeypatch):
    import segplank.train_classifier as tc
    from segplank.config import PipelineConfig

    gt = small_cruise / "ground_truth.coco.json"
    pipeline = PipelineConfig.model_validate({"tiling": {"tile_size": 256, "overlap": 32}})
    cfg = ClassifierTrainConfig(ClassifierConfig(24, 4), iterations=2, batch_size=8, threads=1)
    cache = tmp_path / "v.npz"
    ck = load_checkpoint(tiny_checkpoint)
    first = tc.fit_classifier(ck, [gt], tmp_path / "a.pt", [gt], cfg, pipeline, mine_frames=1, cache=cache)
    assert cache.is_file()
    mined = []
    real_mine = tc.mine
    monkeypatch.setattr(tc, "mine", lambda *a, **k: mined.append(1) or real_mine(*a, **k))
    again = tc.fit_classifier(ck, [gt], tmp_path / "b.pt", [gt], cfg, pipeline, mine_frames=1, cache=cache)
    assert not mined  # same detector, annotations and config: nothing mined again
    a, b = first.classifier["trained_on"], again.classifier["trained_on"]
    assert (a["train_vignettes"], a["val_vignettes"], a["mined_frames"], a["val_accuracy"]) == (
        b["train_vignettes"], b["val_vignettes"], b["mined_frames"], b["val_accuracy"])
    # the same vignettes in the same order: seeded training gives the same weights
    for k, v in first.classifier["state_dict"].items():
        assert torch.equal(v, again.classifier["state_dict"][k]), k
    other = dataclasses.replace(ck, state_dict={k: v + 0.01 if v.is_floating_point() else v
                                                for k, v in ck.state_dict.items()})
    tc.fit_classifier(other, [gt], tmp_path / "c.pt", [gt], cfg, pipeline, mine_frames=1, cache=cache)
    assert len(mined) == 2  # another detector: train and val candidates mined again
    recut = pipeline.model_copy(update={"measure": pipeline.measure.model_copy(update={"refine_contrast": 20.0})})
    tc.fit_classifier(other, [gt], tmp_path / "d.pt", [gt], cfg, recut, mine_frames=1, cache=cache)
    assert len(mined) == 4  # another refinement: other candidates, mined again


def test_stages_use_the_checkpoint_classifier_unless_told_not_to(tmp_path, tiny_checkpoint):
    from segplank.config import PipelineConfig
    from segplank.engine.local import build_stages

    ck = load_checkpoint(tiny_checkpoint)
    with_clf = ck.with_classifier(ClassifierConfig(24, 4), VignetteNet(len(ck.classes) + 1, 4).state_dict(), {})
    cpu = torch.device("cpu")
    s = build_stages(PipelineConfig(), with_clf, cpu)
    assert s.post.classifier is not None and s.post.candidates
    # the classifier runs in the detector's precision: fp32 on a CPU unless bf16 is asked for
    assert not s.post.classifier.amp and not s.detector.predictor.amp
    bf16 = build_stages(PipelineConfig.model_validate({"detector": {"precision": "bf16"}}), with_clf, cpu)
    assert bf16.post.classifier.amp and bf16.detector.predictor.amp
    assert bf16.detector.predictor.batch_size == s.detector.predictor.batch_size == 4  # tiles per call on a CPU
    # the box head only proposes: every class at the candidate score, background never
    assert s.detector.predictor.thresholds.tolist() == pytest.approx([1.0] + [0.05] * len(ck.classes))
    # which candidates the mask head draws does not depend on which rows are written
    keep = PipelineConfig.model_validate({"filter": {"keep_non_plankton": True}})
    assert not s.detector.predictor.masks_for_non_plankton
    assert not build_stages(keep, with_clf, cpu).detector.predictor.masks_for_non_plankton
    off = PipelineConfig.model_validate({"detector": {"vignette_classifier": False}})
    s = build_stages(off, with_clf, cpu)
    assert s.post.classifier is None and not s.post.candidates
    # without a classifier the box head's names stand: non-plankton rows, when kept, get its masks
    off_keep = PipelineConfig.model_validate({"detector": {"vignette_classifier": False},
                                              "filter": {"keep_non_plankton": True}})
    assert build_stages(off_keep, with_clf, cpu).detector.predictor.masks_for_non_plankton
    s = build_stages(PipelineConfig(), ck, cpu, candidates=True)  # what a classifier is trained on
    assert s.post.classifier is None and s.post.candidates
    assert not build_stages(keep, ck, cpu, candidates=True).detector.predictor.masks_for_non_plankton
    assert build_stages(PipelineConfig(), ck, cpu).post.candidates is False


def test_the_bundled_demo_model_carries_its_classifier_and_stays_small():
    from segplank.model.checkpoint import DEMO_MODEL

    ck = load_checkpoint(DEMO_MODEL)
    assert ck.demo and DEMO_MODEL.stat().st_size < 20e6
    clf = ck.build_classifier()
    assert clf is not None and clf.net.head[-1].out_features == len(ck.classes) + 1
    t = ck.classifier["trained_on"]
    assert t["mined_frames"] > 0 and t["val_accuracy"] > 0.8  # what `train-classifier` measured when it was built
    assert all(th is not None for th in ck.classes.thresholds)  # chosen on the calibration cruise


def test_candidates_include_the_pieces_of_touching_organisms(tiny_checkpoint):
    """Two organisms joined by an antenna refine into one mask: its pieces are candidates too."""
    from tests.test_refine import dets_of, frame, two_touching

    classes = load_checkpoint(tiny_checkpoint).classes
    a, b, bridge = two_touching()
    image = frame(a | b | bridge, 210, 90, 2.0)
    d = dets_of(a | b | bridge).replace(labels=np.array([2]))  # boxed as one copepod
    refined = {}
    for split in (8, 0):
        post = Postprocessor(classes, FilterConfig(), MeasureConfig(refine_split_px=split), "dark_on_bright",
                             candidates=True)
        refined[split] = post.refine(FrameRecord(d, image, FrameCounts(n_classes=len(classes) + 1))).dets
    assert len(refined[0]) == 1 and len(refined[8]) == 3
    areas = np.sort(refined[8].masks.areas())
    assert areas[-1] == refined[0].masks.areas()[0] == areas[0] + areas[1]  # the whole, and its two pieces


def test_eight_views_make_the_prediction_blind_to_flips_and_turns():
    torch.manual_seed(0)
    clf = VignetteClassifier(VignetteNet(4, 8).eval(), ClassifierConfig(24, 8), torch.device("cpu"))
    x = np.random.default_rng(0).random((3, 2, 24, 24), np.float32)
    s = np.zeros((3, 3), np.float32)
    turned = np.ascontiguousarray(np.rot90(x[:, :, :, ::-1], 1, axes=(2, 3)))
    one, other = clf.predict(x, s, views=8), clf.predict(turned, s, views=8)
    assert one.shape == (3, 4) and np.allclose(one.sum(1), 1, atol=1e-5)
    assert np.allclose(one, other, atol=1e-5)
    assert not np.allclose(clf.predict(x, s), clf.predict(turned, s), atol=1e-5)  # one view is not
