"""Vignette libraries: folder trees and EcoTaxa exports, masks, taxonomy, bad input."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from segplank.library import LibraryError, open_library, organism_mask
from segplank.taxonomy import ecotaxa_path, prefix_path, taxon_from_ecotaxa, taxon_from_prefix

NDSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "ndsb" / "train"


def ring_vignette(h: int = 40, w: int = 56, dark: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A translucent body (a ring with a clear middle) and a leg touching it, on a plain
    background with a little noise; returns (image, the organism's mask, holes filled)."""
    rng = np.random.default_rng(seed)
    body = np.zeros((h, w), np.uint8)
    cv2.ellipse(body, (w // 2, h // 2), (w // 4, h // 4), 0, 0, 360, 1, 3)
    cv2.line(body, (w // 2 + w // 4, h // 2), (w - 8, h // 2 + 6), 1, 1)  # a leg touching the ring
    filled = body.copy()
    cv2.ellipse(filled, (w // 2, h // 2), (w // 4, h // 4), 0, 0, 360, 1, -1)
    bg, ink = (250.0, 120.0) if dark else (8.0, 140.0)
    img = np.where(body > 0, ink, bg) + rng.normal(0, 1.0, (h, w))
    img[2:4, 2:10] = ink  # a scale bar apart from the organism: not a part of it
    return np.clip(img, 0, 255).astype(np.uint8), filled.astype(bool)


@pytest.mark.parametrize("dark", [True, False])
def test_mask_is_the_organism_with_its_holes_filled_and_polarity_found(dark):
    img, want = ring_vignette(dark=dark)
    mask, polarity, bg = organism_mask(img)
    assert polarity == ("dark_on_bright" if dark else "bright_on_dark")
    assert abs(bg - (250 if dark else 8)) < 3
    assert not mask[2:4, 2:10].any()  # the scale bar is left out
    inter, union = (mask & want).sum(), (mask | want).sum()
    assert inter / union > 0.9
    assert mask[want].all()  # the clear middle of the ring is the organism's


def test_prefix_and_ecotaxa_hierarchies():
    known = {"copepod_calanoid", "copepod_calanoid_large", "fish_larvae_thin_body", "fish_larvae_deep_body"}
    assert prefix_path("copepod_calanoid_large", known) == ("copepod", "copepod_calanoid", "copepod_calanoid_large")
    assert prefix_path("fish_larvae_thin_body", known) == ("fish", "fish_larvae", "fish_larvae_thin_body")
    t = taxon_from_prefix("copepod_calanoid_large", known)
    assert (t.group, t.living, t.level(0), t.level(5)) == ("copepods", True, "copepod", "copepod_calanoid_large")
    assert not taxon_from_prefix("artifacts_edge").living and taxon_from_prefix("artifacts_edge").group == "artefacts"
    assert taxon_from_prefix("fecal_pellet").group == "fecal_pellets"
    assert taxon_from_prefix("unknown_blobs_and_smudges").living is False
    assert taxon_from_prefix("acantharia_protist_halo").group == "radiolarians_acantharians"
    assert ecotaxa_path("Calanoida", "living>Eukaryota>Arthropoda>Copepoda>Calanoida") == (
        "living", "Eukaryota", "Arthropoda", "Copepoda", "Calanoida")
    assert ecotaxa_path("Copepoda<Maxillopoda", "") == ("Maxillopoda", "Copepoda<Maxillopoda")
    d = taxon_from_ecotaxa("fiber<detritus", "not-living>detritus>fiber")
    assert not d.living and d.group == "artefacts"
    c = taxon_from_ecotaxa("Calanoida", "living>Eukaryota>Arthropoda>Crustacea>Copepoda>Calanoida")
    assert c.living and c.group == "copepods"


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def test_folder_tree_uses_what_is_good_and_counts_the_rest(tmp_path, caplog):
    root = tmp_path / "lib"
    for k in range(3):
        (root / "copepod_calanoid" / "deep").mkdir(parents=True, exist_ok=True)
        (root / "copepod_calanoid" / "deep" / f"c{k}.png").write_bytes(_png(ring_vignette(seed=k)[0]))
    (root / "detritus_blob").mkdir()
    (root / "detritus_blob" / "d0.png").write_bytes(_png(ring_vignette(seed=9)[0]))  # a taxon of one vignette
    (root / "copepod_calanoid" / "empty.png").write_bytes(_png(np.full((30, 30), 250, np.uint8)))
    full = np.full((100, 100), 250, np.uint8)
    full[2:-2, 2:-2] = 40  # an object to the edges: no background left to cut it from
    (root / "copepod_calanoid" / "full.png").write_bytes(_png(full))
    (root / "copepod_calanoid" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "copepod_calanoid" / "notes.txt").write_text("hello")
    (root / "stray.png").write_bytes(_png(ring_vignette()[0]))
    with caplog.at_level(logging.WARNING, logger="segplank"):
        lib = open_library(root)
        got = list(lib.vignettes())
    assert lib.kind == "folders" and set(lib.taxa) == {"copepod_calanoid", "detritus_blob"}
    assert lib.counts()["copepod_calanoid"] == 6  # files deeper than the taxon folder count as that taxon
    assert sorted(v.source for v in got) == ["copepod_calanoid/deep/c0.png", "copepod_calanoid/deep/c1.png",
                                             "copepod_calanoid/deep/c2.png", "detritus_blob/d0.png"]
    assert not lib.taxa["detritus_blob"].living
    reasons = " | ".join(lib.skipped)
    assert sum(lib.skipped.values()) == 5, lib.skipped  # txt, stray, broken, empty, full
    for word in ("not an image file", "outside any taxon folder", "not a readable image", "empty mask",
                 "fills the whole vignette"):
        assert word in reasons
    log = caplog.text
    assert "notes.txt" in log and "broken.png" in log and "empty.png" in log and "full.png" in log
    assert "single vignette (detritus_blob)" in log
    train, test = lib.split(0.34, seed=1)
    assert len(test) == 2 and {t.taxon for t in test} == {"copepod_calanoid"}  # a taxon of one stays in training
    assert lib.split(0.34, seed=1) == (train, test)


def _ecotaxa_tsv(rows: list[dict]) -> str:
    cols = ["object_id", "img_file_name", "object_annotation_status", "object_annotation_category",
            "object_annotation_hierarchy", "process_particle_pixel_size_mm"]
    lines = ["\t".join(cols), "\t".join(["[t]"] * 5 + ["[f]"])]
    lines += ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


def test_ecotaxa_zip_is_read_in_place_and_refuses_climbing_names(tmp_path, caplog):
    rows = [
        {"object_id": "a", "img_file_name": "s1/a.png", "object_annotation_status": "validated",
         "object_annotation_category": "Calanoida",
         "object_annotation_hierarchy": "living>Eukaryota>Arthropoda>Copepoda>Calanoida",
         "process_particle_pixel_size_mm": "0.0731"},
        {"object_id": "b", "img_file_name": "s1/b.png", "object_annotation_status": "validated",
         "object_annotation_category": "detritus", "object_annotation_hierarchy": "not-living>detritus"},
        {"object_id": "c", "img_file_name": "s1/c.png", "object_annotation_status": "predicted",
         "object_annotation_category": "Calanoida"},
        {"object_id": "d", "img_file_name": "s1/missing.png", "object_annotation_status": "validated",
         "object_annotation_category": "Calanoida"},
        {"object_id": "e", "img_file_name": "../../evil.png", "object_annotation_status": "validated",
         "object_annotation_category": "Calanoida"},
    ]
    z = tmp_path / "export.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ecotaxa_export/ecotaxa_s1.tsv", _ecotaxa_tsv(rows))
        for name in "abc":
            zf.writestr(f"ecotaxa_export/s1/{name}.png", _png(ring_vignette(seed=ord(name))[0]))
        zf.writestr("../outside.png", _png(ring_vignette()[0]))
    before = set(p.name for p in tmp_path.parent.iterdir())
    with caplog.at_level(logging.WARNING, logger="segplank"):
        lib = open_library(z)
        got = {v.source: v for v in lib.vignettes()}
    assert set(p.name for p in tmp_path.parent.iterdir()) == before  # nothing extracted anywhere
    assert lib.kind == "ecotaxa"
    assert set(got) == {"ecotaxa_export/s1/a.png", "ecotaxa_export/s1/b.png"}
    a = got["ecotaxa_export/s1/a.png"]
    assert a.taxon == "Calanoida" and a.pixel_size_um == pytest.approx(73.1)
    assert lib.taxa["Calanoida"].group == "copepods" and not lib.taxa["detritus"].living
    assert lib.skipped["status not validated"] == 1
    assert "missing.png" in caplog.text and "evil.png" in caplog.text and "outside.png" in caplog.text
    lib.close()
    every = open_library(z, statuses=None)
    assert "ecotaxa_export/s1/c.png" in {it.source for it in every.items}
    every.close()


def test_not_a_library_is_one_clear_error(tmp_path):
    with pytest.raises(LibraryError, match="no such vignette library"):
        open_library(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LibraryError, match="no usable vignette"):
        open_library(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(LibraryError, match="not a folder or a zip"):
        open_library(tmp_path / "f.txt")


@pytest.mark.skipif(not NDSB.is_dir(), reason="../shared/data/ndsb is not here")
def test_real_ndsb_vignettes_give_organism_masks():
    lib = open_library(NDSB)
    assert len(lib.taxa) == 121
    assert sum(not t.living for t in lib.taxa.values()) == 8
    items = lib.items[::500]
    got = list(lib.vignettes(items))
    assert len(got) >= 0.97 * len(items)
    fill = np.array([v.mask.mean() for v in got])
    assert np.median(fill) > 0.08 and (fill < 0.9).all()
    assert all(v.polarity == "dark_on_bright" for v in got)
