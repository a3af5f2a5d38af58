import numpy as np
import pytest

from segplank.tiling import (component_boxes, crop_tiles, foreground_map, occupied_tiles, tile_grid, tile_proposals,
                             to_model_input)


def test_grid_covers_frame_with_full_tiles():
    w = tile_grid(2048, 2048, 560, 64)
    assert w.shape == (16, 4)
    assert (w[:, 2] - w[:, 0] == 560).all() and (w[:, 3] - w[:, 1] == 560).all()
    assert w[:, 2].max() == 2048 and w[:, 3].max() == 2048
    xs = np.unique(w[:, 0])
    assert (np.diff(xs) <= 560 - 64).all()


def test_grid_last_tile_moves_inward_and_small_frames():
    w = tile_grid(1000, 700, 512, 64)
    assert w[:, 2].max() == 700 and (w[:, 0] >= 0).all()
    assert (w[:, 2] - w[:, 0] == 512).all()
    assert tile_grid(100, 80, 512, 64).tolist() == [[0, 0, 80, 100]]


@pytest.mark.parametrize("polarity, bg, obj", [("dark_on_bright", 210, 120), ("bright_on_dark", 12, 120)])
def test_foreground_test_skips_empty_tiles_both_polarities(polarity, bg, obj):
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(bg, 3, (1024, 1024)), 0, 255).astype(np.uint8)
    img[:, ::7] = np.clip(img[:, ::7].astype(int) + (6 if bg > 100 else 2), 0, 255)  # line-scan streaks
    img[300:306, 700:708] = obj  # one small object
    windows = tile_grid(1024, 1024, 256, 32)
    fg = foreground_map(img, polarity, 12.0, 4)
    occ = occupied_tiles(fg, windows, 4, 2)
    hit = [(x0 <= 700 < x1 and y0 <= 300 < y1) for x0, y0, x1, y1 in windows]
    assert occ[np.array(hit)].all()
    assert occ.sum() <= 4  # only the tiles that hold it


def test_model_input_polarity_and_padding():
    img = np.full((100, 80), 200, np.uint8)
    assert np.allclose(to_model_input(img, "dark_on_bright"), 200 / 255)
    assert np.allclose(to_model_input(img, "bright_on_dark"), 1 - 200 / 255)
    assert to_model_input(img.astype(np.uint16) * 257, "dark_on_bright").max() == pytest.approx(200 / 255)
    tiles = crop_tiles(to_model_input(img, "dark_on_bright"), tile_grid(100, 80, 128, 16), 128)
    assert tiles.shape == (1, 128, 128)


def test_component_boxes_frame_whole_objects_and_clip_to_tiles():
    img = np.full((400, 600), 200, np.uint8)
    img[100:120, 30:330] = 60  # a long thin organism across two tiles
    img[300:304, 500:504] = 60  # a speck
    fg = foreground_map(img, "dark_on_bright", contrast=12, downsample=4)
    boxes = component_boxes(fg, downsample=4, min_pixels=1)
    assert len(boxes) == 2
    long = boxes[np.argmax(boxes[:, 2] - boxes[:, 0])]
    # the box holds the whole object, within the downsampling step plus its pad
    assert long[0] <= 30 <= long[0] + 8 and long[2] - 8 <= 330 <= long[2]
    assert long[1] <= 100 and long[3] >= 120
    windows = np.array([[0, 0, 256, 256], [192, 0, 448, 256], [0, 200, 256, 400]])
    per_tile = tile_proposals(boxes, windows)
    assert [len(p) for p in per_tile] == [1, 1, 0]
    assert per_tile[0][0, 2] == 256 and per_tile[1][0, 0] == 0  # clipped at the tile edges
    assert component_boxes(np.zeros((10, 10), bool), 4).shape == (0, 4)
