"""frames: finding a cruise's frames in time order, decoding them, and skipping bad files."""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from segplank import frames as fr
from segplank.config import ConfigError, InstrumentConfig
from segplank.export.parquet import frame_key
from segplank.frames import FrameError, FrameSource, find_frames, parse_timestamp, read_frame

UTC = timezone.utc
INSTRUMENT = InstrumentConfig(pixel_size_um=12.5)
RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def stamp(second: int, ms: int = 0) -> str:
    return f"ISIIS_20230601_1200{second:02d}_{ms:03d}"


def png_bytes(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def jpeg_bytes(array: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", array)[1].tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tiff(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **kwargs)
    return path


@pytest.fixture
def cruise(tmp_path: Path) -> Path:
    """A tiny cruise: good frames of every kind in nested folders, bad files, noise to ignore."""
    root = tmp_path / "cruise"
    write(root / "a" / f"{stamp(0, 500)}.png", png_bytes(GREY8))
    tiff(root / "a" / f"{stamp(0, 0)}.tif", GREY16)
    write(root / "b" / "deep" / f"{stamp(1)}.jpg", jpeg_bytes(GREY8))
    write(root / f"{stamp(2)}.bmp", cv2.imencode(".bmp", GREY8)[1].tobytes())
    Image.fromarray(RGB8).save(root / f"{stamp(3)}.png")
    write(root / f"{stamp(4)}.PNG", png_bytes(GREY16))
    write(root / "c" / "unnamed.png", png_bytes(GREY8))  # time from frames.csv: 12:00:00.250
    write(root / "zz_no_time.png", png_bytes(GREY8))  # no time at all: last
    # bad files
    write(root / f"{stamp(5)}.png", b"")
    write(root / f"{stamp(6)}.png", b"these are the operator's notes, not a frame\n")
    good_png = png_bytes(RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    write(root / f"{stamp(7)}.png", good_png[: len(good_png) // 2])
    good_jpg = jpeg_bytes(RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    write(root / f"{stamp(8)}.jpg", good_jpg[: len(good_jpg) // 2])
    tiff(root / f"{stamp(9)}.tif", GREY16.astype(np.float32))
    # to be ignored: hidden folder and file, the run's output folder, other extensions
    write(root / ".thumbnails" / f"{stamp(10)}.png", png_bytes(GREY8))
    write(root / f"._{stamp(11)}.png", b"AppleDouble")
    write(root / "out" / "ecotaxa" / f"{stamp(12)}.png", png_bytes(GREY8))
    write(root / "notes.txt", b"hello")
    (root / "frames.csv").write_text("path,time\nc/unnamed.png,2023-06-01T12:00:00.250Z\n")
    return root


GOOD_ORDER = [f"{stamp(0, 0)}.tif", "unnamed.png", f"{stamp(0, 500)}.png", f"{stamp(1)}.jpg",
              f"{stamp(2)}.bmp", f"{stamp(3)}.png", f"{stamp(4)}.PNG"]
BAD = {f"{stamp(5)}.png": "empty file (0 bytes)",
       f"{stamp(6)}.png": "not an image",
       f"{stamp(7)}.png": "truncated PNG data (re-copy the file from the instrument disk)",
       f"{stamp(8)}.jpg": "truncated JPEG data",
       f"{stamp(9)}.tif": "unsupported pixel type: float32"}


def test_parse_timestamp_is_utc() -> None:
    assert parse_timestamp(Path("x") / f"{stamp(3, 250)}.png", INSTRUMENT) == datetime(2023, 6, 1, 12, 0, 3, 250000, UTC)
    assert parse_timestamp(Path("frame.png"), INSTRUMENT) is None
    assert parse_timestamp(Path("ISIIS_20231301_120000_000.png"), INSTRUMENT) is None  # month 13
    zoned = InstrumentConfig(timestamp_regex=r"(?P<ts>\d{8}T\d{6}[+-]\d{4})", timestamp_format="%Y%m%dT%H%M%S%z")
    ts = parse_timestamp(Path("uvp_20230601T140000+0200.png"), zoned)
    assert ts == datetime(2023, 6, 1, 12, 0, tzinfo=UTC) and ts.utcoffset().total_seconds() == 0


def test_find_frames_in_time_order(cruise: Path) -> None:
    found = find_frames(cruise, INSTRUMENT, exclude=[cruise / "out"])
    names = [f.path.name for f in found]
    assert names == GOOD_ORDER[:3] + [f"{stamp(1)}.jpg", f"{stamp(2)}.bmp", f"{stamp(3)}.png", f"{stamp(4)}.PNG",
                                      *sorted(BAD)] + ["zz_no_time.png"]
    assert [f.index for f in found] == list(range(len(found)))
    assert all(f.pixel_size_um == 12.5 for f in found)
    assert found[1].timestamp == datetime(2023, 6, 1, 12, 0, 0, 250000, UTC)  # from frames.csv
    assert found[-1].timestamp is None
    assert all(f.timestamp.tzinfo == UTC for f in found[:-1])


def test_frame_index_is_read_when_the_cruise_is_named_relative(cruise: Path, monkeypatch) -> None:
    """A cruise folder given as a relative path (`segplank infer cruise/`) still finds frames.csv's times."""
    monkeypatch.chdir(cruise.parent)
    found = find_frames(Path(cruise.name), INSTRUMENT, exclude=[Path(cruise.name) / "out"])
    unnamed = [f for f in found if f.path.name == "unnamed.png"]
    assert unnamed and unnamed[0].timestamp == datetime(2023, 6, 1, 12, 0, 0, 250000, UTC)


def test_excluded_and_hidden_folders_are_ignored(cruise: Path) -> None:
    names = {f.path.name for f in find_frames(cruise, INSTRUMENT, exclude=[cruise / "out"])}
    assert f"{stamp(12)}.png" not in names  # the output folder
    assert f"{stamp(10)}.png" not in names and f"._{stamp(11)}.png" not in names  # hidden
    assert f"{stamp(12)}.png" in {f.path.name for f in find_frames(cruise, INSTRUMENT)}


def test_missing_cruise_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cruise folder not found"):
        find_frames(tmp_path / "nope", INSTRUMENT)


@pytest.mark.parametrize("content, message", [
    ("file,when\na.png,2023-06-01T12:00:00\n", "needs the columns 'path' and 'time'"),
    ("path,time\na.png,yesterday\n", "line 2: time 'yesterday' is not ISO-8601"),
])
def test_bad_frame_index_stops_at_start(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "frames.csv").write_text(content)
    with pytest.raises(ConfigError, match=message):
        find_frames(tmp_path, INSTRUMENT)


def test_good_frames_decode_to_grey(tmp_path: Path) -> None:
    assert np.array_equal(read_frame(write(tmp_path / "g8.png", png_bytes(GREY8))), GREY8)
    g16 = read_frame(write(tmp_path / "g16.png", png_bytes(GREY16)))
    assert g16.dtype == np.uint16 and np.array_equal(g16, GREY16)
    assert np.array_equal(read_frame(tiff(tmp_path / "g16.tif", GREY16)), GREY16)
    assert np.array_equal(read_frame(tiff(tmp_path / "g16z.tif", GREY16, compression="zlib")), GREY16)
    assert np.array_equal(read_frame(write(tmp_path / "g8.bmp", cv2.imencode(".bmp", GREY8)[1].tobytes())), GREY8)
    jpg = read_frame(write(tmp_path / "g8.jpg", jpeg_bytes(GREY8)))
    assert jpg.dtype == np.uint8 and jpg.shape == GREY8.shape


def test_colour_alpha_and_bilevel_frames(tmp_path: Path) -> None:
    expected = cv2.cvtColor(RGB8, cv2.COLOR_RGB2GRAY)
    Image.fromarray(RGB8).save(tmp_path / "rgb.png")
    assert np.array_equal(read_frame(tmp_path / "rgb.png"), expected)
    Image.fromarray(np.dstack([RGB8, np.full((12, 10), 7, np.uint8)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_frame(tmp_path / "rgba.png"), expected)
    assert np.array_equal(read_frame(tiff(tmp_path / "rgb.tif", RGB8, photometric="rgb")), expected)
    rgb16 = (RGB8.astype(np.uint16) * 257)
    write(tmp_path / "rgb16.png", png_bytes(rgb16[..., ::-1]))  # OpenCV writes BGR
    out = read_frame(tmp_path / "rgb16.png")
    assert out.dtype == np.uint16 and np.array_equal(out, cv2.cvtColor(rgb16, cv2.COLOR_RGB2GRAY))
    bits = GREY8 > 127
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert np.array_equal(read_frame(tmp_path / "bits.png"), bits * np.uint8(255))
    assert np.array_equal(read_frame(tiff(tmp_path / "bits.tif", bits, photometric="minisblack")), bits * np.uint8(255))
    # min-is-white (fax style): a set bit is black
    assert np.array_equal(read_frame(tiff(tmp_path / "white.tif", bits, photometric="miniswhite")), ~bits * np.uint8(255))


@pytest.mark.parametrize("name, make, reason", [
    ("int32.tif", lambda p: tiff(p, GREY16.astype(np.int32)), "unsupported pixel type: int32"),
    ("bands.tif", lambda p: tiff(p, np.zeros((12, 10, 5), np.uint8), photometric="minisblack", planarconfig="contig"),
     "unsupported layout"),
    ("cut.tif", lambda p: write(p, tiff(p, GREY16).read_bytes()[:200]), "truncated TIFF data"),
    ("zero.png", lambda p: write(p, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(4) + (10).to_bytes(4, "big")
                                 + b"\x08\x00\x00\x00\x00" + bytes(20)), "zero-size image"),
    ("stub.bmp", lambda p: write(p, b"BM" + bytes(10)), "corrupt BMP data"),
])
def test_more_bad_files(tmp_path: Path, name: str, make, reason: str) -> None:
    path = make(tmp_path / name)
    with pytest.raises(FrameError) as err:
        read_frame(path)
    assert reason in err.value.reason


def test_content_decides_the_format(tmp_path: Path) -> None:
    assert read_frame(write(tmp_path / "really_a_jpeg.png", jpeg_bytes(GREY8))).shape == GREY8.shape


def test_frame_source_skips_bad_files_quietly(cruise: Path, caplog: pytest.LogCaptureFixture,
                                              capfd: pytest.CaptureFixture) -> None:
    source = FrameSource(find_frames(cruise, INSTRUMENT, exclude=[cruise / "out"]))
    with caplog.at_level(logging.WARNING, logger="segplank"):
        out = list(source)
    assert [info.path.name for info, _ in out] == GOOD_ORDER + ["zz_no_time.png"]
    for info, pixels in out:
        assert pixels.ndim == 2 and (info.height, info.width) == pixels.shape == (12, 10)
    dtypes = {info.path.name: pixels.dtype for info, pixels in out}
    assert dtypes[f"{stamp(0, 0)}.tif"] == dtypes[f"{stamp(4)}.PNG"] == np.uint16
    assert dtypes[f"{stamp(1)}.jpg"] == dtypes[f"{stamp(3)}.png"] == np.uint8
    assert {s.path.name: s.reason for s in source.skipped}.keys() == BAD.keys()
    for s in source.skipped:
        assert BAD[s.path.name] in s.reason
    lines = [r.getMessage() for r in caplog.records if r.name == "segplank" and r.getMessage().startswith("skipped")]
    assert len(lines) == len(BAD)
    assert f"skipped {cruise / f'{stamp(7)}.png'}: truncated PNG data (re-copy the file from the instrument disk)" in lines
    captured = capfd.readouterr()
    printed = captured.out + captured.err
    # no libpng/libjpeg chatter on the terminal (segplank's own log lines may show there when an
    # earlier test in this process installed the CLI's log handler)
    assert not any(w in printed.lower() for w in ("libpng", "libjpeg", "premature end", "corrupt jpeg"))


def test_frame_source_is_lazy(cruise: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(fr, "read_frame", lambda path: calls.append(path) or GREY8)
    source = FrameSource(find_frames(cruise, INSTRUMENT))
    stream = iter(source)
    assert calls == []
    next(stream)
    assert len(calls) == 1


def test_tiffs_tifffile_cannot_decode_here_go_through_pillow(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    Image.fromarray(GREY8).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # LZW needs imagecodecs in tifffile
    assert np.array_equal(read_frame(tmp_path / "lzw.tif"), GREY8)
    Image.fromarray(GREY8).convert("P").save(tmp_path / "palette.tif")
    assert read_frame(tmp_path / "palette.tif").dtype == np.uint8
    # Pillow writes the image directory last: a cut file loses it
    data = (tmp_path / "lzw.tif").read_bytes()
    with pytest.raises(FrameError, match="truncated TIFF data"):
        read_frame(write(tmp_path / "cut.tif", data[: len(data) // 2]))
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""


# --- AVI: each video frame is a frame of the stream ------------------------------------------

def _avi_cruise(tmp_path, n=4):
    from segplank.synth import SynthConfig, render_frame
    from segplank.synth.linescan import write_avi

    cfg = SynthConfig(seed=2, n_frames=n, preset="isiis", density="sparse", size=(64, 96))
    images = [render_frame(cfg, k).image for k in range(n)]
    d = tmp_path / "avi"
    d.mkdir()
    write_avi(d / "ISIIS_20260601_120000_000.avi", images, frame_rate_hz=2.0)
    return d, images


def test_avi_frames_are_read_in_order_with_their_times(tmp_path):
    from segplank.config import InstrumentConfig
    from segplank.frames import find_frames, read_frame, split_container_frame

    d, images = _avi_cruise(tmp_path)
    frames = find_frames(d, InstrumentConfig(extensions=(".avi",), frame_rate_hz=2.0))
    assert len(frames) == 4 and [f.index for f in frames] == [0, 1, 2, 3]
    assert [(f.timestamp - frames[0].timestamp).total_seconds() for f in frames] == [0, 0.5, 1.0, 1.5]
    assert len({frame_key(f.path.relative_to(d).as_posix()) for f in frames}) == 4
    assert split_container_frame(frames[2].path)[1] == 2
    for f, im in zip(frames, images):
        assert np.array_equal(read_frame(f.path), im)  # lossless
    assert np.array_equal(read_frame(frames[1].path), images[1])  # backwards: reopened


@pytest.mark.parametrize("reader", ["pyav", "opencv"])
def test_truncated_and_unreadable_avi(tmp_path, caplog, monkeypatch, reader):
    if reader == "opencv":  # PyAV absent: OpenCV's reader is the fallback
        monkeypatch.setitem(sys.modules, "av", None)
    else:
        pytest.importorskip("av")
    from segplank.config import InstrumentConfig
    from segplank.frames import FrameSource, find_frames

    d, images = _avi_cruise(tmp_path)
    avi = next(d.glob("*.avi"))
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) * 2 // 3])
    inst = InstrumentConfig(extensions=(".avi",))
    frames = find_frames(d, inst)
    assert 1 <= len(frames) < 4 and "truncated video" in caplog.text
    src = FrameSource(frames)
    got = list(src)
    assert len(got) + len(src.skipped) == len(frames) and len(got) >= 1
    assert np.array_equal(got[0][1], images[0])
    caplog.clear()
    avi.write_bytes(data[:100])
    assert find_frames(d, inst) == []
    lines = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "not a readable video" in lines[0].getMessage()


# --- frames without a time: one warning that says why --------------------------------------

def test_frames_without_a_time_are_reported_once_with_the_reason(tmp_path, caplog):
    """UVP6 names under the default (ISIIS) pattern, a month 13: one line naming pattern, format, example, fix."""
    for name in ("20260601-120001-000.png", "20260601-120000-000.png", "ISIIS_20231301_120000_000.png",
                 f"{stamp(0)}.png", "listed.png"):
        write(tmp_path / name, png_bytes(GREY8))
    (tmp_path / "frames.csv").write_text("path,time\nlisted.png,2023-06-01T12:00:01Z\n")
    with caplog.at_level(logging.WARNING, logger="segplank"):
        frames = find_frames(tmp_path, INSTRUMENT)
    assert [f.timestamp is None for f in frames] == [False, False, True, True, True]
    lines = [r.getMessage() for r in caplog.records if r.name == "segplank"]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("3 of 5 frames have no time") and "\n" not in line
    assert f"2 with names that do not match instrument.timestamp_regex '{INSTRUMENT.timestamp_regex}'" in line
    assert "(e.g. '20260601-120000-000.png')" in line
    assert "1 with names that match it but hold no valid date for instrument.timestamp_format '%Y%m%d_%H%M%S_%f'" in line
    assert "'ISIIS_20231301_120000_000.png'" in line
    assert "cruise.yaml" in line and "configs/" in line and "frames.csv" in line
    caplog.clear()
    for name in ("20260601-120001-000.png", "20260601-120000-000.png", "ISIIS_20231301_120000_000.png"):
        (tmp_path / name).unlink()
    with caplog.at_level(logging.WARNING, logger="segplank"):
        find_frames(tmp_path, INSTRUMENT)
    assert not caplog.records  # every frame has a time: nothing to say


# --- multi-page TIFF: each full-size page is a frame of the stream ---------------------------

def test_a_multi_page_tiff_is_read_as_its_pages(tmp_path):
    pages = RNG.integers(0, 65536, (3, 12, 10), dtype=np.uint16)
    stack = tiff(tmp_path / f"{stamp(0)}.tif", pages, photometric="minisblack")
    tiff(tmp_path / f"{stamp(5)}.tif", GREY16)  # one page: a plain frame
    with tifffile.TiffWriter(tmp_path / f"{stamp(6)}.tif") as w:  # an image and its thumbnail: one frame
        w.write(GREY16)
        w.write(GREY16[::2, ::2], subfiletype=1)
    frames = find_frames(tmp_path, InstrumentConfig(frame_rate_hz=4.0))
    assert [str(f.path.relative_to(tmp_path)) for f in frames] == [
        f"{stamp(0)}.tif/{stamp(0)}_00000{k}" for k in range(3)] + [f"{stamp(5)}.tif", f"{stamp(6)}.tif"]
    assert [f.timestamp for f in frames[:3]] == [datetime(2023, 6, 1, 12, 0, 0, k * 250000, UTC) for k in range(3)]
    assert fr.split_container_frame(frames[1].path) == (stack, 1)
    assert frame_key(frames[1].path.relative_to(tmp_path).as_posix()) == f"{stamp(0)}_000001"  # its objects' ids
    for f, page in zip(frames, pages):
        assert np.array_equal(read_frame(f.path), page)
    assert np.array_equal(read_frame(frames[0].path), pages[0])  # backwards
    assert np.array_equal(read_frame(frames[3].path), GREY16)
    assert np.array_equal(read_frame(frames[4].path), GREY16)  # the full-size image, not its thumbnail
    got = [(info.path, pixels) for info, pixels in FrameSource(frames)]
    assert len(got) == 5 and np.array_equal(got[2][1], pages[2])


def test_tiff_stacks_pillow_decodes_and_channel_stacks(tmp_path, caplog):
    """LZW pages (tifffile lacks the codec here) are decoded by Pillow, page by page; an OME-TIFF of
    channels is one image, read as its first channel, with a warning."""
    pages = [Image.fromarray(GREY8 // (k + 1)) for k in range(3)]
    pages[0].save(tmp_path / f"{stamp(0)}.tif", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    tiff(tmp_path / f"{stamp(5)}.ome.tif", np.stack([GREY16] * 3), photometric="minisblack",
         metadata={"axes": "CYX"})
    with caplog.at_level(logging.WARNING, logger="segplank"):
        frames = find_frames(tmp_path, INSTRUMENT)
    assert len(frames) == 4 and frames[3].path.name == f"{stamp(5)}.ome.tif"
    for f, page in zip(frames, pages):
        assert np.array_equal(read_frame(f.path), np.asarray(page))
    assert np.array_equal(read_frame(frames[3].path), GREY16)
    assert "a TIFF of channels (axes CYX)" in caplog.text


def test_a_tiff_stack_cut_short_keeps_its_whole_pages(tmp_path, caplog, capfd):
    """The pages left are read, the lost ones skipped with the reason; tifffile's own chatter stays off the terminal."""
    pages = RNG.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    stack = tiff(tmp_path / f"{stamp(0)}.tif", pages, photometric="minisblack")
    frames = find_frames(tmp_path, INSTRUMENT)
    data = stack.read_bytes()
    stack.write_bytes(data[: len(data) - 64 * 64 // 2])  # the end of the file lost
    src = FrameSource(frames)
    got = list(src)
    assert len(got) >= 1 and np.array_equal(got[0][1], pages[0]) and len(got) + len(src.skipped) == 3
    assert all("re-copy" in s.reason for s in src.skipped)
    with caplog.at_level(logging.WARNING, logger="segplank"):
        find_frames(tmp_path, INSTRUMENT)
    assert "damaged TIFF" in caplog.text
    printed = capfd.readouterr()
    assert "tifffile" not in printed.out + printed.err and "invalid page" not in printed.out + printed.err
