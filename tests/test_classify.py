"""A classifier trained straight from a vignette library, and `segplank classify` on a folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from segplank.classify import classification_report
from segplank.cli import app
from segplank.model.taxa_classifier import load_taxa_classifier
from segplank.taxonomy import taxon_from_prefix


def _text(r) -> str:
    return " ".join(r.output.split())  # rich wraps long lines


def _draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A dark organism on a white vignette: a ring (a medusa-like bell) or a long bar (a chaetognath)."""
    h, w = int(rng.integers(36, 48)), int(rng.integers(36, 48))
    img = np.full((h, w), 250, np.uint8)
    if kind == "ring":
        cv2.circle(img, (w // 2, h // 2), int(rng.integers(9, 14)), int(rng.integers(60, 120)), 3)
    else:
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * rng.uniform(13, 17)
        c = np.array([w / 2, h / 2])
        cv2.line(img, tuple(map(int, c - d)), tuple(map(int, c + d)), int(rng.integers(40, 100)), 2)
    return np.clip(img + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib") / "lib"
    rng = np.random.default_rng(0)
    for taxon, kind in (("hydromedusae_ring", "ring"), ("chaetognath_bar", "bar")):
        (root / taxon).mkdir(parents=True)
        for k in range(30):
            cv2.imwrite(str(root / taxon / f"{k:03d}.png"), _draw(kind, rng))
    return root


def test_train_from_a_library_then_classify_a_folder(library, tmp_path):
    model = tmp_path / "clf.pt"
    r = CliRunner().invoke(app, ["train-classifier", "--library", str(library), "-o", str(model), "--iterations", "80",
                                 "--size", "24", "--width", "8", "--batch-size", "32", "--held-out", "0.2"])
    assert r.exit_code == 0, r.output
    assert "held out (12 vignettes" in _text(r) and "top-1" in _text(r)
    clf = load_taxa_classifier(model)
    assert clf.names == ["chaetognath_bar", "hydromedusae_ring"]
    assert [t.group for t in clf.taxa] == ["chaetognaths", "hydromedusae"]
    assert clf.metrics["top1"] >= 0.9, clf.metrics  # two shapes no one confuses
    report = json.loads((tmp_path / "clf_report" / "classify_report.json").read_text())
    assert set(report["per_class"]) == {"chaetognath_bar", "hydromedusae_ring"}
    assert (tmp_path / "clf_report" / "confusion.png").stat().st_size > 1000

    # an unlabelled folder of vignettes, as a season's export to sort
    folder = tmp_path / "season"
    folder.mkdir()
    rng = np.random.default_rng(7)
    truth = {}
    for k in range(10):
        kind = "ring" if k % 2 else "bar"
        cv2.imwrite(str(folder / f"v{k}.png"), _draw(kind, rng))
        truth[f"v{k}.png"] = "hydromedusae_ring" if kind == "ring" else "chaetognath_bar"
    (folder / "readme.txt").write_text("not a vignette")
    pred = tmp_path / "pred.csv"
    r = CliRunner().invoke(app, ["classify", str(folder), "--model", str(model), "-o", str(pred)])
    assert r.exit_code == 0, r.output
    assert "10 vignettes classified, 1 left out" in _text(r)
    rows = list(csv.DictReader(pred.open()))
    assert list(rows[0]) == ["path", "taxon", "group", "probability", "living"]
    assert sum(row["taxon"] == truth[row["path"]] for row in rows) >= 9
    assert all(row["living"] == "true" and 0 < float(row["probability"]) <= 1 for row in rows)

    # a labelled library is scored against its own labels
    r = CliRunner().invoke(app, ["classify", str(library), "--model", str(model), "-o", str(tmp_path / "lib.csv")])
    assert r.exit_code == 0 and "against the library's labels (60 vignettes)" in _text(r), r.output
    assert "true_taxon" in (tmp_path / "lib.csv").read_text().splitlines()[0]


def test_library_and_coco_are_not_mixed(library, tmp_path):
    r = CliRunner().invoke(app, ["train-classifier", "x.json", "--library", str(library)])
    assert r.exit_code == 2 and "and --model (a detector checkpoint)" in _text(r)
    r = CliRunner().invoke(app, ["classify", str(library), "--model", str(tmp_path / "none.pt")])
    assert r.exit_code == 2 and "classifier file not found" in _text(r)


def test_report_counts_errors_by_level():
    names = ["copepod_calanoid", "copepod_cyclopoid", "detritus_blob"]
    taxa = {n: taxon_from_prefix(n, set(names)) for n in names}
    true = ["copepod_calanoid", "copepod_calanoid", "copepod_cyclopoid", "detritus_blob"]
    pred = ["copepod_calanoid", "copepod_cyclopoid", "copepod_cyclopoid", "copepod_calanoid"]
    r = classification_report(true, pred, taxa)
    assert r["top1"] == 0.5
    assert r["levels"]["level_0"] == 0.75  # a wrong copepod is still a copepod
    assert r["living_accuracy"] == 0.75 and r["group_accuracy"] == 0.75
    assert r["per_class"]["copepod_cyclopoid"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert r["macro_f1"] == pytest.approx((0.5 + 0.6667 + 0.0) / 3, abs=1e-3)


def test_the_bundled_classifier_names_the_ndsb_taxa_and_stays_small():
    from segplank.model.taxa_classifier import BUNDLED_CLASSIFIER

    clf = load_taxa_classifier(BUNDLED_CLASSIFIER)
    assert BUNDLED_CLASSIFIER.stat().st_size < 5e6
    assert len(clf.taxa) == 121 and sum(not t.living for t in clf.taxa) == 8
    assert {"copepod_calanoid", "chaetognath_sagitta", "detritus_blob"} <= set(clf.names)
    assert clf.trained_on["held_out"] == 0.2 and clf.trained_on["split_seed"] == 0
    assert clf.metrics["top1"] > 0.5  # as measured on the held-out 20 % when it was built


NDSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "ndsb" / "train"


@pytest.mark.skipif(not NDSB.is_dir(), reason="../shared/data/ndsb is not here")
def test_the_bundled_classifier_on_held_out_real_vignettes():
    """Every 8th vignette of the held-out 20 % that no step of its build saw (the split it names)."""
    from segplank.classify import classify_library
    from segplank.library import open_library
    from segplank.model.taxa_classifier import BUNDLED_CLASSIFIER

    clf = load_taxa_classifier(BUNDLED_CLASSIFIER)
    with open_library(NDSB, quiet=True) as lib:
        held_out = lib.split(clf.trained_on["held_out"], clf.trained_on["split_seed"])[1][::8]
        preds = classify_library(clf, lib, held_out)
    assert len(preds) >= 0.97 * len(held_out)
    taxa = {t.name: t for t in clf.taxa}
    top1 = np.mean([p.taxon == p.true_taxon for p in preds])
    living = np.mean([p.living == taxa[p.true_taxon].living for p in preds])
    assert top1 > 0.5 and living > 0.85, (top1, living)


def test_classify_without_a_model_uses_the_bundled_isiis_classifier(tmp_path):
    from segplank.model.taxa_classifier import BUNDLED_CLASSIFIER

    folder = tmp_path / "season"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(4):
        cv2.imwrite(str(folder / f"v{k}.png"), _draw("ring" if k % 2 else "bar", rng))
    pred = tmp_path / "pred.csv"
    r = CliRunner().invoke(app, ["classify", str(folder), "-o", str(pred), "--tta"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(pred.open()))
    names = set(load_taxa_classifier(BUNDLED_CLASSIFIER).names)
    assert len(rows) == 4 and all(row["taxon"] in names and row["living"] in ("true", "false") for row in rows)
