"""The feedback loops from the command line: annotation export, and EcoTaxa out and back in."""
import io
import json
import zipfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from segplank.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_cruise, tiny_checkpoint):
    d = tmp_path_factory.mktemp("loops")
    cfg = d / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.0}\n")
    r = runner.invoke(app, ["infer", str(small_cruise), "-o", str(d / "out"), "--model", str(tiny_checkpoint),
                            "--config", str(cfg), "--limit", "2"])
    assert r.exit_code == 0, r.output
    return d / "out"


def test_export_for_annotation(run, tmp_path):
    r = runner.invoke(app, ["export", "coco", str(run), str(tmp_path / "ann"), "--for-annotation", "--uncertain-first"])
    assert r.exit_code == 0, r.output
    coco = json.loads((tmp_path / "ann" / "annotations.coco.json").read_text())
    assert coco["annotations"] and all(a["segmentation"] for a in coco["annotations"])
    unc = [im["uncertainty"] for im in coco["images"]]
    assert unc == sorted(unc, reverse=True)
    r = runner.invoke(app, ["export", "coco", str(run), str(tmp_path / "x")])
    assert r.exit_code == 2 and "--for-annotation" in r.output


def test_ecotaxa_round_trip(run, tmp_path):
    """segplank → EcoTaxa zip → an expert validates some objects → segplank's next training set."""
    r = runner.invoke(app, ["export", "ecotaxa", str(run), "-o", str(tmp_path / "eco"), "--sample-by", "all",
                            "--no-features"])
    assert r.exit_code == 0, r.output
    z = next((tmp_path / "eco").glob("*.zip"))
    with zipfile.ZipFile(z) as f:
        name = next(n for n in f.namelist() if n.endswith(".tsv"))
        tsv = pd.read_csv(io.BytesIO(f.read(name)), sep="\t", encoding="utf-8-sig", skiprows=[1], dtype=str)
    edited = tsv[["object_id", "object_annotation_category", "object_annotation_status"]].copy()
    edited["object_annotation_status"] = "validated"
    edited.loc[edited.index[0], "object_annotation_category"] = "Copepoda<Maxillopoda"  # a new name
    edited.loc[edited.index[-1], "object_annotation_status"] = "discarded"
    exported = tmp_path / "export_validated.tsv"
    edited.to_csv(exported, sep="\t", index=False)
    r = runner.invoke(app, ["import", "ecotaxa", str(exported), str(tmp_path / "train"), "--run", str(run)])
    assert r.exit_code == 0, r.output
    coco = json.loads((tmp_path / "train" / "train.coco.json").read_text())
    names = {c["name"] for c in coco["categories"]}
    assert "Copepoda<Maxillopoda" in names
    kept = [a for a in coco["annotations"] if not a.get("iscrowd")]
    assert len(kept) == len(edited) - 1
    r = runner.invoke(app, ["import", "ecotaxa", str(tmp_path / "none.tsv"), str(tmp_path / "t2"), "--run", str(run)])
    assert r.exit_code == 2
