"""The EcoTaxa loop: an export of segplank's objects with expert statuses -> a COCO training set -> one step."""
import json
import logging
import shutil
import zipfile

import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segplank.config import TrainConfig
from segplank.import_ecotaxa import EcoTaxaImportError, import_ecotaxa, is_non_living, read_export
from segplank.model.checkpoint import load_checkpoint
from segplank.runs import read_objects
from segplank.train import train

from .conftest import TINY

TRAIN = TrainConfig(model=TINY, chip_size=128, batch_size=1, iterations=1, warmup_iters=0, val_every=1, threads=1)
HEADER = ["object_id", "object_annotation_status", "object_annotation_category", "object_annotation_hierarchy"]


@pytest.fixture(scope="module")
def run(kept_run):
    return kept_run


def _ids(run) -> list[list[str]]:
    """Object ids per frame, frames in order."""
    t = read_objects(run).sort_values(["frame_index", "object_id"])
    return [list(g["object_id"]) for _, g in t.groupby("frame_index")]


def _tsv(rows: list[tuple], type_row: bool = True, bom: bool = False) -> bytes:
    lines = ["\t".join(HEADER)] + (["\t".join(["[t]"] * len(HEADER))] if type_row else [])
    lines += ["\t".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8-sig" if bom else "utf-8")


def _season(run) -> list[tuple]:
    """An expert's pass over frames 0 and 1 (frame 2 untouched), and an id from elsewhere."""
    f0, f1, f2 = _ids(run)
    return [
        (f0[0], "validated", "copepod", "living>Animalia>Arthropoda>Crustacea>Copepoda"),
        (f0[1], "validated", "Oithona<Cyclopoida", "living>Animalia>Arthropoda>Crustacea>Copepoda>Oithona"),
        (f0[2], "predicted", "copepod", ""),
        (f0[3], "dubious", "copepod", ""),
        (f0[4], "discarded", "copepod", ""),
        (f0[5], "validated", "duplicate", ""),
        (f1[0], "validated", "fiber<detritus", "not-living>detritus>fiber"),
        (f2[0], "predicted", "copepod", ""),
        ("elsewhere_00001", "validated", "copepod", ""),
    ]


def test_validated_labels_on_segplank_masks_train_one_step(run, tmp_path, caplog):
    rows = _season(run)
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w") as z:  # EcoTaxa zips one TSV per sample
        z.writestr("s1/ecotaxa_export_s1.tsv", _tsv(rows[:4], bom=True))
        z.writestr("s2/ecotaxa_export_s2.tsv", _tsv(rows[4:], type_row=False))
    with caplog.at_level(logging.WARNING, logger="segplank"):
        s = import_ecotaxa(export, tmp_path / "set", run_dirs=[run])
    assert "elsewhere_00001" in caplog.text
    f0, f1, _ = _ids(run)
    assert (s.rows, s.validated, s.not_validated, s.discarded, s.unmatched) == (9, 3, 3, 2, 1)
    assert s.frames == 2 and s.frames_unreadable == 0
    assert s.not_exported == len(f0) + len(f1) - 7 and s.ignore_regions == len(f0) + len(f1) - 3
    assert s.new_categories == ("Oithona<Cyclopoida", "fiber<detritus")
    man = json.loads((run / "manifest.json").read_text())
    assert s.categories == tuple(c["name"] for c in man["model"]["classes"]) + s.new_categories
    assert s.per_category == {"copepod": 1, "Oithona<Cyclopoida": 1, "fiber<detritus": 1}

    coco = COCO(str(s.path))
    doc = json.loads(s.path.read_text())
    sup = {c["name"]: c["supercategory"] for c in doc["categories"]}
    assert sup["copepod"] == sup["Oithona<Cyclopoida"] == "plankton" and sup["fiber<detritus"] == "non-plankton"
    assert [c["id"] for c in doc["categories"]] == list(range(1, len(doc["categories"]) + 1))
    name = {c["id"]: c["name"] for c in doc["categories"]}
    expert = {r[0]: r[2] for r in rows if r[1] == "validated" and r[2] != "duplicate"}
    table = read_objects(run).set_index("object_id")
    for a in doc["annotations"]:
        oid = a["object_id"]
        assert a["iscrowd"] == (oid not in expert)
        assert name[a["category_id"]] == expert.get(oid, table.loc[oid, "label_name"])
        r = table.loc[oid]
        want = mask_utils.decode({"size": [int(r.bbox_h), int(r.bbox_w)], "counts": r.mask_rle.encode()})
        got = coco.annToMask(a)
        y, x = int(r.bbox_y), int(r.bbox_x)
        assert got.sum() == want.sum() == a["area"]
        assert (got[y:y + want.shape[0], x:x + want.shape[1]] == want).all()
    for im in doc["images"]:
        assert (tmp_path / "set" / im["file_name"]).is_file()

    ckpt = tmp_path / "next.pt"
    train(TRAIN, s.path, ckpt)  # images resolve against the COCO file's folder
    model = load_checkpoint(ckpt)
    assert model.classes.names == s.categories
    assert model.classes.is_plankton[s.categories.index("fiber<detritus")] is False
    assert model.trained_on["objects"] == 3


def test_export_reader_accepts_plain_tsv_and_refuses_what_it_cannot_use(tmp_path):
    plain = tmp_path / "e.tsv"
    plain.write_bytes(_tsv([("a_00001", " Validated ", "Copepoda<Maxillopoda", ""), ("a_00002", "", "", "")],
                           type_row=False, bom=True))
    t = read_export(plain)
    assert t["object_id"].tolist() == ["a_00001", "a_00002"]
    assert t["status"].tolist() == ["validated", ""] and t["category"].iloc[0] == "Copepoda<Maxillopoda"
    typed = tmp_path / "typed.tsv"
    typed.write_bytes(_tsv([("a_00001", "validated", "x", "")]))
    assert read_export(typed)["object_id"].tolist() == ["a_00001"]
    clash = tmp_path / "clash.tsv"
    clash.write_bytes(_tsv([("a_00001", "validated", "x", ""), ("a_00001", "validated", "y", "")]))
    with pytest.raises(EcoTaxaImportError, match="a_00001"):
        read_export(clash)
    bare = tmp_path / "bare.tsv"
    bare.write_text("object_id\tobject_lat\na\t1\n")
    with pytest.raises(EcoTaxaImportError, match="object_annotation_status"):
        read_export(bare)
    empty_zip = tmp_path / "e.zip"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("readme.txt", "no table")
    with pytest.raises(EcoTaxaImportError, match="no .tsv"):
        read_export(empty_zip)
    assert is_non_living("badfocus<artefact") and is_non_living("x", "not-living>other")
    assert not is_non_living("Copepoda<Maxillopoda") and not is_non_living("detritus", "living>odd")


def test_nothing_validated_or_ambiguous_runs_are_errors(run, tmp_path):
    f0 = _ids(run)[0]
    export = tmp_path / "e.tsv"
    export.write_bytes(_tsv([(f0[0], "predicted", "copepod", ""), (f0[1], "discarded", "copepod", "")]))
    with pytest.raises(EcoTaxaImportError, match="nothing to train on"):
        import_ecotaxa(export, tmp_path / "a", run_dirs=[run])
    export.write_bytes(_tsv([(f0[0], "validated", "copepod", "")]))
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    with pytest.raises(EcoTaxaImportError, match="more than one run"):
        import_ecotaxa(export, tmp_path / "b", run_dirs=[run, twin])
    with pytest.raises(EcoTaxaImportError, match="run folder"):
        import_ecotaxa(export, tmp_path / "c", run_dirs=[])
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
