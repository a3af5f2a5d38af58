import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segplank.io.rle import encode_cropped, encode_in_frame


@pytest.mark.parametrize("origin, shape", [((0, 0), (5, 7)), ((10, 3), (4, 9)), ((40, 20), (10, 10)),
                                           ((-3, -2), (6, 6)), ((45, 25), (8, 8)), ((0, 0), (30, 50))])
def test_frame_rle_from_crop_equals_full_frame_encoding(origin, shape):
    rng = np.random.default_rng(sum(origin) + shape[0])
    h, w = 30, 50
    bm = rng.random(shape) > 0.5
    full = np.zeros((h, w), np.uint8)
    x0, y0 = origin
    for r in range(shape[0]):
        for c in range(shape[1]):
            if bm[r, c] and 0 <= y0 + r < h and 0 <= x0 + c < w:
                full[y0 + r, x0 + c] = 1
    got = encode_in_frame(bm, origin, h, w)
    ref = mask_utils.encode(np.asfortranarray(full))
    assert got["counts"] == ref["counts"].decode()
    assert np.array_equal(mask_utils.decode({"size": [h, w], "counts": got["counts"].encode()}), full)


def test_cropped_rle_round_trip():
    bm = np.zeros((4, 6), bool)
    bm[1:3, 2:5] = True
    rle = encode_cropped(bm)
    assert rle["size"] == [4, 6]
    assert np.array_equal(mask_utils.decode({"size": [4, 6], "counts": rle["counts"].encode()}).astype(bool), bm)


def test_frames_root_finds_a_video_cruise_by_its_video_files(tmp_path):
    """A video's frames are named ``clip.avi/clip_000001``: the root is the folder holding clip.avi."""
    from segplank.runs import frames_root

    (tmp_path / "cruise" / "videos").mkdir(parents=True)
    (tmp_path / "cruise" / "videos" / "clip.avi").write_bytes(b"\0")
    manifest = {"cruise_dir": str(tmp_path / "cruise")}
    assert frames_root(manifest, tmp_path / "out", None, ["videos/clip.avi/clip_000001"]) == tmp_path / "cruise"
