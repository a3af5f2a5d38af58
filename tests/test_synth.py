"""The synthetic cruise generator: determinism, exact ground truth, realism of the mix."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from segplank.synth import CATEGORIES, SynthConfig, make_cruise, render_frame
from segplank.synth.categories import (APPENDICULARIAN, CHAETOGNATH, MARINE_SNOW,
                                       PLANKTON_IDS, sample_sizes)
from segplank.synth.render import encode_rle, rasterise
from segplank.synth.scene import ObjectSpec, blur_limit, frame_objects, sample_owned

SMALL = (384, 512)  # (height, width): fast, and not square so axes cannot be swapped unnoticed


@pytest.fixture(scope="module")
def cruise(tmp_path_factory) -> tuple[Path, SynthConfig]:
    """A small ISIIS cruise rich in plankton, so big, cut and overlapping objects occur."""
    out = tmp_path_factory.mktemp("cruise")
    make_cruise(out, n_frames=3, seed=11, size=(768, 768), plankton_share=0.3)
    return out, SynthConfig(seed=11, n_frames=3, size=(768, 768), plankton_share=0.3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(root: Path) -> dict:
    return json.loads((root / "ground_truth.coco.json").read_text())


# --- API and layout ------------------------------------------------------------------------

def test_categories_are_fixed() -> None:
    assert [(c["id"], c["name"], c["supercategory"]) for c in CATEGORIES] == [
        (1, "copepod", "plankton"), (2, "chaetognath", "plankton"), (3, "appendicularian", "plankton"),
        (4, "medusa", "plankton"), (5, "radiolarian", "plankton"), (6, "marine_snow", "non-plankton"),
        (7, "detritus", "non-plankton"), (8, "bubble", "non-plankton")]


def test_layout_and_config(cruise) -> None:
    root, cfg = cruise
    from segplank.config import load_config

    instrument = load_config(cruise_dir=root).instrument  # the pipeline reads cruise.yaml as is
    assert instrument.name == "ISIIS" and instrument.polarity == "dark_on_bright"
    assert instrument.pixel_size_um == 10.0 and instrument.volume_per_frame_l > 0
    doc = yaml.safe_load((root / "cruise.yaml").read_text())
    assert doc["synth"]["seed"] == 11 and doc["synth"]["size"] == [768, 768]
    coco = _coco(root)
    assert [c["name"] for c in coco["categories"]] == [c["name"] for c in CATEGORIES]
    for k, image in enumerate(coco["images"]):
        assert image["id"] == k + 1 and (root / image["file_name"]).is_file()
        ts = re.search(instrument.timestamp_regex, image["file_name"])["ts"]
        t = datetime.strptime(ts, instrument.timestamp_format).replace(tzinfo=UTC)
        assert t == cfg.start_time + timedelta(seconds=k / cfg.frame_rate_hz)
        assert image["date_captured"] == t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


def test_same_seed_same_bytes_whatever_workers(tmp_path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_cruise(a, n_frames=3, seed=5, size=SMALL, density="dense")
    make_cruise(b, n_frames=3, seed=5, size=SMALL, density="dense", workers=2)
    make_cruise(c, n_frames=3, seed=6, size=SMALL, density="dense")
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys() and len(fa) == 3 + 5  # frames, COCO, stream truth, nav, CTD, cruise.yaml
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    assert all(fa[k] != fc[k] for k in fa if k.startswith("frames/"))
    assert fa["ground_truth.coco.json"] != fc["ground_truth.coco.json"]


def test_empty_cruise_is_valid(tmp_path) -> None:
    summary = make_cruise(tmp_path, n_frames=0, seed=1, size=SMALL)
    coco = _coco(tmp_path)
    assert coco["images"] == [] and coco["annotations"] == [] and len(coco["categories"]) == 8
    assert summary.n_frames == 0 and summary.n_objects == 0 and "0 frames" in str(summary)
    assert len((tmp_path / "nav.csv").read_text().splitlines()) > 20


def test_refuses_a_folder_holding_another_cruise(tmp_path) -> None:
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "other.png").write_bytes(b"")
    with pytest.raises(FileExistsError):
        make_cruise(tmp_path, n_frames=1, size=SMALL)


# --- exact ground truth --------------------------------------------------------------------

def test_rle_of_a_crop_equals_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        x0, y0 = int(rng.integers(0, 60 - w)), int(rng.integers(0, 50 - h))
        full = np.zeros((50, 60), np.uint8, order="F")
        full[y0:y0 + h, x0:x0 + w] = mask
        ref = mask_utils.encode(full)
        assert encode_rle(mask, x0, y0, 50, 60)["counts"] == ref["counts"].decode()


def test_every_mask_is_exactly_the_drawn_pixels(cruise) -> None:
    root, cfg = cruise
    coco = _coco(root)
    h, w = cfg.size
    n_checked = 0
    for k, image in enumerate(coco["images"]):
        frame = render_frame(cfg, k, with_background=True)
        on_disk = cv2.imread(str(root / image["file_name"]), cv2.IMREAD_UNCHANGED)
        assert on_disk.dtype == np.uint8 and on_disk.shape == (h, w)
        assert np.array_equal(on_disk, frame.image)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(frame.objects)
        union = np.zeros((h, w), bool)
        for ann, obj in zip(anns, frame.objects):
            gt = mask_utils.decode(ann["segmentation"]).astype(bool)
            drawn = obj.full_mask(h, w)
            iou = (gt & drawn).sum() / (gt | drawn).sum()
            assert iou == 1.0
            assert ann["area"] == int(gt.sum()) > 0 and ann["category_id"] == obj.spec.category_id
            assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]).tolist()
            union |= gt
            n_checked += 1
        # objects were drawn only inside their masks: everywhere else is the bare background
        assert np.array_equal(frame.image[~union], frame.background[~union])
        assert (frame.image[union] != frame.background[union]).mean() > 0.8
    assert n_checked > 30


def test_line_scan_objects_continue_across_frame_cuts(cruise) -> None:
    """An object cut by a frame boundary shows its two parts in two frames: together, whole."""
    root, cfg = cruise
    coco = _coco(root)
    by_uid: dict[str, list[dict]] = {}
    for a in coco["annotations"]:
        by_uid.setdefault(a["attributes"]["uid"], []).append(a)
    split = [(uid, parts) for uid, parts in by_uid.items() if len(parts) > 1]
    assert split, "expected some objects across a line-scan cut"
    specs = {s.uid: s for k in range(cfg.n_frames) for s in frame_objects(cfg, k)}
    for uid, parts in split:
        stamp = rasterise(specs[uid])
        assert all(p["attributes"]["truncated"] for p in parts)
        assert sum(p["area"] for p in parts) <= int(stamp.mask.sum())
        for p in parts:  # each part sits where the stream's rows put it
            row0 = (p["image_id"] - 1) * cfg.height
            x, y = p["bbox"][:2]
            part = mask_utils.decode(p["segmentation"]).astype(bool)[y:y + p["bbox"][3], x:x + p["bbox"][2]]
            sy, sx = y + row0 - stamp.y0, x - stamp.x0
            assert np.array_equal(part, stamp.mask[sy:sy + part.shape[0], sx:sx + part.shape[1]])


def test_stream_ground_truth_each_object_once_and_whole(cruise) -> None:
    """ground_truth_stream.json: one entry per uid, in stream rows; a crossing object is the union of its parts."""
    from segplank.synth.linescan import stream_objects

    root, cfg = cruise
    coco = _coco(root)
    truth = json.loads((root / "ground_truth_stream.json").read_text())
    objs = truth["objects"]
    uids = {a["attributes"]["uid"] for a in coco["annotations"]}
    assert len(objs) == len(uids) and {o["uid"] for o in objs} == uids
    assert truth["frame_height"] == cfg.height and [o["id"] for o in objs] == list(range(1, len(objs) + 1))

    def mask(o):
        m = mask_utils.decode({"size": o["segmentation"]["size"], "counts": o["segmentation"]["counts"].encode()})
        return m.astype(bool)

    by_uid = {o["uid"]: o for o in objs}
    crossing = [o for o in objs if len(o["frames"]) > 1]
    assert crossing
    for o in crossing:  # the union of its COCO parts, each placed in stream rows
        parts = [a for a in coco["annotations"] if a["attributes"]["uid"] == o["uid"]]
        assert sorted(a["image_id"] - 1 for a in parts) == o["frames"] and o["owner_frame"] == o["frames"][0]
        m = mask(o)
        union = np.zeros_like(m)
        for a in parts:
            x, y, w, h = a["bbox"]
            full = mask_utils.decode(a["segmentation"]).astype(bool)
            sy, sx = y + (a["image_id"] - 1) * cfg.height - o["y0"], x - o["x0"]
            union[sy:sy + h, sx:sx + w] |= full[y:y + h, x:x + w]
        assert np.array_equal(m, union) and o["area"] == int(m.sum())
    for g in stream_objects(cfg):  # and every object is what the renderer drew, whole
        o = by_uid[g.uid]
        assert (o["x0"], o["y0"], o["owner_frame"], tuple(o["frames"])) == (g.x0, g.y0, g.owner, g.frames)
        assert np.array_equal(mask(o), g.mask) and o["category_id"] == g.category_id


def test_uvp_cruise_has_no_stream_truth(tmp_path) -> None:
    make_cruise(tmp_path, n_frames=1, seed=1, size=(64, 64), preset="uvp")
    assert not (tmp_path / "ground_truth_stream.json").exists()


def test_avi_copy_reads_as_the_same_frames(tmp_path) -> None:
    """--avi: the frames as one lossless AVI in avi/, a cruise folder of its own; the PNG cruise
    still reads each frame once."""
    from segplank.config import load_config
    from segplank.frames import find_frames, read_frame

    make_cruise(tmp_path, n_frames=3, seed=2, size=(64, 96), avi=True)
    pngs = find_frames(tmp_path, load_config(cruise_dir=tmp_path).instrument)
    avi_dir = tmp_path / "avi"
    assert [p.name for p in sorted(avi_dir.iterdir())] == ["ISIIS_20260601_120000_000.avi", "cruise.yaml",
                                                           "ctd.csv", "nav.csv"]
    avis = find_frames(avi_dir, load_config(cruise_dir=avi_dir).instrument)
    assert [f.path.suffix for f in pngs] == [".png"] * 3 and len(avis) == 3
    assert [f.timestamp for f in avis] == [f.timestamp for f in pngs]
    for a, p in zip(avis, pngs):
        assert np.array_equal(read_frame(a.path), read_frame(p.path))


def test_cli_line_scan_and_avi(tmp_path) -> None:
    from typer.testing import CliRunner

    from segplank.cli import app

    r = CliRunner().invoke(app, ["synth", str(tmp_path / "a"), "-n", "2", "--size", "64", "--line-scan", "--avi"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "ground_truth_stream.json").is_file() and len(list((tmp_path / "a" / "avi").glob("*.avi"))) == 1
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "b"), "--line-scan", "--preset", "uvp"])
    assert r.exit_code != 0 and "line-scan" in r.output and not (tmp_path / "b").exists()


# --- realism -------------------------------------------------------------------------------

def _owned(density: str, n: int, size=(2048, 2048), share=None, seed=3) -> list[list[ObjectSpec]]:
    cfg = SynthConfig(seed=seed, size=size, density=density, plankton_share=share)
    return [sample_owned(cfg, k) for k in range(n)]


def _plankton_share(frames: list[list[ObjectSpec]]) -> float:
    cats = [s.category_id for f in frames for s in f]
    return sum(c in PLANKTON_IDS for c in cats) / max(len(cats), 1)


def test_mixed_frames() -> None:
    frames = _owned("mixed", 20)
    counts = [len(f) for f in frames]
    assert 45 <= min(counts) and max(counts) <= 420
    cats = Counter(s.category_id for f in frames for s in f)
    assert cats.most_common(1)[0][0] == MARINE_SNOW
    assert set(cats) == set(range(1, 9))
    assert 0.03 <= _plankton_share(frames) <= 0.12


def test_dense_frame_rendered() -> None:
    cfg = SynthConfig(seed=2, density="dense")
    frame = render_frame(cfg, 0)
    cats = Counter(o.spec.category_id for o in frame.objects)
    assert 1000 <= len(frame.objects) <= 2500
    assert cats.most_common(1)[0][0] == MARINE_SNOW and cats[MARINE_SNOW] > 0.7 * len(frame.objects)
    share = sum(cats[c] for c in PLANKTON_IDS) / len(frame.objects)
    assert 0.003 <= share <= 0.025


def test_dense_and_sparse_counts() -> None:
    dense = _owned("dense", 10)
    assert all(1000 <= len(f) <= 2500 for f in dense)
    assert 0.005 <= _plankton_share(dense) <= 0.02
    sparse = [len(f) for f in _owned("sparse", 60)]
    assert max(sparse) <= 30 and 0.25 <= np.mean(np.array(sparse) <= 3) <= 0.6


def test_plankton_share_override() -> None:
    frames = _owned("mixed", 20, share=0.5)
    assert abs(_plankton_share(frames) - 0.5) < 0.05
    assert _plankton_share(_owned("dense", 2, share=0.0)) == 0.0
    assert set(s.category_id for f in frames for s in f) == set(range(1, 9))


def test_sizes_span_two_orders_of_magnitude() -> None:
    rng = np.random.default_rng(0)
    snow = sample_sizes(np.full(5000, MARINE_SNOW), rng)
    assert snow.min() <= 5 and np.median(snow) < 20 and np.mean((snow >= 5) & (snow <= 60)) > 0.85
    for long_one in (CHAETOGNATH, APPENDICULARIAN):
        assert sample_sizes(np.full(500, long_one), rng).max() >= 800


def test_drawings_stay_within_their_reach() -> None:
    """A line-scan frame finds its neighbours' objects by reach: nothing may be drawn beyond."""
    rng = np.random.default_rng(1)
    for cid in range(1, 9):
        sizes = sample_sizes(np.full(12, cid), rng)
        sizes[0] = sample_sizes(np.full(400, cid), rng).max()  # include the biggest draws
        for i, size in enumerate(sizes):
            spec = ObjectSpec(f"t:{i}", cid, 0.0, 0.0, float(size), float(rng.uniform(0, 6.3)), 0.7,
                              float(min(rng.uniform(0.5, 3.2), blur_limit(cid, size))), i % 3 if cid == 5 else i % 2 if cid == 8 else 0,
                              int(rng.integers(2**62)))
            stamp = rasterise(spec)
            assert stamp is not None
            h, w = stamp.mask.shape
            assert max(-stamp.x0, -stamp.y0, stamp.x0 + w, stamp.y0 + h) <= spec.reach + 1, (cid, size)


def test_some_objects_cross_tile_seams_and_edges(cruise) -> None:
    root, cfg = cruise
    boxes = [a["bbox"] for a in _coco(root)["annotations"] if a["category_id"] in PLANKTON_IDS]
    seams = [m * t for t in (448, 496, 512) for m in range(1, 768 // t + 1)]
    crosses = lambda lo, size: any(lo < s < lo + size for s in seams)  # noqa: E731
    assert any(crosses(x, w) or crosses(y, h) for x, y, w, h in boxes)
    assert any(x == 0 or y == 0 or x + w == 768 or y + h == 768 for x, y, w, h in boxes)


@pytest.mark.parametrize("preset", ["isiis", "uvp"])
def test_polarity(preset: str) -> None:
    cfg = SynthConfig(seed=4, size=(512, 512), preset=preset, density="dense", plankton_share=0.2)
    frame = render_frame(cfg, 0, with_background=True)
    bg = float(np.median(frame.background))
    assert (185 <= bg <= 230) if preset == "isiis" else (4 <= bg <= 25)
    img = frame.image.astype(np.float32)
    union = np.zeros(img.shape, bool)
    for o in frame.objects:
        union |= o.full_mask(*img.shape)
    darker = []
    for o in frame.objects:
        if o.area < 12:
            continue
        m = o.full_mask(*img.shape)
        ring = cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~union
        if ring.sum() >= 10:
            darker.append(img[m].mean() < img[ring].mean())
    assert len(darker) >= 5
    assert np.mean(darker) > 0.9 if preset == "isiis" else np.mean(darker) < 0.1


# --- navigation and CTD --------------------------------------------------------------------

def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(path.open()))
    return rows[0], rows[1:]


def test_nav_and_ctd_cover_every_frame(cruise) -> None:
    root, cfg = cruise
    frame_times = [datetime.fromisoformat(i["date_captured"]) for i in _coco(root)["images"]]
    header, nav = _read_csv(root / "nav.csv")
    assert header == ["time", "lat", "lon"]
    header_ctd, ctd = _read_csv(root / "ctd.csv")
    assert header_ctd == ["time", "pressure_dbar", "depth_m", "temperature_c", "salinity_psu",
                          "fluorescence_mg_m3", "oxygen_umol_kg"]
    for rows in (nav, ctd):
        assert all(r[0].endswith("Z") for r in rows)
        times = [datetime.fromisoformat(r[0]) for r in rows]
        assert all((b - a).total_seconds() == 1 for a, b in zip(times, times[1:]))
        assert times[0] <= min(frame_times) - timedelta(seconds=10)
        assert times[-1] >= max(frame_times) + timedelta(seconds=10)
    lat, lon = np.array([[float(r[1]), float(r[2])] for r in nav]).T
    step_m = np.hypot(np.diff(lat) * 111_320, np.diff(lon) * 111_320 * np.cos(np.radians(lat[1:])))
    assert 2.0 < step_m.mean() < 3.0
    values = np.array([[float(v) for v in r[1:]] for r in ctd])
    depth, pressure = values[:, 1], values[:, 0]
    assert depth.min() >= 2 and depth.max() <= 120
    assert np.all(pressure >= depth) and np.all(pressure <= depth * 1.02 + 0.1)


def test_ctd_profiles_are_oceanographic() -> None:
    from segplank.synth.environment import Environment

    env = Environment.for_seed(0)
    t = np.arange(0, 3600.0)
    data = env.ctd(t, np.full(t.size, env.lat0))
    z = data["depth_m"]
    assert z.min() < 5 and z.max() > 115  # the tow-yo spans the range within the hour
    shallow, deep = z < 10, z > 100
    assert data["temperature_c"][shallow].mean() > data["temperature_c"][deep].mean() + 3
    assert data["oxygen_umol_kg"][shallow].mean() > data["oxygen_umol_kg"][deep].mean()
    dcm = z[np.argmax(data["fluorescence_mg_m3"])]
    assert 25 < dcm < 80
