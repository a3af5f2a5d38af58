"""Find the frames of a cruise folder, put them in time order, and decode them safely.

A cruise copied off an instrument disk often holds a few bad files (empty, cut short by a
full disk, a log file named like a frame). They must be recognised and reported, never
decoded into half-grey frames that the model would dutifully segment, and never crash a
night-long run. So :func:`read_frame` checks what it reads (Pillow or tifffile, which raise
on truncated data, where OpenCV returns a partial image with a libpng/libjpeg warning on
stderr) and says why a file is unusable; :class:`FrameSource` skips such files, keeps
the list and logs one line per file.

Frames are 2-D grey, uint8 or uint16: colour is reduced with the usual luma weights
(0.299 R + 0.587 G + 0.114 B, as OpenCV), alpha is dropped, 1-bit becomes 0/255, 16-bit
stays 16-bit.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Literal, Sequence, TypeVar

import cv2
import numpy as np
import tifffile
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from segplank.config import ConfigError, InstrumentConfig
from segplank.structures import FrameInfo

log = logging.getLogger("segplank")

INDEX_FILE = "frames.csv"  # optional: columns path (relative to the cruise folder), time (ISO-8601)
MAX_PIXELS = 1 << 31  # a header claiming more is damaged (Pillow's own limit is too low for line scans)
_RECOPY = "re-copy the file from the instrument disk"
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
# Constructing the plugin class directly skips Image.open's decompression-bomb check,
# which refuses legitimate long line-scan frames (MAX_PIXELS guards instead).
_PILLOW = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
}
_CONVERT = "segplank reads 8- or 16-bit unsigned grey or colour frames; convert the file, e.g. to 16-bit PNG"
_TO_GREY = {("RGB", 3): cv2.COLOR_RGB2GRAY, ("RGB", 4): cv2.COLOR_RGBA2GRAY,
            ("BGR", 3): cv2.COLOR_BGR2GRAY, ("BGR", 4): cv2.COLOR_BGRA2GRAY}
_TRUNCATION_HINTS = ("truncated", "failed to read", "incomplete", "premature", "unexpected end")
_UTC = timezone.utc


_NoTime = Literal["no match", "no date"]  # why a file name gives no time


class FrameError(Exception):
    """Why a file is not a usable frame, in words a user can act on (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _UsePillow(Exception):
    """A TIFF that tifffile reads but does not turn into pixels here (palette, CMYK...)."""


@dataclass(frozen=True)
class SkippedFrame:
    path: Path
    reason: str


# --- finding frames ----------------------------------------------------------------------

def parse_timestamp(path: Path, instrument: InstrumentConfig) -> datetime | None:
    """UTC time from the file name (``timestamp_regex`` group ``ts``), None if absent or invalid.

    Names without a zone are taken as UTC; a zone in the name is converted to UTC. A group
    ``frame`` (digits) is a frame counter from that time, as in MBARI's CFE ISIIS frames
    (``..._0042.jpg``: frame 42 of the video started at ``ts``): it adds frame / frame_rate_hz.
    """
    return _name_time(path, instrument)[0]


def _name_time(path: Path, instrument: InstrumentConfig) -> tuple[datetime | None, _NoTime | None]:
    """(time, None), or (None, why not): a warning must tell a name off the pattern from a bad date."""
    match = re.search(instrument.timestamp_regex, Path(path).name)
    if match is None:
        return None, "no match"
    try:
        when = _as_utc(datetime.strptime(match.group("ts"), instrument.timestamp_format))
        frame = match.groupdict().get("frame")
        return when + (timedelta(0) if frame is None else _frame_offset(int(frame), instrument.frame_rate_hz)), None
    except ValueError:  # matched the pattern but is no date (e.g. month 13)
        return None, "no date"


def _frame_offset(k: int, frame_rate_hz: float) -> timedelta:
    """Time of frame ``k`` from the first: one division, so frame k of a video and a file named after it agree."""
    return timedelta(seconds=k / frame_rate_hz)


def find_frames(cruise_dir: Path, instrument: InstrumentConfig, exclude: Sequence[Path] = ()) -> list[FrameInfo]:
    """Every frame below ``cruise_dir``, in time order; ``index`` is the position in that order.

    Searches sub-folders, skips hidden files and folders and anything under ``exclude`` (the
    run's output folder may sit inside the cruise). The time comes from the file name, else
    from ``frames.csv`` in the cruise folder; frames with neither come last, by path.
    """
    root = Path(cruise_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: cruise folder not found (give the folder that holds the frames)")
    index = read_frame_index(root)
    stamped: list[tuple[Path, datetime | None]] = []
    untimed: dict[_NoTime, tuple[int, str]] = {}  # why -> (frames, an example file name)
    other_rates: dict[Path, float] = {}  # videos whose own frame rate is not the instrument's
    for path in _image_files(root, instrument.extensions, exclude):
        ts, why = _name_time(path, instrument)
        # the walk's paths start with the cruise folder as given: relative to here, not to it
        ts = ts if ts is not None else index.get(_index_key(root, path.absolute()))
        members = _container_frames(path, ts, instrument.frame_rate_hz, other_rates)
        if ts is None and why is not None and members:
            count, example = untimed.get(why, (0, path.name))
            untimed[why] = (count + len(members), min(example, path.name))  # the same example on every run
        stamped += members
    if untimed:
        log.warning("%s", _no_time_message(untimed, len(stamped), instrument, bool(index)))
    if other_rates:
        (example, rate), *_ = other_rates.items()
        log.warning("%d video(s) run at another rate than instrument.frame_rate_hz = %g frames/s (e.g. %s: %g): "
                    "their frames are timed at %g frames/s; set instrument.frame_rate_hz to the camera's rate in "
                    "the config or cruise.yaml", len(other_rates), instrument.frame_rate_hz, example, rate,
                    instrument.frame_rate_hz)
    stamped.sort(key=lambda item: (item[1] is None, item[1] or datetime.min.replace(tzinfo=_UTC), str(item[0])))
    return [FrameInfo(path=p, index=i, timestamp=ts, pixel_size_um=instrument.pixel_size_um)
            for i, (p, ts) in enumerate(stamped)]


def _no_time_message(untimed: dict[_NoTime, tuple[int, str]], total: int, instrument: InstrumentConfig,
                     indexed: bool) -> str:
    """One line saying which frames got no time and why, at the start, before a navigation or CTD join
    would leave them without position and blame the records."""
    why = []
    if "no match" in untimed:
        count, name = untimed["no match"]
        why.append(f"{count} with names that do not match instrument.timestamp_regex '{instrument.timestamp_regex}' "
                   f"(e.g. {name!r})")
    if "no date" in untimed:
        count, name = untimed["no date"]
        why.append(f"{count} with names that match it but hold no valid date for instrument.timestamp_format "
                   f"'{instrument.timestamp_format}' (e.g. {name!r})")
    missing = sum(count for count, _ in untimed.values())
    return (f"{missing} of {total} frames have no time{' (nor a row in ' + INDEX_FILE + ')' if indexed else ''}, "
            f"so no position or depth, and come last: {'; '.join(why)}; set instrument.timestamp_regex and "
            "timestamp_format in the config or the cruise's cruise.yaml (configs/ has them for UVP5, UVP6, ISIIS "
            f"and CFE ISIIS), or give each frame's time in {INDEX_FILE} (columns path, time)")


def read_frame_index(cruise_dir: Path) -> dict[str, datetime]:
    """Times from ``cruise_dir/frames.csv`` (empty if there is none), keyed by relative path.

    A malformed index stops the run at start (ConfigError naming the line) rather than
    silently misplacing frames in time.
    """
    file = Path(cruise_dir) / INDEX_FILE
    if not file.is_file():
        return {}
    times: dict[str, datetime] = {}
    with file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns or "time" not in columns:
            raise ConfigError(f"{file}: needs the columns 'path' and 'time' (ISO-8601, UTC if no zone); "
                              f"found {columns}")
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row.get("path"):
                continue
            try:
                when = _as_utc(datetime.fromisoformat(row["time"]))
            except ValueError:
                raise ConfigError(f"{file} line {reader.line_num}: time {row['time']!r} is not ISO-8601 "
                                  "(e.g. 2023-06-01T12:00:00.250Z)") from None
            times[_index_key(Path(cruise_dir), Path(row["path"]))] = when
    return times


def _as_utc(when: datetime) -> datetime:
    return when.replace(tzinfo=_UTC) if when.tzinfo is None else when.astimezone(_UTC)


def _index_key(root: Path, path: Path) -> str:
    """A path as the index names it: relative to the cruise folder, normalised."""
    full = path if path.is_absolute() else root / path
    return os.path.normcase(os.path.normpath(os.path.relpath(os.path.abspath(full), os.path.abspath(root))))


def _image_files(root: Path, extensions: Sequence[str], exclude: Sequence[Path]) -> list[Path]:
    wanted = {("" if e.startswith(".") else ".") + e.lower() for e in extensions}
    excluded = {os.path.realpath(e) for e in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        real = os.path.realpath(dirpath)
        dirnames[:] = [d for d in dirnames
                       if not d.startswith(".") and os.path.join(real, d) not in excluded]
        found += [Path(dirpath, name) for name in filenames
                  if not name.startswith(".")
                  and os.path.splitext(name)[1].lower() in wanted
                  and os.path.join(real, name) not in excluded]
    return found


# --- containers of frames: videos (ISIIS AVI, CFE ISIIS MP4) and multi-page TIFFs ----------
# Each frame a file holds is a frame of the stream, named as if the file were a folder
# (``clip.avi/clip_000012``, ``stack.tif/stack_000002``), timed at the file's time + k / frame_rate_hz.

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov")
STACK_EXTENSIONS = (".tif", ".tiff")  # a TIFF of several full-size pages is a stack of frames
CONTAINER_EXTENSIONS = VIDEO_EXTENSIONS + STACK_EXTENSIONS
_NOT_FRAME_PAGE = 0b101  # NewSubfileType bits: reduced-resolution image (thumbnail, pyramid level), mask


def container_frame_path(container: Path, n: int) -> Path:
    """The path naming frame ``n`` of a video or TIFF stack: ``clip.avi/clip_000012`` (the file as a folder)."""
    container = Path(container)
    return container / f"{container.stem}_{n:06d}"


def split_container_frame(path: Path) -> tuple[Path, int] | None:
    """(container, frame number) of a path made by :func:`container_frame_path`, else None."""
    path = Path(path)
    if path.parent.suffix.lower() not in CONTAINER_EXTENSIONS:
        return None
    head, _, num = path.name.rpartition("_")
    return (path.parent, int(num)) if num.isdigit() and head == path.parent.stem else None


def relative_path(path: Path, root: Path) -> str:
    """A frame's path as runs record it: relative to the cruise folder (as given where it lies outside)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def source_file(path: Path) -> Path:
    """The file a frame is read from: the video or TIFF stack for one of their frames, else the path."""
    member = split_container_frame(path)
    return member[0] if member is not None else Path(path)


def _container_frames(path: Path, start: datetime | None, frame_rate_hz: float,
                      other_rates: dict[Path, float]) -> list[tuple[Path, datetime | None]]:
    """(path, time) of each frame a file holds: the file itself for an image (a one-page TIFF too), each
    readable frame of a video or TIFF stack; a video that cannot be read is logged, one line, and gives none.
    A video declaring another frame rate than ``frame_rate_hz`` goes into ``other_rates``, to be reported."""
    suffix = path.suffix.lower()
    if suffix not in CONTAINER_EXTENSIONS or (suffix in STACK_EXTENSIONS and not _tiff_links_on(path)):
        return [(path, start)]
    try:
        if suffix in STACK_EXTENSIONS:
            n, claimed, rate = _count_stack(path), 0, None
        else:
            n, claimed, rate = _video_header(path)
    except FrameError as e:
        log.warning("skipped %s: %s", path, e.reason)
        return []
    if suffix in STACK_EXTENSIONS and n <= 1:  # one full-size page beside thumbnails: an image
        return [(path, start)]
    if claimed and n < claimed:
        log.warning("%s: truncated video, %d of its %d frames are readable (%s)", path, n, claimed, _RECOPY)
    if rate and abs(rate - frame_rate_hz) > 0.01 * frame_rate_hz:
        other_rates[path] = rate
    return [(container_frame_path(path, k), None if start is None else start + _frame_offset(k, frame_rate_hz))
            for k in range(n)]


def _tiff_links_on(path: Path) -> bool:
    """Whether a TIFF's first image directory links to another: two small reads, where opening every
    one-page TIFF of a cruise with tifffile would cost a listing seconds."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
            if not any(head.startswith(magic) for magic, kind in _MAGIC if kind == "TIFF"):
                return False
            order, big, first = _tiff_header(head)
            if first is None:
                return False
            fh.seek(first)
            entries = int.from_bytes(fh.read(8 if big else 2), order)
            fh.seek(entries * (20 if big else 12), os.SEEK_CUR)
            link = fh.read(8 if big else 4)
    except (OSError, ValueError, OverflowError):
        return False
    return len(link) == (8 if big else 4) and int.from_bytes(link, order) != 0


def _stack_pages(tif: tifffile.TiffFile) -> list[int]:
    """Indices of the pages that are frames: full size (no thumbnail, reduced level or mask), with the
    shape and type of the first such page."""
    pages, first = [], None
    for i, page in enumerate(tif.pages):
        if int(getattr(page, "subfiletype", 0)) & _NOT_FRAME_PAGE:
            continue
        first = first or (page.shape, page.dtype)
        if (page.shape, page.dtype) == first:
            pages.append(i)
    return pages


class _Collect(logging.Filter):
    """Holds back tifffile's log records (kept as text), so a damaged file is told in our own one line."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False


@contextmanager
def _tifffile_quiet() -> Iterator[list[str]]:
    """While tifffile reads: its warnings and log lines off the terminal; yields what it complained of."""
    catch, logger = _Collect(), logging.getLogger("tifffile")
    logger.addFilter(catch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield catch.messages
    finally:
        logger.removeFilter(catch)


def _count_stack(path: Path) -> int:
    """Frames of a TIFF; 1 where it cannot tell (read_frame then says what is wrong with the file).

    The channels of one image (an OME or ImageJ TIFF with a C axis) are not frames: its first
    channel is the frame, with a warning.
    """
    try:
        with _tifffile_quiet() as complaints, tifffile.TiffFile(path) as tif:
            pages = _stack_pages(tif)
            axes = tif.series[0].axes if len(pages) > 1 and (tif.is_ome or tif.is_imagej) else ""
    except Exception:
        return 1
    if complaints:
        log.warning("%s: damaged TIFF, %d full-size page(s) readable (%s)", path, len(pages), _RECOPY)
    if "C" in axes:
        log.warning("%s: a TIFF of channels (axes %s), not of frames: only its first channel is read "
                    "(save each frame as its own page, without channels)", path, axes)
        return 1
    return len(pages)


def _video_header(video: Path) -> tuple[int, int, float | None]:
    """(frames with data, frames the header claims: 0 if it does not say, the frame rate it declares:
    None if it does not say), without decoding."""
    try:
        import av
    except ImportError:
        cap = cv2.VideoCapture(str(video))
        try:
            if not cap.isOpened():
                raise FrameError("not a readable video (OpenCV cannot open it; install PyAV: pip install av)")
            claimed, rate = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
            n = 0
            while cap.grab():  # the header's count survives a truncated file; grabbing does not lie
                n += 1
            return n, claimed, rate if rate > 0 else None
        finally:
            cap.release()
    try:
        with av.open(str(video)) as c:
            if not c.streams.video:
                raise FrameError("a video file without a video stream")
            st = c.streams.video[0]
            rate = st.average_rate or st.base_rate
            return sum(1 for p in c.demux(st) if p.size), int(st.frames or 0), float(rate) if rate else None
    except FrameError:
        raise
    except Exception as e:
        raise FrameError(f"not a readable video ({type(e).__name__}: {e}; {_RECOPY})") from None


class _VideoReader:
    """Sequential decoder of one video, kept open between frames (frames are read in order)."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        self.container = av.open(str(path))
        self.frames = self.container.decode(self.container.streams.video[0])
        self.next = 0

    def read(self, n: int) -> np.ndarray:
        for _ in range(n - self.next):
            next(self.frames)
        frame = next(self.frames)
        self.next = n + 1
        if frame.format.name in ("gray", "gray8", "gray16le", "gray16be"):  # grey as stored, 8 or 16 bits
            pixels = frame.to_ndarray()
            return pixels if pixels.ndim == 2 else pixels[..., 0]
        # colour or YUV: H.264's yuv420p array is its three planes stacked, not an image
        deep = any(c.bits > 8 for c in frame.format.components)
        return frame.to_ndarray(format="gray16le" if deep else "gray")

    def close(self) -> None:
        self.container.close()


class _StackReader:
    """One TIFF stack kept open between its frames, with the page that holds each frame."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tif = tifffile.TiffFile(path)
        self.pages = _stack_pages(self.tif)

    def page(self, n: int) -> int:
        if n >= len(self.pages):
            raise FrameError(f"frame {n} is missing: only {len(self.pages)} full-size page(s) can be read ({_RECOPY})")
        return self.pages[n]

    def close(self) -> None:
        self.tif.close()


_open_reader: list[_VideoReader | _StackReader] = []  # at most one per process: a decode cache, not shared state
_Reader = TypeVar("_Reader", _VideoReader, _StackReader)


def _reader(kind: type[_Reader], path: Path) -> _Reader:
    """The open reader of ``path``, opened now if the cache holds another file."""
    reader = _open_reader[0] if _open_reader else None
    if isinstance(reader, kind) and reader.path == path:
        return reader
    _drop_reader()
    opened = kind(path)
    _open_reader.append(opened)
    return opened


def read_video_frame(video: Path, n: int) -> np.ndarray:
    """Frame ``n`` of a video as a 2-D grey array; FrameError if it cannot be decoded."""
    try:
        import av  # noqa: F401
    except ImportError:
        return _read_video_frame_opencv(video, n)
    try:
        reader = _reader(_VideoReader, video)
        if reader.next > n:  # backwards: decode again from the start
            _drop_reader()
            reader = _reader(_VideoReader, video)
        return np.ascontiguousarray(reader.read(n))
    except StopIteration:
        _drop_reader()
        raise FrameError(f"truncated video: frame {n} is missing ({_RECOPY})") from None
    except Exception as e:
        _drop_reader()
        raise FrameError(f"truncated or corrupt video data at frame {n} ({type(e).__name__}; {_RECOPY})") from None


def _drop_reader() -> None:
    for r in _open_reader:
        r.close()
    _open_reader.clear()


def _read_video_frame_opencv(video: Path, n: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, n)
        ok, pixels = cap.read()
    finally:
        cap.release()
    if not ok or pixels is None:
        raise FrameError(f"truncated or corrupt video data at frame {n} ({_RECOPY})")
    return _to_grey(pixels, "BGR")


# --- decoding ---------------------------------------------------------------------------

def read_frame(path: Path) -> np.ndarray:
    """The frame as a 2-D uint8 or uint16 array; FrameError with the reason if unusable."""
    path = Path(path)
    frame = None  # of a TIFF stack
    member = split_container_frame(path)
    if member is not None and not path.exists():
        if member[0].suffix.lower() in VIDEO_EXTENSIONS:
            return _to_grey(read_video_frame(*member), "RGB")
        path, frame = member  # a TIFF stack's page: the file is checked as any TIFF
    head, size = _head(path)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        raise FrameError("not an image (its contents are not PNG, TIFF, JPEG or BMP)")
    if frame is not None and kind != "TIFF":
        raise FrameError(f"no longer a TIFF stack: the file changed since it was listed ({_RECOPY})")
    if kind == "TIFF" and not _tiff_directory_inside(head, size):  # before tifffile logs about it
        raise FrameError(f"truncated TIFF data ({_RECOPY})")
    if kind == "PNG" and 0 in _png_size(head):
        raise FrameError("zero-size image (its header gives no pixels)")
    with warnings.catch_warnings():  # Pillow/tifffile chatter must not reach the terminal
        warnings.simplefilter("ignore")
        if kind == "TIFF":
            pixels, order = _read_tiff(path, frame)
        else:
            pixels, order = _read_pillow(path, kind)
            if kind == "PNG" and _is_16bit_colour_png(head):  # Pillow cuts these to 8 bits
                pixels, order = _read_opencv(path), "BGR"
    return _to_grey(pixels, order)


def _head(path: Path) -> tuple[bytes, int]:
    """The first bytes (to recognise the format) and the file's size."""
    try:
        with path.open("rb") as fh:
            head = fh.read(32)
            size = os.fstat(fh.fileno()).st_size
    except OSError as e:
        raise FrameError(f"cannot read the file ({e.strerror or e})") from None
    if not head:
        raise FrameError("empty file (0 bytes)")
    return head, size


def _tiff_header(head: bytes) -> tuple[str, bool, int | None]:
    """(byte order, BigTIFF, offset of the first image directory or None if the header is cut short)."""
    order = "little" if head.startswith(b"II") else "big"
    big = head[2:4] in (b"+\x00", b"\x00+")
    field = head[8:16] if big else head[4:8]
    return order, big, int.from_bytes(field, order) if len(field) == (8 if big else 4) else None


def _tiff_directory_inside(head: bytes, size: int) -> bool:
    """Whether the first image directory starts inside the file (writers often put it last,
    so a cut file loses it)."""
    _, big, first = _tiff_header(head)
    return first is not None and first + (8 if big else 2) <= size


def _png_size(head: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (-1, -1 if the header is cut short)."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return -1, -1
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _is_16bit_colour_png(head: bytes) -> bool:
    return len(head) >= 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _damaged(kind: str, error: BaseException) -> FrameError:
    text = str(error) or type(error).__name__
    if isinstance(error, EOFError) or any(h in text.lower() for h in _TRUNCATION_HINTS):
        return FrameError(f"truncated {kind} data ({_RECOPY})")
    return FrameError(f"corrupt {kind} data: {text} ({_RECOPY})")


def _read_pillow(path: Path, kind: str, page: int = 0) -> tuple[np.ndarray, str]:
    """Decode fully (``load`` raises on truncation), then hand the pixels over as an array."""
    try:
        with _PILLOW[kind](path) as im:
            if page:
                im.seek(page)  # a TIFF's page, counted as tifffile counts them
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise FrameError(f"the header claims {width}×{height} pixels: damaged ({_RECOPY})")
            im.load()
            return _pillow_array(im, kind)
    except FrameError:
        raise
    except MemoryError:
        raise FrameError(f"not enough memory to decode this {kind} image") from None
    except Exception as e:  # any decoder failure means a damaged file, whatever its type
        raise _damaged(kind, e) from None


def _pillow_array(im: Image.Image, kind: str) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX") or mode.startswith("I;16"):
        return np.asarray(im), "RGB"
    if mode == "1":
        return np.asarray(im.convert("L")), "RGB"
    if mode == "I" and kind == "PNG":  # older Pillow opens 16-bit grey PNG as 32-bit
        return np.asarray(im).astype(np.uint16), "RGB"
    if mode in ("I", "F") or mode.startswith(("I;32", "F;")):
        raise FrameError(f"unsupported pixel type: {'32-bit integer' if mode.startswith('I') else 'floating point'} "
                         f"({_CONVERT})")
    return np.asarray(im.convert("RGB")), "RGB"  # palette, CMYK, YCbCr...


def _read_tiff(path: Path, frame: int | None = None) -> tuple[np.ndarray, str]:
    """Frame ``frame`` of a TIFF stack, or the first full-size page of a TIFF image (not a thumbnail
    written before it); Pillow takes over for codecs or colour spaces tifffile lacks here."""
    page = 0
    try:
        with _tifffile_quiet():
            if frame is not None:
                stack = _reader(_StackReader, path)
                page = stack.page(frame)
                return _tiff_pixels(stack.tif.pages[page]), "RGB"
            with tifffile.TiffFile(path) as tif:
                page = (_stack_pages(tif) or [0])[0]
                return _tiff_pixels(tif.pages[page]), "RGB"
    except FrameError:
        raise
    except MemoryError:
        raise FrameError("not enough memory to decode this TIFF image") from None
    except _UsePillow:
        return _read_pillow(path, "TIFF", page)
    except Exception as e:
        if "imagecodecs" in str(e):  # e.g. LZW without the optional imagecodecs package
            return _read_pillow(path, "TIFF", page)
        raise _damaged("TIFF", e) from None


def _tiff_pixels(page: tifffile.TiffPage) -> np.ndarray:
    """One page's pixels, samples last, 0 black; _UsePillow for what tifffile does not turn into pixels here."""
    photometric = int(page.photometric)
    if photometric not in (0, 1, 2):  # min-is-white, min-is-black, RGB
        raise _UsePillow
    pixels = page.asarray()
    if "S" in page.axes and page.axes.index("S") != pixels.ndim - 1:  # planar RGB
        pixels = np.moveaxis(pixels, page.axes.index("S"), -1)
    if photometric == 0:  # min-is-white: 0 is white
        pixels = ~pixels if pixels.dtype == bool else _invert(pixels)
    return pixels


def _invert(pixels: np.ndarray) -> np.ndarray:
    if not np.issubdtype(pixels.dtype, np.unsignedinteger):
        return pixels  # left for the dtype check to refuse
    return np.iinfo(pixels.dtype).max - pixels


def _read_opencv(path: Path) -> np.ndarray:
    """OpenCV decode of a file already checked whole (np.fromfile copes with any path)."""
    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FrameError(f"corrupt PNG data: OpenCV cannot decode it ({_RECOPY})")
    return pixels


def _to_grey(pixels: np.ndarray, order: str) -> np.ndarray:
    """2-D uint8/uint16 from any decoded layout; FrameError for what segplank cannot use."""
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * np.uint8(255)
    elif pixels.dtype.kind == "u" and pixels.dtype.itemsize in (1, 2):
        pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    else:
        raise FrameError(f"unsupported pixel type: {pixels.dtype.name} ({_CONVERT})")
    if pixels.ndim == 3 and pixels.shape[-1] in (1, 2):  # grey, grey + alpha
        pixels = pixels[..., 0]
    elif pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels), _TO_GREY[order, pixels.shape[-1]])
    if pixels.ndim != 2:
        raise FrameError(f"unsupported layout: array of shape {pixels.shape}, not a single grey or colour "
                         f"image ({_CONVERT})")
    if pixels.size == 0:
        raise FrameError(f"zero-size image ({pixels.shape[1]}×{pixels.shape[0]} pixels)")
    return np.ascontiguousarray(pixels)


# --- streaming --------------------------------------------------------------------------

class FrameSource:
    """Iterable of (FrameInfo with its size, pixels), decoding each frame only when reached.

    Unusable files are not yielded: they are logged (one warning line each, on the
    ``segplank`` logger) and listed in ``skipped`` for the run's manifest. Each pass starts
    a new ``skipped`` list, so a list taken after a pass stays as it was.
    """

    def __init__(self, frames: Sequence[FrameInfo]) -> None:
        self.frames = list(frames)
        self.skipped: list[SkippedFrame] = []

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        self.skipped = []
        for info in self.frames:
            try:
                pixels = read_frame(info.path)
            except FrameError as e:
                self.skipped.append(SkippedFrame(info.path, e.reason))
                log.warning("skipped %s: %s", info.path, e.reason)
                continue
            yield replace(info, height=int(pixels.shape[0]), width=int(pixels.shape[1])), pixels
