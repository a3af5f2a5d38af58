"""The instrument configs shipped in configs/: each reads its camera's file names as the right UTC
time, and MBARI CFE ISIIS videos (MP4/MOV) are read as their frames, as AVIs are."""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from segplank.config import load_config
from segplank.frames import find_frames, parse_timestamp, read_frame, split_container_frame

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
UTC = timezone.utc
CFE_VIDEO = "CFE_ISIIS-001-2023-07-12 09-14-56.898"
CFE_START = datetime(2023, 7, 12, 9, 14, 56, 898000, UTC)


@pytest.mark.parametrize("config, polarity, name, expected", [
    ("uvp5.yaml", "bright_on_dark", "20100617101510_123.bmp", datetime(2010, 6, 17, 10, 15, 10, 123000, UTC)),
    ("uvp6.yaml", "bright_on_dark", "20260601-120005-250.png", datetime(2026, 6, 1, 12, 0, 5, 250000, UTC)),
    ("isiis.yaml", "dark_on_bright", "ISIIS_20230601_120003_250.png", datetime(2023, 6, 1, 12, 0, 3, 250000, UTC)),
    ("cfe_isiis.yaml", "dark_on_bright", f"{CFE_VIDEO}.mp4", CFE_START),
    # frame 42 of that video: 42 / 17 s later
    ("cfe_isiis.yaml", "dark_on_bright", f"{CFE_VIDEO}_0042.jpg", CFE_START + timedelta(seconds=42 / 17)),
    ("cfe_isiis.yaml", "dark_on_bright", "CFE_ISIIS-010-2024-01-26 10-14-07.102_0835_8.3m.png",
     datetime(2024, 1, 26, 10, 14, 7, 102000, UTC) + timedelta(seconds=835 / 17)),
])
def test_shipped_instrument_configs_read_their_file_names(config: str, polarity: str, name: str,
                                                          expected: datetime) -> None:
    inst = load_config(CONFIGS / config).instrument
    assert inst.polarity == polarity
    assert parse_timestamp(Path("cruise") / name, inst) == expected


def test_each_instrument_reads_only_its_own_names() -> None:
    """A UVP6 name under the UVP5 or ISIIS pattern gives no time (and find_frames says so), never a wrong one."""
    names = {"uvp5.yaml": "20100617101510_123.bmp", "uvp6.yaml": "20260601-120000-000.png",
             "isiis.yaml": "ISIIS_20230601_120000_000.png", "cfe_isiis.yaml": f"{CFE_VIDEO}_0001.jpg"}
    for config in names:
        inst = load_config(CONFIGS / config).instrument
        for other, name in names.items():
            assert (parse_timestamp(Path(name), inst) is not None) == (other == config), (config, name)


def test_cfe_frames_of_one_video_are_ordered_by_their_counter(tmp_path: Path) -> None:
    """Frames named after one video: ordered by counter (unpadded too), timed counter / frame_rate_hz apart."""
    inst = load_config(CONFIGS / "cfe_isiis.yaml").instrument
    later = "CFE_ISIIS-001-2023-07-12 09-15-56.898"
    names = [f"{CFE_VIDEO}_10.jpg", f"{later}_0000.jpg", f"{CFE_VIDEO}_9.jpg", f"{CFE_VIDEO}_0002.jpg",
             f"{CFE_VIDEO}_0000.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    frames = find_frames(tmp_path, inst)
    assert [f.path.name for f in frames] == [f"{CFE_VIDEO}_0000.jpg", f"{CFE_VIDEO}_0002.jpg", f"{CFE_VIDEO}_9.jpg",
                                              f"{CFE_VIDEO}_10.jpg", f"{later}_0000.jpg"]
    assert [f.timestamp - CFE_START for f in frames[:4]] == [timedelta(seconds=k / 17) for k in (0, 2, 9, 10)]


def _write_video(path: Path, images: list[np.ndarray], rate: float) -> None:
    """H.264 (lossless quantiser, yuv420p as cameras record it), else MPEG-4 Part 2."""
    av = pytest.importorskip("av")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        st = c.add_stream(codec, rate=Fraction(rate).limit_denominator(1000))
        st.width, st.height, st.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        if codec == "libx264":
            st.options = {"qp": "0"}
        for im in images:
            for p in st.encode(av.VideoFrame.from_ndarray(im, format="gray")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)


def _images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(40, 220, (48, 64), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("suffix, reader", [(".mp4", "pyav"), (".mov", "pyav"), (".mp4", "opencv")])
def test_mp4_and_mov_are_read_as_their_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog,
                                              suffix: str, reader: str) -> None:
    images = _images()
    video = tmp_path / f"{CFE_VIDEO}{suffix}"
    _write_video(video, images, 17.0)
    if reader == "opencv":  # PyAV absent: OpenCV's reader is the fallback
        monkeypatch.setitem(sys.modules, "av", None)
    inst = load_config(CONFIGS / "cfe_isiis.yaml").instrument
    with caplog.at_level(logging.WARNING, logger="segplank"):
        frames = find_frames(tmp_path, inst)
    assert not caplog.records  # the video's own rate is the config's: nothing to say
    assert [split_container_frame(f.path) for f in frames] == [(video, k) for k in range(4)]
    assert [f.timestamp for f in frames] == [CFE_START + timedelta(seconds=k / 17) for k in range(4)]
    # the same frame named as a picture taken from the video has the same time
    assert frames[2].timestamp == parse_timestamp(Path(f"{CFE_VIDEO}_0002.jpg"), inst)
    for f, im in zip(frames, images):
        pixels = read_frame(f.path)
        assert pixels.shape == im.shape and pixels.dtype == np.uint8  # the grey image, not yuv420p's planes
        assert np.abs(pixels.astype(int) - im).max() <= (2 if reader == "pyav" else 8)


def test_a_video_at_another_rate_than_the_config_is_said_once(tmp_path: Path, caplog) -> None:
    for k in range(2):
        _write_video(tmp_path / f"CFE_ISIIS-001-2023-07-12 09-1{k}-00.000.mp4", _images(2), 30.0)
    inst = load_config(CONFIGS / "cfe_isiis.yaml").instrument
    with caplog.at_level(logging.WARNING, logger="segplank"):
        assert len(find_frames(tmp_path, inst)) == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "segplank"]
    assert len(lines) == 1 and "2 video(s) run at another rate than instrument.frame_rate_hz = 17" in lines[0]
