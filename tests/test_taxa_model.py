"""A plankton/non-plankton detector whose vignette classifier names the taxa (the bundled ISIIS model's shape)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segplank.cli import app
from segplank.model.build import build_model
from segplank.model.checkpoint import Checkpoint, CheckpointError, ClassMap, load_checkpoint
from segplank.model.classifier import ClassifierConfig, VignetteNet, decide
from segplank.synth import make_cruise
from segplank.train_classifier import ClassifierTrainConfig, fit_classifier

from .conftest import TINY

DETECTOR = ClassMap(("plankton", "non-plankton"), (True, False))


def test_plankton_first_sums_each_side_before_naming():
    plankton = np.array([False, True, True, True, False])
    # three plankton taxa at 0.2 each beat one detritus class at 0.35: plankton (0.6), named its best taxon
    probs = np.array([[0.05, 0.2, 0.21, 0.19, 0.35], [0.7, 0.1, 0.1, 0.05, 0.05], [0.1, 0.05, 0.05, 0.1, 0.7]])
    labels, scores = decide(probs, plankton, "plankton_first")
    assert labels.tolist() == [2, 0, 4] and np.allclose(scores, [0.6, 0.7, 0.7])
    flat, _ = decide(probs, plankton, "flat")
    assert flat.tolist() == [4, 0, 4]


def _detector(path, classes: ClassMap, with_classifier: bool = True):
    torch.manual_seed(0)
    model = build_model(TINY, len(DETECTOR))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.01)
        model.roi_heads.box_predictor.cls_score.bias.zero_()
        model.roi_heads.box_predictor.cls_score.bias[1] = 3.0
    clf = None
    if with_classifier:
        cfg = ClassifierConfig(24, 8, "plankton_first")
        clf = {"config": cfg.to_dict(), "state_dict": VignetteNet(len(classes) + 1, 8).state_dict(), "trained_on": {}}
    plain = classes == DETECTOR  # a detector as `train` writes it with `classes: plankton`
    Checkpoint(TINY, classes, model.state_dict(), classifier=clf, detector_classes=None if plain else DETECTOR,
               trained_on={"train_config": {"classes": "plankton"}} if plain else {}).save(path)
    return path


def test_detector_classes_round_trip_and_map_to_named_classes(tmp_path, small_cruise):
    fine = ClassMap(("copepod", "medusa", "marine_snow"), (True, True, False))
    ckpt = load_checkpoint(_detector(tmp_path / "m.pt", fine))
    assert ckpt.detector_classes == DETECTOR and ckpt.classes == fine
    assert ckpt.label_map().tolist() == [0, 1, 3]  # plankton → a plankton class, non-plankton → marine_snow
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling:\n  tile_size: 256\n  overlap: 32\nfilter:\n  score_threshold: 0.0\n")
    r = CliRunner().invoke(app, ["infer", str(small_cruise), "-o", str(tmp_path / "run"), "--model", str(tmp_path / "m.pt"),
                                 "--config", str(cfg), "--no-stream", "--keep-non-plankton"])
    assert r.exit_code == 0, r.output
    import pandas as pd

    rows = pd.concat(pd.read_parquet(p) for p in (tmp_path / "run" / "objects").glob("*.parquet"))
    assert len(rows) and set(rows["label_name"]) <= set(fine.names)


def test_a_plankton_detector_needs_its_classifier(tmp_path):
    fine = ClassMap(("copepod", "marine_snow"), (True, False))
    path = _detector(tmp_path / "bare.pt", fine, with_classifier=False)
    with pytest.raises(CheckpointError, match="without the vignette classifier"):
        load_checkpoint(path)


def _library(root):
    rng = np.random.default_rng(1)
    for taxon in ("hydromedusae_ring", "detritus_blob"):
        (root / taxon).mkdir(parents=True)
        for k in range(6):
            img = np.full((40, 48), 250, np.uint8)
            if taxon.startswith("hydro"):
                cv2.ellipse(img, (24, 20), (14, 10), 0, 0, 360, int(rng.integers(40, 90)), 3)
            else:
                cv2.circle(img, (24, 20), 9, int(rng.integers(120, 160)), -1)
            cv2.imwrite(str(root / taxon / f"{k}.png"), img)
    return root


def test_classifier_of_composed_frames_and_a_library_names_its_taxa(tmp_path, monkeypatch):
    import segplank.train_classifier as tc
    from segplank.library import open_library

    lib = _library(tmp_path / "lib")
    cut: list[str] = []
    real = tc.library_vignette_set

    def recording(library, items, *args, **kwargs):
        out = real(library, items, *args, **kwargs)
        cut.extend(out[1])
        return out

    monkeypatch.setattr(tc, "library_vignette_set", recording)
    make_cruise(tmp_path / "c", n_frames=2, seed=3, size=(256, 256), plankton_share=0.4, density="dense",
                organisms=lib, organisms_split="train")
    detector = _detector(tmp_path / "det.pt", DETECTOR, with_classifier=False)
    cfg = ClassifierTrainConfig(ClassifierConfig(24, 8, "plankton_first"), iterations=10, batch_size=16, class_power=0.5)
    from segplank.config import PipelineConfig

    pipeline = PipelineConfig.model_validate({"tiling": {"tile_size": 256, "overlap": 32}})
    out = fit_classifier(load_checkpoint(detector), [tmp_path / "c" / "ground_truth.coco.json"], tmp_path / "m.pt",
                         cfg=cfg, pipeline=pipeline, library=lib, library_held_out=0.2, library_seed=0)
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.detector_classes == DETECTOR and back.classes == out.classes
    assert {"hydromedusae_ring", "detritus_blob", "marine_snow"} <= set(back.classes.names)
    assert back.classes.is_plankton[back.classes.names.index("hydromedusae_ring")]
    assert not back.classes.is_plankton[back.classes.names.index("detritus_blob")]
    assert back.classifier["trained_on"]["library"] == str(lib)
    # the library's training split joined the training vignettes, its held-out part did not
    train, held_out = open_library(lib).split(0.2, 0)
    assert sorted(cut) == sorted(it.source for it in train) and not set(cut) & {it.source for it in held_out}
