"""The stitcher alone, fed ground truth cut into tiles as a perfect model would see it."""
import cv2
import numpy as np
import pytest
import torch

from segplank.joins import connected_components
from segplank.stitch import Stitcher
from segplank.tiling import tile_grid

from .helpers import mask_iou, paste, perfect_tile_detections

H = W = 1024
TILE, OVERLAP = 256, 32  # stride 224: seams at 224..256, 448..480, ...


def _ellipse(cx, cy, ax, ay, angle):
    m = np.zeros((H, W), np.uint8)
    cv2.ellipse(m, (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    return m.astype(bool)


def _scene():
    return [
        _ellipse(240, 100, 30, 12, 0),        # straddles a vertical seam
        _ellipse(460, 470, 25, 25, 0),        # on a tile corner (4 tiles)
        _ellipse(512, 700, 420, 9, 10),       # slender, longer than 3 tiles
        _ellipse(700, 240, 60, 60, 0),        # straddles a horizontal seam
        _ellipse(100, 900, 6, 4, 30),         # small, inside one tile
        _ellipse(1010, 300, 20, 14, 0),       # cut by the frame edge
    ]


def _touching_pair():
    # two organisms touching at x = 240, inside the overlap band of two tiles
    a = _ellipse(215, 600, 25, 10, 0)
    b = _ellipse(265, 600, 25, 10, 0)
    b &= ~a
    return [a, b]


@pytest.mark.parametrize("scene", [_scene, _touching_pair])
def test_each_object_once_with_whole_mask(scene):
    masks = scene()
    windows = tile_grid(H, W, TILE, OVERLAP)
    tile_dets, tile_ids = perfect_tile_detections(masks, windows, mask_size=128)
    out = Stitcher(mask_size=256)(tile_dets, windows, tile_ids)
    assert len(out) == len(masks)
    cropped = out.masks.to_cropped(out.boxes.numpy())
    pred = [paste(o, b, (H, W)) for o, b in zip(cropped.origins, cropped.bitmaps)]
    for gt in masks:
        best = max(mask_iou(gt, p) for p in pred)
        assert best >= 0.9


def test_parts_per_object_recorded():
    masks = [_ellipse(512, 700, 420, 9, 10)]
    windows = tile_grid(H, W, TILE, OVERLAP)
    tile_dets, tile_ids = perfect_tile_detections(masks, windows)
    out = Stitcher()(tile_dets, windows, tile_ids)
    assert len(out) == 1
    assert int(out.extra["n_parts"][0]) >= 4


def test_same_tile_duplicates_merge_but_neighbours_do_not():
    masks = [_ellipse(100, 100, 20, 10, 0), _ellipse(100, 100, 20, 10, 0), _ellipse(100, 125, 20, 10, 0) & ~_ellipse(100, 100, 20, 10, 0)]
    windows = np.array([[0, 0, 256, 256]])
    tile_dets, tile_ids = perfect_tile_detections(masks, windows, labels=[1, 2, 1])
    out = Stitcher()(tile_dets, windows, tile_ids)
    assert len(out) == 2


def test_empty_frame():
    windows = tile_grid(H, W, TILE, OVERLAP)
    tile_dets, tile_ids = perfect_tile_detections([], windows)
    out = Stitcher()(tile_dets, windows, tile_ids)
    assert len(out) == 0
    out = Stitcher()([], windows, np.zeros(0, int))
    assert len(out) == 0


def test_one_pixel_object():
    m = np.zeros((H, W), bool)
    m[500, 300] = True
    windows = tile_grid(H, W, TILE, OVERLAP)
    tile_dets, tile_ids = perfect_tile_detections([m], windows)
    out = Stitcher()(tile_dets, windows, tile_ids)
    assert len(out) == 1


def test_connected_components_chain():
    i = torch.tensor([0, 2, 3, 6])
    j = torch.tensor([1, 1, 4, 5])
    comp = connected_components(7, i, j)
    assert comp.tolist() == [0, 0, 0, 3, 3, 5, 5]
    # the frame cuts' numpy arrays get the same answer, in numpy
    same = connected_components(7, i.numpy(), j.numpy())
    assert isinstance(same, np.ndarray) and same.tolist() == comp.tolist()


def test_shifted_moves_boxes_and_cropped_masks_together():
    """One offset for all (a frame cut's rows) or one per detection (its tile's window)."""
    from segplank.joins import shifted
    from segplank.structures import CroppedMasks, Detections, RoiMasks

    bitmaps = (np.ones((2, 3), bool), np.ones((4, 1), bool))
    d = Detections(boxes=np.array([[1, 2, 4, 4], [5, 0, 6, 4]], np.float32), scores=np.ones(2, np.float32),
                   labels=np.ones(2, np.int64), masks=CroppedMasks(np.array([[1, 2], [5, 0]]), bitmaps))
    down = shifted(d, 0, 10)
    assert down.boxes.tolist() == [[1, 12, 4, 14], [5, 10, 6, 14]] and down.masks.origins.tolist() == [[1, 12], [5, 10]]
    t = Detections(boxes=torch.tensor([[1.0, 2, 4, 4], [5, 0, 6, 4]]), scores=torch.ones(2),
                   labels=torch.ones(2, dtype=torch.long), masks=RoiMasks(torch.zeros(2, 28, 28)))
    per = shifted(t, torch.tensor([100.0, 0]), torch.tensor([0.0, 7]))
    assert per.boxes.tolist() == [[101, 2, 104, 4], [5, 7, 6, 11]] and per.masks is t.masks


def test_dense_frame_keeps_every_object():
    rng = np.random.default_rng(0)
    masks = []
    occupied = np.zeros((H, W), bool)
    while len(masks) < 1500:
        cx, cy = rng.integers(3, W - 3, 2)
        r = int(rng.integers(1, 4))
        m = np.zeros((H, W), np.uint8)
        cv2.circle(m, (int(cx), int(cy)), r, 1, -1)
        m = m.astype(bool)
        grown = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if (grown & occupied).any():
            continue
        occupied |= m
        masks.append(m)
    windows = tile_grid(H, W, TILE, OVERLAP)
    tile_dets, tile_ids = perfect_tile_detections(masks, windows)
    out = Stitcher()(tile_dets, windows, tile_ids)
    assert len(out) == 1500


def test_dense_synthetic_frame_every_object_reaches_the_output():
    """≥ 1,500 objects cut into 560-px tiles by a perfect model: all reach the written rows."""
    from pathlib import Path

    from segplank.config import FilterConfig, MeasureConfig
    from segplank.engine.stages import Postprocessor
    from segplank.model.checkpoint import ClassMap
    from segplank.structures import FrameCounts, FrameInfo, FrameRecord
    from segplank.synth import CATEGORIES, SynthConfig, render_frame

    rf = None
    for seed in range(3, 10):  # a frame of at least 1,500 objects
        rf = render_frame(SynthConfig(seed=seed, n_frames=1, density="dense", size=(2048, 2048)), 0)
        if len(rf.objects) >= 1500:
            break
    objs = rf.objects
    assert len(objs) >= 1500
    windows = tile_grid(2048, 2048, 560, 64)
    tile_dets, tile_ids = perfect_tile_detections([(o.x0, o.y0, o.mask) for o in objs], windows,
                                                  labels=[o.spec.category_id for o in objs])
    frame = FrameInfo(Path("f.png"), 0, None, 2048, 2048, 10.0)
    out = Stitcher()(tile_dets, windows, tile_ids, frame=frame)
    # only objects drawn on top of one another (mask IoU ≥ 0.3 where two tiles overlap) may fuse
    assert len(out) >= len(objs) - 3
    post = Postprocessor(ClassMap.from_coco_categories(CATEGORIES), FilterConfig(keep_non_plankton=True),
                         MeasureConfig(), "dark_on_bright")
    counts = FrameCounts(n_classes=len(CATEGORIES) + 1)
    rec = post(post.prepare(FrameRecord(out, rf.image, counts)))
    kept, cols = rec.dets, rec.columns
    assert len(kept) == len(out) == counts.written == counts.per_class.sum()
    assert len(cols["area_px"]) == len(kept) and (cols["area_px"] > 0).all()


def test_candidate_pairs_equal_brute_force():
    """Sweep and prune finds exactly the overlapping pairs an all-pairs test finds (ties, empty boxes too)."""
    from segplank.stitch import candidate_pairs

    g = torch.Generator().manual_seed(0)
    windows = torch.tensor([[0, 0, 300, 300], [250, 0, 560, 300], [0, 250, 300, 560], [250, 250, 560, 560]],
                           dtype=torch.float32)
    for n in (0, 1, 7, 400):
        xy = torch.rand(n, 2, generator=g) * 500
        wh = torch.rand(n, 2, generator=g) * 60
        wh[::7] = 0
        if n:
            xy[::5, 0] = xy[0, 0]
        boxes = torch.cat([xy, xy + wh], 1)
        tile = torch.randint(0, 4, (n,), generator=g)
        lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
        rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        hit = ((rb - lt) > 0).all(-1) & (torch.arange(n)[:, None] < torch.arange(n)[None])
        i_ref, j_ref = torch.nonzero(hit, as_tuple=True)
        i, j, shared = candidate_pairs(boxes, tile, windows)
        # every pair found overlaps; every overlapping pair seen by both tiles is found
        assert set(zip(i.tolist(), j.tolist())) <= set(zip(i_ref.tolist(), j_ref.tolist()))
        assert (i < j).all() and len(shared) == len(i)
        ws = windows[tile[i_ref]], windows[tile[j_ref]]
        sh = torch.cat([torch.maximum(ws[0][:, :2], ws[1][:, :2]), torch.minimum(ws[0][:, 2:], ws[1][:, 2:])], 1)
        inter = torch.cat([torch.maximum(boxes[i_ref, :2], boxes[j_ref, :2]),
                           torch.minimum(boxes[i_ref, 2:], boxes[j_ref, 2:])], 1)
        seen = ((torch.minimum(inter[:, 2:], sh[:, 2:]) - torch.maximum(inter[:, :2], sh[:, :2])) > 0).all(-1)
        assert set(zip(i.tolist(), j.tolist())) == set(zip(i_ref[seen].tolist(), j_ref[seen].tolist()))


def test_bench_stitch_scaling_rows():
    """The bench's stitcher table: objects cut into tiles all come back, one per object."""
    from segplank.bench import stitch_scaling

    rows = stitch_scaling(counts=(50, 200), repeat=1)
    assert [r["objects"] for r in rows] == [50, 200]
    for r in rows:
        assert r["detections_in"] >= r["objects"] and r["objects_out"] == r["objects"] and r["seconds"] > 0
