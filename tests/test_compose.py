"""Frames composed from a vignette library: real organisms with exact ground truth."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segplank.synth import SynthConfig, make_cruise, render_frame
from segplank.synth.organisms import load_pool, stamp_arrays
from segplank.synth.render import background, to_uint8


def _vignette(kind: str, rng: np.random.Generator) -> np.ndarray:
    img = np.full((40, 48), 250, np.uint8)
    if kind == "ring":
        cv2.ellipse(img, (24, 20), (14, 10), 0, 0, 360, int(rng.integers(40, 90)), 3)
    elif kind == "bar":
        cv2.line(img, (6, 8), (42, 32), int(rng.integers(30, 80)), 3)
    else:
        cv2.circle(img, (24, 20), 9, int(rng.integers(120, 160)), -1)
    return img


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("organisms") / "lib"
    rng = np.random.default_rng(3)
    for taxon, kind in (("hydromedusae_ring", "ring"), ("chaetognath_bar", "bar"), ("detritus_blob", "blob")):
        (root / taxon).mkdir(parents=True)
        for k in range(5):
            cv2.imwrite(str(root / taxon / f"{k}.png"), _vignette(kind, rng))
    return root


@pytest.mark.parametrize("preset", ["isiis", "uvp"])
def test_composed_truth_is_exactly_the_pasted_pixels(library, preset):
    cfg = SynthConfig(seed=11, n_frames=2, preset=preset, size=(320, 320), plankton_share=0.5, density="dense",
                      organisms=str(library))
    pool = cfg.pool()
    cats = {c["name"]: c for c in cfg.categories()}
    assert cats["hydromedusae_ring"]["supercategory"] == "plankton"
    assert cats["detritus_blob"]["supercategory"] == "non-plankton" and "marine_snow" in cats
    library_objects = 0
    for k in range(cfg.n_frames):
        frame = render_frame(cfg, k, with_background=True)
        h, w = cfg.size
        union = np.zeros((h, w), bool)
        count = np.zeros((h, w), np.int32)
        for o in frame.objects:
            count[o.y0:o.y0 + o.mask.shape[0], o.x0:o.x0 + o.mask.shape[1]] += o.mask
        for o in frame.objects:
            full = o.full_mask(h, w)
            union |= full
            if o.spec.vignette < 0:
                continue
            library_objects += 1
            assert cfg.truth_category(o.spec) == cats[pool.names[pool.taxon[o.spec.vignette]]]["id"]
            # the organism's own pixels, where no other object lies: background x (1 - opacity), exactly
            x0, y0, op, m = stamp_arrays(pool, o.spec.vignette, o.spec.cx, o.spec.cy - (k * h if cfg.line_scan else 0),
                                         o.spec.size, o.spec.angle, o.spec.blur, o.spec.contrast, o.spec.seed)
            bg = background(cfg, k)
            level = 0.0 if preset == "isiis" else 250.0
            ys, xs = np.nonzero(m)
            fy, fx = ys + y0, xs + x0
            inside = (fy >= 0) & (fy < h) & (fx >= 0) & (fx < w)
            fy, fx, a = fy[inside], fx[inside], op[ys[inside], xs[inside]]
            alone = count[fy, fx] == 1
            want = to_uint8(bg[fy, fx] + (level - bg[fy, fx]) * a)
            assert np.array_equal(frame.image[fy[alone], fx[alone]], want[alone])
            assert full[fy, fx].all()  # the truth holds every pixel the stamp drew
            # the organism is drawn at its own size: area scales with (size / diagonal)²
            vm = pool.masks[o.spec.vignette]
            expected = vm.sum() * (o.spec.size / math.hypot(*vm.shape)) ** 2
            if not o.truncated and o.spec.blur <= 1.2:
                assert abs(o.area - expected) / expected < 0.2
        assert np.array_equal(frame.image[~union], frame.background[~union])  # nothing drawn outside the truth
    assert library_objects >= 4


def test_splits_are_disjoint_and_written_to_coco(library, tmp_path):
    train = load_pool(str(library), "train", 0, 0.2, 10.0, None)
    test = load_pool(str(library), "held_out", 0, 0.2, 10.0, None)
    every = load_pool(str(library), "all", 0, 0.2, 10.0, None)
    assert not set(train.sources) & set(test.sources)
    assert set(train.sources) | set(test.sources) == set(every.sources) and len(test.sources) == 3
    summary = make_cruise(tmp_path / "c", n_frames=2, seed=2, size=(256, 256), plankton_share=0.5,
                          organisms=library, organisms_split="held_out")
    coco = json.loads((tmp_path / "c" / "ground_truth.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert set(names.values()) >= {"hydromedusae_ring", "chaetognath_bar", "detritus_blob", "marine_snow"}
    assert sum(summary.per_category[n] for n in ("hydromedusae_ring", "chaetognath_bar")) > 0
    for a in coco["annotations"]:
        m = mask_utils.decode(a["segmentation"])
        assert m.sum() == a["area"] > 0
    stream = json.loads((tmp_path / "c" / "ground_truth_stream.json").read_text())
    assert {o["category_id"] for o in stream["objects"]} <= set(names)


def test_a_library_without_living_taxa_is_one_error(tmp_path):
    root = tmp_path / "lib" / "detritus_blob"
    root.mkdir(parents=True)
    cv2.imwrite(str(root / "0.png"), _vignette("blob", np.random.default_rng(0)))
    with pytest.raises(ValueError, match="no living taxon"):
        render_frame(SynthConfig(seed=1, n_frames=1, size=(128, 128), plankton_share=1.0,
                                 organisms=str(tmp_path / "lib")), 0)


def test_area_camera_frames_are_vignetted_jpegs(tmp_path):
    cfg = SynthConfig(seed=4, n_frames=1, preset="cfe", size=(256, 256))
    bg = background(cfg, 0)
    centre, corner = bg[120:136, 120:136].mean(), bg[:12, :12].mean()
    assert 0.5 < corner / centre < 0.72  # corners at about 60 % of the centre
    make_cruise(tmp_path / "c", n_frames=2, seed=4, preset="cfe", size=(256, 256))
    files = sorted((tmp_path / "c" / "frames").iterdir())
    assert [f.suffix for f in files] == [".jpg", ".jpg"]
    assert "line_rate_hz" not in (tmp_path / "c" / "cruise.yaml").read_text()  # snapshots, not a line scan
    frame = render_frame(cfg, 0)
    on_disk = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE).astype(int)
    diff = np.abs(on_disk - frame.image.astype(int))
    assert 0 < diff.mean() < 3  # compressed: close to what was drawn, not equal


def test_own_backgrounds_keep_their_objects_as_ignore_regions(library, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    frame = np.full((300, 300), 200, np.uint8)
    cv2.circle(frame, (150, 150), 12, 60, -1)  # an object of the user's frame no one labelled
    cv2.imwrite(str(own / "f.png"), frame)
    make_cruise(tmp_path / "c", n_frames=1, seed=6, preset="cfe", size=(256, 256), organisms=library,
                backgrounds=own, plankton_share=0.5)
    coco = json.loads((tmp_path / "c" / "ground_truth.coco.json").read_text())
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1
    m = mask_utils.decode(crowd[0]["segmentation"]).astype(bool)
    disc = np.zeros((256, 256), np.uint8)
    cv2.circle(disc, (128, 128), 12, 1, -1)  # the 300 px frame's centre crop puts it at the middle
    assert m[disc > 0].all() and m.sum() < disc.sum() * 1.6
    # the objects are drawn on the user's frame: outside every object it is that frame
    rendered = render_frame(SynthConfig(seed=6, n_frames=1, preset="cfe", size=(256, 256), organisms=str(library),
                                        backgrounds=str(own.resolve()), plankton_share=0.5), 0, with_background=True)
    own_crop = frame[22:278, 22:278]  # the user's frame, cropped at its centre to the cruise's size
    turned = [own_crop, own_crop[:, ::-1], own_crop[::-1], own_crop[::-1, ::-1]]
    assert any(np.array_equal(rendered.background, t) for t in turned)
    union = np.zeros((256, 256), bool)
    for o in rendered.objects:
        union |= o.full_mask(256, 256)
    assert np.array_equal(rendered.image[~union], rendered.background[~union])
