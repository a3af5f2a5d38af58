"""EcoTaxa export: zips that pass the importer's rules, and a checker that catches each broken rule."""
from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from segplank.cli import app
from segplank.export.ecotaxa import (EcoTaxaExportError, add_scale_bar, cast_starts, clean_text, export_ecotaxa,
                                     number_cells)
from segplank.export.ecotaxa_check import check_ecotaxa_zip
from segplank.export.parquet import object_rows
from segplank.measure import measure
from segplank.structures import CroppedMasks, Detections, FrameInfo

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
NAMES = ["copepod", "marine_snow"]


# --- a small run, written with segplank's own writers --------------------------------------

def _draw(shape, boxes, rng):
    """A bright frame with a dark ellipse filling each box; the ellipses' bitmaps."""
    img = np.clip(rng.normal(200, 3, shape), 0, 255).astype(np.uint8)
    bitmaps = []
    for x, y, w, h in boxes:
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (w // 2, h // 2), (max(w // 2 - 1, 1), max(h // 2 - 1, 1)), 0, 0, 360, 1, -1)
        img[y:y + h, x:x + w][m > 0] = 40
        bitmaps.append(m.astype(bool))
    return img, bitmaps


def make_run(root: Path, frames: list[dict], *, deep: bool = False, extra: dict | None = None,
             frame_table: list[dict] | None = None, pixel_size_um: float = 10.0) -> Path:
    """A run folder (objects Parquet, manifest, optional frame table) over frames on disk.

    Each frame: ``time`` (datetime or None), ``depth``, ``boxes`` [(x, y, w, h)], optional
    ``labels`` (1-based), ``lat``.
    """
    rng = np.random.default_rng(0)
    cruise, run = root / "cruise", root / "run"
    (cruise / "frames").mkdir(parents=True)
    tables = []
    for k, f in enumerate(frames):
        img, bitmaps = _draw((120, 160), f["boxes"], rng)
        if deep:
            img = img.astype(np.uint16) * 200 + 500
        name = f"ISIIS_{k:03d}.png"
        cv2.imwrite(str(cruise / "frames" / name), img)
        n = len(bitmaps)
        origins = np.array([b[:2] for b in f["boxes"]], np.int64).reshape(-1, 2)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in f["boxes"]], np.float32).reshape(-1, 4)
        labels = np.array(f.get("labels", [1] * n), np.int64)
        info = FrameInfo(cruise / "frames" / name, k, f["time"], 120, 160, pixel_size_um)
        dets = Detections(boxes, np.linspace(0.9, 0.6, n).astype(np.float32), labels,
                          CroppedMasks(origins, tuple(bitmaps)), info)
        times = [f["time"]] * n if f["time"] else None
        lat = np.full(n, f.get("lat", 43.5))
        tables.append(object_rows(dets, NAMES, labels == 1, f"frames/{name}", times, lat, np.full(n, 7.3),
                                  np.full(n, f["depth"], float), measure(dets, img, pixel_size_um)))
    table = pa.concat_tables(tables)
    for col, values in (extra or {}).items():
        table = table.append_column(col, pa.array(values))
    (run / "objects").mkdir(parents=True)
    pq.write_table(table, run / "objects" / "part-00000.parquet")
    if frame_table:
        (run / "frames").mkdir()
        pq.write_table(pa.table({"time": pa.array([r["time"] for r in frame_table], pa.timestamp("us", tz="UTC")),
                                 "depth_m": [r["depth"] for r in frame_table]}), run / "frames" / "part-00000.parquet")
    manifest = {"segplank_version": "0.1.0", "cruise_dir": str(cruise),
                "config": {"instrument": {"name": "ISIIS", "polarity": "dark_on_bright", "pixel_size_um": pixel_size_um,
                                          "volume_per_frame_l": 0.5, "frame_rate_hz": 2.0},
                           "filter": {"score_threshold": 0.5, "min_size_um": 0.0, "max_size_um": None}},
                "model": {"path": "/models/tiny.pt", "sha256": "ab" * 32}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _two_frames(**kw) -> list[dict]:
    return [{"time": T0, "depth": 10.0, "boxes": [(5, 6, 20, 12), (60, 40, 9, 30), (0, 100, 14, 20)],
             "labels": [1, 1, 2]},
            {"time": T0 + timedelta(seconds=1), "depth": 11.0, "boxes": [(100, 10, 30, 30), (140, 90, 20, 30)]}]


def read_tsv(zpath: Path) -> tuple[list[str], list[str], list[dict[str, str]], zipfile.ZipFile]:
    zf = zipfile.ZipFile(zpath)
    name = next(n for n in zf.namelist() if n.endswith(".tsv"))
    raw = zf.read(name)
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r" not in raw
    lines = raw.decode("utf-8-sig").rstrip("\n").split("\n")
    header, types = lines[0].split("\t"), lines[1].split("\t")
    return header, types, [dict(zip(header, line.split("\t"))) for line in lines[2:]], zf


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("good"), _two_frames())
    [z] = export_ecotaxa(run, sample_by="all", plankton_only=False, features=False)
    return z


# --- the export ------------------------------------------------------------------------

def test_inferred_run_exports_zips_that_pass_the_checker(tmp_path, small_cruise, tiny_checkpoint):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling:\n  tile_size: 256\n  overlap: 32\nfilter:\n  score_threshold: 0.0\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["infer", str(small_cruise), "-o", str(out), "--model", str(tiny_checkpoint),
                                 "--config", str(cfg), "--limit", "1"])
    assert r.exit_code == 0, r.output
    objects = pq.read_table(out / "objects").to_pandas()
    zips = export_ecotaxa(out, features=False)
    assert zips and all(z.parent == out / "ecotaxa" and z.name.startswith("ecotaxa_") for z in zips)
    assert not list((out / "ecotaxa").glob(".*"))  # no temporary file left
    rows = []
    for z in zips:
        assert check_ecotaxa_zip(z) == []
        header, types, part, zf = read_tsv(z)
        assert zf.namelist().count(f"{z.stem}.tsv") == 1
        assert {"object_id", "object_lat", "object_lon", "object_date", "object_time", "object_depth_min",
                "object_depth_max", "object_annotation_category", "object_annotation_status", "img_file_name",
                "sample_id", "acq_id", "process_id", "object_area_um2", "object_esd_um", "object_score"} <= set(header)
        rows += part
    assert sorted(r["object_id"] for r in rows) == sorted(objects["object_id"])
    assert {r["object_annotation_status"] for r in rows} == {"predicted"}
    assert {r["object_annotation_category"] for r in rows} <= set(objects["label_name"])
    sha = json.loads((out / "manifest.json").read_text())["model"]["sha256"]
    assert {r["process_model_sha256"] for r in rows} == {sha}


def test_columns_types_and_values(good_zip):
    header, types, rows, zf = read_tsv(good_zip)
    kind = dict(zip(header, types))
    assert kind["object_lat"] == kind["object_depth_min"] == kind["object_area_um2"] == kind["img_rank"] == "[f]"
    assert kind["object_id"] == kind["object_date"] == kind["object_frame_path"] == kind["img_file_name"] == "[t]"
    first = rows[0]
    assert first["object_date"] == "20260601" and first["object_time"] == "120000"
    assert first["object_depth_min"] == first["object_depth_max"] == "10"
    assert first["acq_pixel_size_um"] == "10" and first["acq_pixel"] == "0.01"
    assert first["process_software"] == "segplank 0.1.0" and first["process_max_size_um"] == ""
    assert [r["object_annotation_category"] for r in rows] == ["copepod"] * 2 + ["marine_snow"] + ["copepod"] * 2
    assert len({r["acq_id"] for r in rows}) == 1 and rows[0]["acq_id"] != rows[0]["sample_id"]
    names = set(zf.namelist())
    assert all(r["img_file_name"] in names and r["img_file_name"].endswith(".png") for r in rows)


def test_vignettes_are_raw_padded_crops(tmp_path):
    run = make_run(tmp_path, _two_frames())
    [z] = export_ecotaxa(run, sample_by="all", plankton_only=False, scale_bar_mm=None, pad_px=4, features=False)
    header, types, rows, zf = read_tsv(z)
    frame = cv2.imread(str(tmp_path / "cruise" / "frames" / "ISIIS_000.png"), cv2.IMREAD_UNCHANGED)
    inside = next(r for r in rows if r["object_bbox_x"] == "60")
    v = np.asarray(Image.open(io.BytesIO(zf.read(inside["img_file_name"]))))
    assert v.dtype == np.uint8 and v.shape == (30 + 8, 9 + 8)
    assert np.array_equal(v, frame[40 - 4:40 + 30 + 4, 60 - 4:60 + 9 + 4])  # no mask applied, no rescaling
    edge = next(r for r in rows if r["object_bbox_x"] == "0")  # at the frame's left edge: padded with grey
    v = np.asarray(Image.open(io.BytesIO(zf.read(edge["img_file_name"]))))
    fill = int(np.median(frame[::8, ::8]))
    assert v.shape == (20 + 8, 14 + 8)
    assert np.array_equal(v[:24, 4:], frame[96:120, 0:18])  # the frame's bottom-left corner
    assert np.all(v[:, :4] == fill) and np.all(v[24:] == fill)  # outside the frame


def test_scale_bar_strip_under_the_vignette(tmp_path):
    run = make_run(tmp_path, _two_frames())
    [z] = export_ecotaxa(run, sample_by="all", plankton_only=False, scale_bar_mm=0.5, pad_px=2, features=False)
    header, types, rows, zf = read_tsv(z)
    small = next(r for r in rows if r["object_bbox_x"] == "60")
    v = np.asarray(Image.open(io.BytesIO(zf.read(small["img_file_name"]))))
    assert v.shape[0] == 30 + 4 + 20 and v.shape[1] >= 4 + 50  # 0.5 mm = 50 px at 10 µm per pixel
    strip = v[30 + 4:]
    assert (strip == 0).sum(axis=1).max() >= 50  # a dark bar on the bright background
    bright = add_scale_bar(np.zeros((10, 10), np.uint8), 0.5, 10.0, fill=0)
    assert bright[10:].max() == 255  # bright bar on a dark (lit, UVP-like) background
    with pytest.raises(EcoTaxaExportError, match="scale bar"):
        export_ecotaxa(run, tmp_path / "x", scale_bar_mm=100.0, features=False)


def test_16bit_frames_give_8bit_png(tmp_path):
    run = make_run(tmp_path, _two_frames(), deep=True)
    [z] = export_ecotaxa(run, sample_by="all", features=False)
    assert check_ecotaxa_zip(z) == []
    header, types, rows, zf = read_tsv(z)
    with Image.open(io.BytesIO(zf.read(rows[0]["img_file_name"]))) as im:
        assert im.format == "PNG" and im.mode == "L"
        a = np.asarray(im)
    assert a.min() < 60 and a.max() > 180  # stretched: dark object, bright background


def test_missing_values_are_empty_cells(tmp_path):
    frames = [{"time": None, "depth": float("nan"), "boxes": [(10, 10, 12, 12)], "lat": float("nan")},
              {"time": T0, "depth": 5.0, "boxes": [(50, 50, 12, 12)]}]
    run = make_run(tmp_path, frames)
    zips = export_ecotaxa(run, features=False)
    assert sorted(z.name for z in zips) == ["ecotaxa_cruise_20260601_120000.zip", "ecotaxa_cruise_undated.zip"]
    for z in zips:
        assert check_ecotaxa_zip(z) == []
    header, types, rows, zf = read_tsv(next(z for z in zips if "undated" in z.name))
    r = rows[0]
    assert r["object_date"] == r["object_time"] == r["object_depth_min"] == r["object_lat"] == ""
    assert r["sample_start_utc"] == "" and "nan" not in "\t".join(r.values()).lower()


def test_window_samples_split_on_utc_windows(tmp_path):
    frames = [{"time": T0 + timedelta(minutes=m), "depth": 3.0, "boxes": [(10, 10, 12, 12), (40, 40, 8, 8)]}
              for m in (0, 30, 59, 70)]
    run = make_run(tmp_path, frames)
    zips = export_ecotaxa(run, sample_by="window", window_minutes=60, features=False)
    assert [z.name for z in zips] == ["ecotaxa_cruise_20260601_120000.zip", "ecotaxa_cruise_20260601_130000.zip"]
    counts = [len(read_tsv(z)[2]) for z in zips]
    assert counts == [6, 2]
    acqs = [read_tsv(z)[2][0]["acq_id"] for z in zips]
    assert acqs[0] != acqs[1]  # an acquisition belongs to one sample


def test_cast_samples_split_where_the_record_turns_down(tmp_path):
    # down to 50 m, up to 2 m, down again: two casts; objects only in some frames
    profile = [0, 20, 50, 30, 2, 25, 50, 10]
    record = [{"time": T0 + timedelta(minutes=k), "depth": float(d)} for k, d in enumerate(profile)]
    frames = [{"time": record[k]["time"], "depth": profile[k], "boxes": [(10, 10, 12, 12)]} for k in (1, 3, 5, 7)]
    run = make_run(tmp_path, frames, frame_table=record)
    zips = export_ecotaxa(run, sample_by="cast", features=False)
    assert [z.name for z in zips] == ["ecotaxa_cruise_cast001.zip", "ecotaxa_cruise_cast002.zip"]
    assert [len(read_tsv(z)[2]) for z in zips] == [2, 2]
    for z in zips:
        assert check_ecotaxa_zip(z) == []


def test_cast_starts_ignore_small_wiggles():
    t = np.arange(12, dtype=float)
    d = np.array([0, 10, 20, 19, 21, 10, 1, 2, 1.5, 10, 20, 5])  # 19↔21 and 1↔2 are noise
    assert cast_starts(t, d, min_range_m=5.0).tolist() == [6.0]
    assert cast_starts(t, np.full(12, np.nan), 5.0).tolist() == []


def test_plankton_only_and_rerun_replaces_stale_zips(tmp_path):
    run = make_run(tmp_path, _two_frames())
    out = tmp_path / "eco"
    [z] = export_ecotaxa(run, out, sample_by="all", features=False)
    rows = read_tsv(z)[2]
    assert len(rows) == 4 and "marine_snow" not in {r["object_annotation_category"] for r in rows}
    zips = export_ecotaxa(run, out, sample_by="window", features=False)
    assert not z.exists() and sorted(p.name for p in out.glob("*.zip")) == [p.name for p in zips]
    assert not list(out.glob(".*"))
    snow = make_run(tmp_path / "snow", [{"time": T0, "depth": 1.0, "boxes": [(5, 5, 9, 9)], "labels": [2]}])
    assert export_ecotaxa(snow, out, features=False) == []  # no plankton: nothing to import
    assert not list(out.glob("*.zip"))


def test_a_failed_export_leaves_the_previous_zips_whole(tmp_path, monkeypatch):
    import segplank.export.ecotaxa as eco

    run = make_run(tmp_path, _two_frames())
    [z] = export_ecotaxa(run, sample_by="all", features=False)
    before = z.read_bytes()
    calls = []

    def failing_png(image):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full")
        return cv2.imencode(".png", image)[1].tobytes()

    monkeypatch.setattr(eco, "_png", failing_png)
    with pytest.raises(OSError, match="disk full"):
        export_ecotaxa(run, sample_by="all", features=False)
    assert z.read_bytes() == before
    assert sorted(p.name for p in z.parent.iterdir()) == [z.name, "ecotaxa_export.json"]  # no temporary file


def test_unreadable_frames_are_left_out(tmp_path, caplog):
    run = make_run(tmp_path, _two_frames())
    (tmp_path / "cruise" / "frames" / "ISIIS_000.png").write_bytes(b"")
    [z] = export_ecotaxa(run, sample_by="all", plankton_only=False, features=False)
    rows = read_tsv(z)[2]
    assert {r["object_frame_path"] for r in rows} == {"frames/ISIIS_001.png"} and len(rows) == 2
    assert check_ecotaxa_zip(z) == [] and "left out of the EcoTaxa export" in caplog.text


def test_column_limits_raise_and_leave_no_file(tmp_path):
    n = 5
    numeric = {f"ctd_{k}": np.zeros(n) for k in range(480)}  # + the table's own ~25 numeric columns
    run = make_run(tmp_path, _two_frames(), extra=numeric)
    with pytest.raises(EcoTaxaExportError, match="at most 500"):
        export_ecotaxa(run, sample_by="all", plankton_only=False, features=False)
    assert not any(p.is_file() for p in (run / "ecotaxa").glob("*"))  # nor a temporary one
    text = {f"note_{k}": ["x"] * n for k in range(20)}  # + frame_path
    run2 = make_run(tmp_path / "b", _two_frames(), extra=text)
    with pytest.raises(EcoTaxaExportError, match="at most 20"):
        export_ecotaxa(run2, sample_by="all", plankton_only=False, features=False)


def test_bad_inputs_give_clear_errors(tmp_path):
    run = make_run(tmp_path, _two_frames())
    with pytest.raises(EcoTaxaExportError, match="sample_by"):
        export_ecotaxa(run, sample_by="day", features=False)
    with pytest.raises(FileNotFoundError, match="cruise folder"):
        export_ecotaxa(run, cruise_dir=tmp_path / "nowhere", features=False)
    with pytest.raises(FileNotFoundError, match="manifest"):
        export_ecotaxa(tmp_path / "cruise", features=False)


def test_text_and_number_cells():
    assert clean_text('a\tb\nc "q"') == "a b c 'q'"
    assert len(clean_text("x" * 300)) == 250 and clean_text(None) == "" and clean_text(float("nan")) == ""
    assert number_cells([1.5, float("nan"), float("inf"), 2.0]) == ["1.5", "", "", "2"]
    assert number_cells(np.array([3, 123456789012])) == ["3", "123456789012"]
    assert number_cells(np.array([True, False])) == ["1", "0"]


def test_features_are_zooprocess_object_columns(tmp_path):
    pytest.importorskip("segplank.features")
    run = make_run(tmp_path, _two_frames())
    [z] = export_ecotaxa(run, sample_by="all", plankton_only=False, features=True)
    assert check_ecotaxa_zip(z) == []
    header, types, rows, zf = read_tsv(z)
    assert {"object_area", "object_mean", "object_perim.", "object_circ.", "object_%area"} <= set(header)
    assert "object_area_um2" in header  # segplank's own measurements stay
    assert rows[0]["process_features"] == "zooprocess"
    assert {r["object_area"] for r in rows} != {""}


# --- the checker catches each broken rule -----------------------------------------------

def _rewrite(src: Path, dst: Path, rows=None, members=None, bom: bool = True) -> Path:
    """A copy of ``src`` with its TSV rows (list of cell lists) and its members edited."""
    with zipfile.ZipFile(src) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    tsv = next(n for n in entries if n.endswith(".tsv"))
    table = [line.split("\t") for line in entries[tsv].decode("utf-8-sig").rstrip("\n").split("\n")]
    if rows:
        rows(table)
    text = "\n".join("\t".join(r) for r in table) + "\n"
    entries[tsv] = text.encode("utf-8-sig" if bom else "utf-8")
    if members:
        members(entries, tsv)
    with zipfile.ZipFile(dst, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    return dst


def _set(col: str, value: str, row: int = 2):
    def edit(t):
        t[row][t[0].index(col)] = value
    return edit


def _rename(old: str, new: str):
    def edit(t):
        t[0][t[0].index(old)] = new
    return edit


def _drop(col: str):
    def edit(t):
        k = t[0].index(col)
        for r in t:
            del r[k]
    return edit


def _add_columns(n: int, kind: str, value: str):
    def edit(t):
        t[0] += [f"object_extra{k}" for k in range(n)]
        t[1] += [kind] * n
        for r in t[2:]:
            r += [value] * n
    return edit


def _image(entries) -> str:
    return next(n for n in entries if n.endswith(".png"))


def _delete_image(entries, tsv):
    del entries[_image(entries)]


def _tiff_image(entries, tsv):
    entries[_image(entries)] = cv2.imencode(".tiff", np.zeros((8, 8), np.uint8))[1].tobytes()


def _cut_image(entries, tsv):
    name = _image(entries)
    entries[name] = entries[name][:40]


def _rename_tsv(entries, tsv):
    entries["export.tsv"] = entries.pop(tsv)


def _same_acq_other_sample(t):
    t[3][t[0].index("sample_id")] = "other_sample"


def _dup_id(t):
    t[3][t[0].index("object_id")] = t[2][t[0].index("object_id")]


BROKEN = {
    "no BOM": ({"bom": False}, "byte-order mark"),
    "TSV name": ({"members": _rename_tsv}, "not named ecotaxa_"),
    "short time": ({"rows": _set("object_time", "1200")}, "HHMMSS"),
    "impossible time": ({"rows": _set("object_time", "250000")}, "not a valid time"),
    "ISO date": ({"rows": _set("object_date", "2026-06-01")}, "YYYYMMDD"),
    "impossible date": ({"rows": _set("object_date", "20261301")}, "not a valid date"),
    "latitude": ({"rows": _set("object_lat", "95")}, "outside [-90, 90]"),
    "longitude": ({"rows": _set("object_lon", "-181")}, "outside [-180, 180]"),
    "nan text": ({"rows": _set("object_area_um2", "nan")}, "written as text"),
    "not a number": ({"rows": _set("object_score", "high")}, "not a number"),
    "depth order": ({"rows": _set("object_depth_min", "99")}, "object_depth_min 99 > object_depth_max"),
    "duplicate id": ({"rows": _dup_id}, "appears twice"),
    "status": ({"rows": _set("object_annotation_status", "guessed")}, "not one of"),
    "status without category": ({"rows": _set("object_annotation_category", "")}, "without a category"),
    "type row": ({"rows": _set("object_score", "[x]", row=1)}, "neither [t] nor [f]"),
    "predefined type": ({"rows": _set("object_lat", "[t]", row=1)}, "must be typed [f]"),
    "prefix": ({"rows": _rename("object_score", "score_value")}, "prefix one of"),
    "img column": ({"rows": _rename("object_score", "img_score")}, "img_ has only"),
    "sample id": ({"rows": _drop("sample_id")}, "sample_id is mandatory"),
    "object id": ({"rows": _drop("object_id")}, "object_id is mandatory"),
    "long text": ({"rows": _set("object_frame_path", "p" * 251)}, "more than 250"),
    "double quote": ({"rows": _set("object_frame_path", '"frames/a.png')}, "double quote"),
    "missing cell": ({"rows": lambda t: t[2].pop()}, "cells, the header"),
    "too many numbers": ({"rows": _add_columns(490, "[f]", "1")}, "at most 500"),
    "too many texts": ({"rows": _add_columns(20, "[t]", "a")}, "at most 20"),
    "acquisition in two samples": ({"rows": _same_acq_other_sample}, "one acquisition belongs to one sample"),
    "missing image": ({"members": _delete_image}, "not in the zip"),
    "TIFF image": ({"members": _tiff_image}, "not a PNG (content: TIFF)"),
    "cut PNG": ({"members": _cut_image}, "does not decode"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_checker_catches(case, good_zip, tmp_path):
    assert check_ecotaxa_zip(good_zip) == []
    edit, expected = BROKEN[case]
    problems = check_ecotaxa_zip(_rewrite(good_zip, tmp_path / "broken.zip", **edit))
    assert any(expected in p for p in problems), problems


def test_checker_on_a_file_that_is_not_a_zip(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"not a zip")
    assert "not a readable zip" in check_ecotaxa_zip(p)[0]
