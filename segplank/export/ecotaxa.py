"""EcoTaxa export: one import zip per sample (TSV with its type row, PNG vignettes).

The rules are those EcoTaxa's importer applies in its code (ecotaxa_back ``BO/TSVFile.py``,
``BO/Mappings.py``, ``DB/Object.py``, ``BO/Image.py``), stricter than its help page.
:func:`export_ecotaxa` writes them and ``ecotaxa_check.check_ecotaxa_zip`` verifies them:

- only files named ``ecotaxa*.tsv`` are imported (we write ``ecotaxa_<sample_id>.tsv``);
  image names are paths relative to the TSV's folder;
- the TSV is read as latin-1 unless it starts with a UTF-8 byte-order mark: we always write
  the BOM (``utf-8-sig``);
- line 1 is the header, line 2 the types, exactly ``[t]`` (text) or ``[f]`` (float);
  columns are ``<prefix>_<name>`` with prefix ``object``, ``img``, ``sample``, ``acq`` or
  ``process``; ``<prefix>_id`` is mandatory once a prefix is used; ``img_`` has only its
  predefined columns (``img_file_name``, ``img_rank``);
- free (non-predefined) columns: objects 500 numeric and 20 text (varchar 250); samples,
  acquisitions and processes 30 each, always stored as text;
- an empty numeric cell is NULL (we never write ``nan``); ``object_date`` is ``YYYYMMDD``,
  ``object_time`` ``HHMMSS`` (we write exactly 8 and 6 digits, UTC); latitude −90..90,
  longitude −180..180;
- ``object_annotation_status`` is ``predicted``, ``validated``, ``dubious`` or ``discarded``:
  we write ``predicted`` with the model's class as ``object_annotation_category``;
- images must open with Pillow as PNG, JPEG or GIF (a TIFF is refused): we write 8-bit grey
  PNG;
- an acquisition belongs to one sample (we name it after its sample);
- rows go through Python's csv reader with ``"`` as quote character, so text cells never hold
  a double quote (replaced by ``'``), a tab or a line break.

Vignettes are the object's box plus ``pad_px`` on each side, cut from the frame as recorded
(no mask applied, the raw grey look EcoTaxa users expect); the part of the pad outside the
frame is filled with the frame's median grey. 16-bit frames are stretched linearly between
their 0.1 and 99.9 percentiles (per frame) to 8 bits. An optional scale bar of
``scale_bar_mm`` sits in a strip under the image, labelled, the vignette widened if the bar
needs it.

Scale columns: ``acq_pixel_size_um`` is the pixel side in µm; ``acq_pixel`` the same in mm,
as ZooProcess and UVP projects name it.
"""
from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa

from ..io.atomic import atomic_path, write_json
from ..features import zooprocess_features
from ..frames import FrameError, read_frame
from ..runs import RunFolderError, frame_paths, frames_root, is_line_stream, read_frames, read_objects
from ..io.rle import decode_cropped

log = logging.getLogger("segplank")

SampleBy = Literal["window", "cast", "all"]
PREFIXES = ("object", "img", "sample", "acq", "process")
# EcoTaxa's own columns and their real type ('f' numeric, 't' text); everything else is a free column.
PREDEFINED: dict[str, str] = {
    "object_id": "t", "object_lat": "f", "object_lon": "f", "object_date": "t", "object_time": "t",
    "object_link": "t", "object_depth_min": "f", "object_depth_max": "f",
    "object_annotation_category": "t", "object_annotation_category_id": "f", "object_annotation_date": "t",
    "object_annotation_time": "t", "object_annotation_person_name": "t", "object_annotation_person_email": "t",
    "object_annotation_status": "t", "img_rank": "f", "img_file_name": "t",
    "sample_id": "t", "sample_dataportal_descriptor": "t", "acq_id": "t", "acq_instrument": "t", "process_id": "t",
}
OBJECT_NUMERIC_MAX = 500
OBJECT_TEXT_MAX = 20
PARENT_COLUMNS_MAX = 30  # free columns of sample, acq and process each (text in EcoTaxa)
TEXT_MAX = 250
STATUSES = ("predicted", "validated", "dubious", "discarded")
BOM = b"\xef\xbb\xbf"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TSV_NAME = re.compile(r"ecotaxa_.+\.tsv")
EXPORT_RECORD = "ecotaxa_export.json"  # which zips the last export wrote (stale ones are removed)

_MAPPED = {"object_id", "time", "lat", "lon", "depth_m", "label_name", "mask_rle"}  # not free columns
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry dates: the same run exports byte-identical zips
_FOOTER_PX = 20
_MAX_BAR_PX = 2000
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class EcoTaxaExportError(ValueError):
    """An export EcoTaxa would refuse (too many columns, ids too long...); the message says why."""


# --- export ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Settings:
    """What each sample's rows and vignettes need from the run and the call."""

    pixel_size_um: float
    polarity: str
    pad_px: int
    scale_bar_mm: float | None
    sample: dict[str, Any] = field(default_factory=dict)  # constant sample_ columns
    acq: dict[str, Any] = field(default_factory=dict)
    process: dict[str, Any] = field(default_factory=dict)


def export_ecotaxa(run_dir: Path, out: Path | None = None, *, sample_by: SampleBy = "window",
                   window_minutes: float = 60, cast_min_range_m: float = 5.0, plankton_only: bool = True,
                   pad_px: int = 10, scale_bar_mm: float | None = 1.0, features: bool = True,
                   project: str | None = None, cruise_dir: Path | None = None) -> list[Path]:
    """Write one EcoTaxa import zip per sample of a `segplank infer` output; returns the zips.

    ``sample_by``: ``window`` (fixed UTC windows of ``window_minutes``), ``cast`` (a new
    sample where the depth record turns from going up to going down, after a rise of at
    least ``cast_min_range_m``) or ``all`` (one sample). Objects without a time go to the
    sample ``<project>_undated``. ``cruise_dir`` overrides the manifest's (frames are read
    again to cut the vignettes). Zips a previous export wrote to ``out`` and this one does not
    are removed.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "ecotaxa"
    _check_options(sample_by, window_minutes, cast_min_range_m, pad_px)
    manifest = _read_manifest(run_dir)
    table = _read_objects(run_dir, plankton_only)
    project = _safe_id(project or Path(str(manifest.get("cruise_dir") or run_dir.name)).name or run_dir.name)
    compute = zooprocess_features if features and len(table) else None
    settings = _settings(manifest, project, sample_by, window_minutes, pad_px, scale_bar_mm, compute is not None)
    if scale_bar_mm is not None:
        _bar_px(scale_bar_mm, settings.pixel_size_um)  # refuse an impossible bar before any work
    written: list[Path] = []
    if len(table):
        table["_sample"] = _assign_samples(table, run_dir, sample_by, window_minutes, cast_min_range_m, project)
        root = frames_root(manifest, run_dir, cruise_dir, list(pd.unique(table["frame_path"]))[:50])
        stream = StreamFrames(run_dir, root) if is_line_stream(manifest) else None
        written = _write_samples(table, root, out, settings, compute, stream)
    _replace_record(out, written, {"run_dir": str(run_dir), "sample_by": sample_by, "objects": int(len(table))})
    return written


def _check_options(sample_by: str, window_minutes: float, cast_min_range_m: float, pad_px: int) -> None:
    if sample_by not in ("window", "cast", "all"):
        raise EcoTaxaExportError(f"sample_by={sample_by!r}: choose window, cast or all")
    if not window_minutes > 0:
        raise EcoTaxaExportError(f"window_minutes={window_minutes}: must be more than 0")
    if not cast_min_range_m > 0:
        raise EcoTaxaExportError(f"cast_min_range_m={cast_min_range_m}: must be more than 0")
    if pad_px < 0:
        raise EcoTaxaExportError(f"pad_px={pad_px}: must be 0 or more")


def _read_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: no manifest.json; pass the output folder of `segplank infer`") from None
    except json.JSONDecodeError as e:
        raise EcoTaxaExportError(f"{path}: unreadable manifest ({e})") from None


def _read_objects(run_dir: Path, plankton_only: bool) -> pd.DataFrame:
    """The object table, in time order (undated last), plankton only unless asked otherwise."""
    try:
        df = read_objects(run_dir)  # shard by shard: shards before and after a CTD join differ in columns
    except RunFolderError as e:
        raise FileNotFoundError(str(e)) from None
    if plankton_only and "is_plankton" in df:
        df = df[df["is_plankton"].fillna(False).astype(bool)]
    df = df.assign(_sec=_epoch_seconds(df["time"]))
    return df.sort_values(["_sec", "object_id"], na_position="last", kind="stable").reset_index(drop=True)


def _epoch_seconds(times: pd.Series) -> np.ndarray:
    """UTC seconds since 1970 as float, NaN where there is no time (any datetime unit)."""
    t = pd.to_datetime(times, utc=True)
    return ((t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float, na_value=np.nan)


def _settings(manifest: dict, project: str, sample_by: str, window_minutes: float, pad_px: int,
              scale_bar_mm: float | None, features: bool) -> _Settings:
    from segplank.config import InstrumentConfig

    cfg = manifest.get("config") or {}
    inst = {**InstrumentConfig().model_dump(), **(cfg.get("instrument") or {})}
    flt = cfg.get("filter") or {}
    model = manifest.get("model") or {}
    px = float(inst["pixel_size_um"])
    sampling = f"window {window_minutes:g} min" if sample_by == "window" else sample_by
    return _Settings(
        pixel_size_um=px, polarity=str(inst["polarity"]), pad_px=int(pad_px), scale_bar_mm=scale_bar_mm,
        sample={"sample_cruise": project, "sample_sampling": sampling},
        acq={"acq_instrument": inst["name"], "acq_pixel_size_um": px, "acq_pixel": px / 1000.0,
             "acq_polarity": inst["polarity"], "acq_volume_per_frame_l": inst.get("volume_per_frame_l"),
             "acq_frame_rate_hz": inst.get("frame_rate_hz")},
        process={"process_software": f"segplank {manifest.get('segplank_version', '')}".strip(),
                 "process_model": Path(str(model.get("path", ""))).name,
                 "process_model_sha256": model.get("sha256", ""),
                 "process_score_threshold": flt.get("score_threshold"),
                 "process_min_size_um": flt.get("min_size_um"), "process_max_size_um": flt.get("max_size_um"),
                 "process_features": "zooprocess" if features else "none",
                 # the threshold-dependent features (docs/features.md) see the refined mask alone
                 "process_particle_threshold": "none: segplank's refined mask" if features else "",
                 "process_vignette_pad_px": int(pad_px), "process_scale_bar_mm": scale_bar_mm},
    )


def _safe_id(text: str) -> str:
    """Letters, digits, ``_``, ``-`` and ``.`` only: ids become file names inside and of the zip."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "segplank"


# --- samples -----------------------------------------------------------------------------

def _assign_samples(table: pd.DataFrame, run_dir: Path, sample_by: str, window_minutes: float,
                    cast_min_range_m: float, project: str) -> np.ndarray:
    sec = table["_sec"].to_numpy(float)
    if sample_by == "all":
        return np.full(len(table), project, dtype=object)
    if sample_by == "window":
        return window_samples(sec, window_minutes, project)
    times, depth = _depth_record(run_dir, table)
    return cast_samples(sec, cast_starts(times, depth, cast_min_range_m), project)


def window_samples(seconds: np.ndarray, window_minutes: float, project: str) -> np.ndarray:
    """Sample id per object: ``<project>_<YYYYMMDD_HHMMSS>`` of its UTC window's start."""
    width = window_minutes * 60.0
    out = np.full(len(seconds), f"{project}_undated", dtype=object)
    ok = np.isfinite(seconds)
    starts = np.floor(seconds[ok] / width) * width
    names = {s: f"{project}_{pd.Timestamp(s, unit='s', tz='UTC'):%Y%m%d_%H%M%S}" for s in np.unique(starts)}
    out[ok] = [names[s] for s in starts]
    return out


def cast_starts(seconds: np.ndarray, depth: np.ndarray, min_range_m: float) -> np.ndarray:
    """Times of the depth minima where the record turns from rising to sinking again.

    A turn counts only after the depth moved at least ``min_range_m`` away from the last
    extreme (hysteresis), so instrument noise and waves never split a cast.
    """
    ok = np.isfinite(seconds) & np.isfinite(depth)
    order = np.argsort(seconds[ok], kind="stable")
    t, d = seconds[ok][order], depth[ok][order]
    starts: list[float] = []
    sinking = True  # a record starts at the surface going down
    hi = lo = d[0] if len(d) else 0.0
    lo_t = t[0] if len(t) else 0.0
    for ti, di in zip(t, d):
        if sinking:
            if di > hi:
                hi = di
            elif di < hi - min_range_m:  # turned up: now look for the shallowest point
                sinking, lo, lo_t = False, di, ti
        else:
            if di < lo:
                lo, lo_t = di, ti
            elif di > lo + min_range_m:  # turned down: a new cast starts at the minimum
                starts.append(lo_t)
                sinking, hi = True, di
    return np.array(starts, float)


def cast_samples(seconds: np.ndarray, starts: np.ndarray, project: str) -> np.ndarray:
    """Sample id per object: ``<project>_castNNN`` (from 001), ``<project>_undated`` without a time."""
    k = np.searchsorted(starts, np.nan_to_num(seconds, nan=0.0), side="right") + 1
    out = np.array([f"{project}_cast{i:03d}" for i in k], dtype=object)
    out[~np.isfinite(seconds)] = f"{project}_undated"
    return out


def _depth_record(run_dir: Path, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, depth) of every frame where the run has a frame table, else of the objects."""
    try:  # two columns, not the whole table (stream runs keep a flat-field state per frame)
        frames = read_frames(run_dir, ["time", "depth_m"])
        return _epoch_seconds(frames["time"]), frames["depth_m"].to_numpy(float, na_value=np.nan)
    except (RunFolderError, KeyError, pa.ArrowInvalid):  # no frame table, or one older than depths
        pass
    return table["_sec"].to_numpy(float), table["depth_m"].to_numpy(float, na_value=np.nan)


# --- frames and vignettes ----------------------------------------------------------------

def to_8bit(image: np.ndarray) -> np.ndarray:
    """8-bit frames as recorded; deeper ones stretched between their 0.1 and 99.9 percentiles."""
    if image.dtype == np.uint8:
        return image
    sample = image[::4, ::4].astype(np.float64)
    lo, hi = np.percentile(sample, [0.1, 99.9])
    hi = max(hi, lo + 1.0)
    scaled = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def cut_vignette(grey8: np.ndarray, box: tuple[int, int, int, int], pad: int, fill: int) -> np.ndarray:
    """The box (x, y, w, h) plus ``pad`` on each side; what falls outside the frame is ``fill``."""
    x, y, w, h = box
    H, W = grey8.shape
    x0, y0, x1, y1 = x - pad, y - pad, x + w + pad, y + h + pad
    out = np.full((y1 - y0, x1 - x0), fill, np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = grey8[cy0:cy1, cx0:cx1]
    return out


def _bar_px(scale_bar_mm: float, pixel_size_um: float) -> int:
    px = int(round(scale_bar_mm * 1000.0 / pixel_size_um))
    if px < 1 or px > _MAX_BAR_PX:
        raise EcoTaxaExportError(f"a {scale_bar_mm:g} mm scale bar is {px} px at {pixel_size_um:g} µm per pixel; "
                                 f"choose a length giving 1 to {_MAX_BAR_PX} px, or none")
    return px


def add_scale_bar(vignette: np.ndarray, scale_bar_mm: float, pixel_size_um: float, fill: int) -> np.ndarray:
    """A strip under the vignette with a bar of ``scale_bar_mm`` and its label, in the colour
    that stands out from ``fill`` (dark on a bright background, bright on a dark one)."""
    bar = _bar_px(scale_bar_mm, pixel_size_um)
    label = f"{scale_bar_mm:g} mm"
    font = cv2.FONT_HERSHEY_PLAIN
    (tw, _), _ = cv2.getTextSize(label, font, 1.0, 1)
    h, w = vignette.shape
    width = max(w, 4 + bar + 6 + tw + 4)
    canvas = np.full((h + _FOOTER_PX, width), fill, np.uint8)
    left = (width - w) // 2
    canvas[:h, left:left + w] = vignette
    ink = 0 if fill >= 128 else 255
    canvas[h + _FOOTER_PX - 9:h + _FOOTER_PX - 6, 4:4 + bar] = ink
    cv2.putText(canvas, label, (4 + bar + 6, h + _FOOTER_PX - 4), font, 1.0, ink, 1, cv2.LINE_AA)
    return canvas


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any 2-D uint8 array
        raise EcoTaxaExportError("PNG encoding failed")
    return buf.tobytes()


def _vignettes(rows: pd.DataFrame, image: np.ndarray, s: _Settings) -> list[bytes]:
    grey = to_8bit(image)
    fill = int(np.median(grey[::8, ::8]))
    boxes = rows[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy(np.int64)
    out = []
    for box in boxes:
        v = cut_vignette(grey, tuple(int(b) for b in box), s.pad_px, fill)
        if s.scale_bar_mm is not None:
            v = add_scale_bar(v, s.scale_bar_mm, s.pixel_size_um, fill)
        out.append(_png(v))
    return out


def _masks(rows: pd.DataFrame):
    """Box-relative RLE back to CroppedMasks (bbox_x, bbox_y are each bitmap's origin)."""
    from segplank.structures import CroppedMasks

    bitmaps = tuple(decode_cropped(c, w, h) for c, w, h in zip(rows["mask_rle"], rows["bbox_w"], rows["bbox_h"]))
    origins = rows[["bbox_x", "bbox_y"]].to_numpy(np.int64).reshape(-1, 2)
    return CroppedMasks(origins, bitmaps)


def _feature_columns(rows: pd.DataFrame, image: np.ndarray, s: _Settings,
                     compute: Callable[..., pd.DataFrame]) -> pd.DataFrame:
    """ZooProcess features of one frame's objects, as ``object_<name>`` columns aligned to ``rows``."""
    feats = compute(_masks(rows), image, s.pixel_size_um, threshold=None, polarity=s.polarity)
    if len(feats) != len(rows):
        raise EcoTaxaExportError(f"zooprocess_features gave {len(feats)} rows for {len(rows)} objects")
    feats = feats.reset_index(drop=True)
    feats.columns = [_column_name(c) for c in feats.columns]
    feats = feats.loc[:, ~feats.columns.duplicated() & ~feats.columns.isin(list(PREDEFINED))]
    feats.index = rows.index
    return feats  # a name the object table already has is dropped when the TSV is built


def _column_name(raw: Any) -> str:
    """``object_<name>``: lower case (EcoTaxa lowercases headers), no blank or double quote."""
    name = re.sub(r'[\s"]+', "_", str(raw).strip().lower())
    return name if name.startswith("object_") else f"object_{name}"


# --- writing -----------------------------------------------------------------------------

class _SampleZip:
    """One sample's zip, written under a temporary name and renamed when its TSV is in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = ExitStack()
        self._zip = self._stack.enter_context(zipfile.ZipFile(self._stack.enter_context(atomic_path(path)), "w"))
        self._names: set[str] = set()
        self.parts: list[pd.DataFrame] = []

    def add_png(self, object_id: str, data: bytes) -> str:
        stem = _safe_id(object_id)
        name, k = f"{stem}.png", 1
        while name in self._names:
            k += 1
            name = f"{stem}_{k}.png"
        self._names.add(name)
        self._zip.writestr(zipfile.ZipInfo(name, _ZIP_DATE), data, zipfile.ZIP_STORED)  # PNG is compressed
        return name

    def finish(self, tsv_name: str, tsv: bytes) -> Path:
        self._zip.writestr(zipfile.ZipInfo(tsv_name, _ZIP_DATE), tsv, zipfile.ZIP_DEFLATED)
        self._stack.close()  # closes the zip, then renames it into place
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file; the target is left as it was."""
        err = EcoTaxaExportError("export aborted")
        self._stack.__exit__(type(err), err, None)


class StreamFrames:
    """A line-stream run's frames by index, each read once: a frame whose objects reach past it
    is cut together with the frames they reach, and those are kept (the last ``keep`` read) for
    when their own turn comes, usually next."""

    def __init__(self, run_dir: Path, root: Path, keep: int = 3) -> None:
        self.paths, self.root, self.keep = frame_paths(run_dir), root, keep
        self.cache: dict[int, np.ndarray | FrameError] = {}

    def __call__(self, index: int) -> np.ndarray:
        """The frame; FrameError (remembered) if it cannot be read."""
        if index not in self.cache:
            path = self.paths.get(index)
            try:
                if path is None:
                    raise FrameError(f"frame {index} was not processed by the run")
                self.cache[index] = read_frame(self.root / path)
            except FrameError as e:
                self.cache[index] = e
            while len(self.cache) > self.keep:
                del self.cache[next(iter(self.cache))]
        got = self.cache[index]
        if isinstance(got, FrameError):
            raise got
        return got

    def stack(self, rows: pd.DataFrame) -> tuple[np.ndarray, int]:
        """The rows' frame with the frames above and below that its objects reach, and the rows
        it gained on top: a vignette of an organism across a cut shows all of it (what was not
        recorded, at a stream's end, stays the background fill)."""
        index = int(rows["frame_index"].iloc[0])
        image = self(index)
        h = image.shape[0]
        top, bottom = int(rows["bbox_y"].min()), int((rows["bbox_y"] + rows["bbox_h"]).max())
        above = self._run(index, -1, -(top // h) if top < 0 else 0, image.shape)[::-1]
        below = self._run(index, 1, -(-(bottom - h) // h) if bottom > h else 0, image.shape)
        return (np.concatenate([*above, image, *below]) if above or below else image), h * len(above)

    def _run(self, index: int, step: int, n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
        """Up to ``n`` frames from ``index`` on in direction ``step``, nearest first, up to the first missing one."""
        out = []
        for k in range(1, n + 1):
            try:
                frame = self(index + step * k)
            except FrameError:
                break
            if frame.shape != shape:
                break
            out.append(frame)
        return out


def _write_samples(table: pd.DataFrame, root: Path, out: Path, s: _Settings,
                   compute: Callable[..., pd.DataFrame] | None, stream: StreamFrames | None = None) -> list[Path]:
    """Read each frame once (in time order), add its vignettes to its samples' zips, and
    finish each zip after its last frame, so only the samples in progress are open.

    With ``stream`` (a line-stream run), a frame whose objects reach past it is cut together
    with the frames they reach."""

    groups = table.groupby("frame_path", sort=False).indices
    order = list(pd.unique(table["frame_path"]))  # the table is in time order: frames by first object
    position = {fp: k for k, fp in enumerate(order)}
    last = pd.Series(table["frame_path"].map(position).to_numpy(), index=table["_sample"]).groupby(level=0).max()
    ending: dict[int, list[str]] = {}
    for sample, k in last.items():
        ending.setdefault(int(k), []).append(str(sample))
    open_zips: dict[str, _SampleZip] = {}
    written: list[Path] = []
    skipped: list[str] = []
    try:
        for k, fp in enumerate(order):
            rows = table.iloc[groups[fp]]
            try:
                image, shift = stream.stack(rows) if stream is not None else (read_frame(root / fp), 0)
            except FrameError as e:
                skipped.append(fp)
                log.warning("%s: %s; its %d object(s) are left out of the EcoTaxa export", fp, e, len(rows))
                image = None
            if image is not None:
                _add_frame(rows, image, s, compute, open_zips, out, shift)
            for sample in ending.get(k, []):
                z = open_zips.get(sample)
                if z is not None:  # stays listed until finished, so a failure still aborts it
                    written.append(z.finish(f"ecotaxa_{sample}.tsv", tsv_bytes(_tsv_columns(z.parts, sample, s))))
                    del open_zips[sample]
    except BaseException:
        for z in open_zips.values():
            z.abort()
        raise
    if skipped:
        log.warning("EcoTaxa export: %d frame(s) could not be read; their objects are not exported", len(skipped))
    return written


def _add_frame(rows: pd.DataFrame, image: np.ndarray, s: _Settings, compute: Callable[..., pd.DataFrame] | None,
               open_zips: dict[str, _SampleZip], out: Path, shift: int = 0) -> None:
    """One frame's vignettes (and features) into the zips of the samples its objects are in.

    ``image`` may hold ``shift`` rows above the frame (a line stream's previous frames)."""
    cut = rows.assign(bbox_y=rows["bbox_y"] + shift) if shift else rows
    pngs = _vignettes(cut, image, s)
    if compute is not None:
        rows = pd.concat([rows, _feature_columns(cut, image, s, compute)], axis=1)
    for sample, idx in rows.groupby("_sample", sort=False).indices.items():
        z = open_zips.get(sample)
        if z is None:
            z = open_zips[sample] = _SampleZip(out / f"ecotaxa_{sample}.zip")
        part = rows.iloc[idx]
        names = [z.add_png(oid, pngs[i]) for oid, i in zip(part["object_id"], idx)]
        z.parts.append(part.assign(img_file_name=names))


def _replace_record(out: Path, written: list[Path], info: dict) -> None:
    """Remove the zips the previous export wrote and this one did not; record this one."""
    record = out / EXPORT_RECORD
    keep = {p.name for p in written}
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8")).get("zips", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            old = []
        for name in old:
            if isinstance(name, str) and name not in keep and re.fullmatch(r"ecotaxa_[A-Za-z0-9_.-]+\.zip", name):
                (out / name).unlink(missing_ok=True)
    if written or record.is_file():
        write_json(record, {**info, "zips": sorted(keep)})


# --- the TSV -----------------------------------------------------------------------------

@dataclass
class Column:
    """One TSV column: its name, its type letter (``f`` or ``t``) and its cells as text."""

    name: str
    kind: str
    cells: list[str]


def clean_text(value: Any) -> str:
    """A text cell: no tab, line break or double quote, at most 250 characters, '' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    text = re.sub(r"[\t\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+", " ", str(value)).replace('"', "'").strip()
    return text[:TEXT_MAX]


def number_cells(values: Iterable) -> list[str]:
    """Numeric cells: integers exact, floats with 10 significant digits, '' for NaN and ±inf."""
    s = pd.Series(values)
    if pd.api.types.is_bool_dtype(s) and not s.isna().any():
        return ["1" if v else "0" for v in s.tolist()]
    if pd.api.types.is_integer_dtype(s) and not s.isna().any():
        return [str(int(v)) for v in s.tolist()]
    a = pd.to_numeric(s.astype(object).where(s.notna(), np.nan), errors="coerce").to_numpy(float, na_value=np.nan)
    return ["" if not math.isfinite(v) else format(v, ".10g") for v in a.tolist()]


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s)


def _typed(name: str, s: pd.Series) -> Column:
    if _is_numeric(s):
        return Column(name, "f", number_cells(s))
    return Column(name, "t", [clean_text(v) for v in s.tolist()])


def _constant(name: str, value: Any, n: int) -> Column:
    if isinstance(value, (bool, int, float, np.number)) or value is None:
        cells = number_cells([value] * n) if value is not None else [""] * n
        return Column(name, "f", cells)
    return Column(name, "t", [clean_text(value)] * n)


def _tsv_columns(parts: list[pd.DataFrame], sample: str, s: _Settings) -> list[Column]:
    """Every column of one sample's TSV, predefined ones first, then free object columns,
    then the sample, acquisition and process."""
    df = pd.concat(parts, ignore_index=True)
    n = len(df)
    ids = [clean_text(v) for v in df["object_id"]]
    long = [i for i in ids if len(i) >= TEXT_MAX]
    if long:
        raise EcoTaxaExportError(f"object_id {long[0]!r} is longer than EcoTaxa accepts ({TEXT_MAX - 1} characters)")
    when = pd.to_datetime(df["time"], utc=True)
    labels = [clean_text(v) for v in df["label_name"]]
    cols = [
        Column("object_id", "t", ids),
        Column("object_lat", "f", number_cells(df["lat"])),
        Column("object_lon", "f", number_cells(df["lon"])),
        Column("object_date", "t", when.dt.strftime("%Y%m%d").fillna("").tolist()),
        Column("object_time", "t", when.dt.strftime("%H%M%S").fillna("").tolist()),
        Column("object_depth_min", "f", number_cells(df["depth_m"])),
        Column("object_depth_max", "f", number_cells(df["depth_m"])),
        Column("object_annotation_category", "t", labels),
        Column("object_annotation_status", "t", ["predicted" if v else "" for v in labels]),
        Column("img_file_name", "t", [str(v) for v in df["img_file_name"]]),
        Column("img_rank", "f", ["0"] * n),
    ]
    taken = {c.name for c in cols}
    for name in df.columns:
        if name in _MAPPED or name.startswith("_") or name == "img_file_name":
            continue
        full = _column_name(name)
        if full in taken:
            continue
        taken.add(full)
        cols.append(_typed(full, df[name]))
    cols += _parent_columns(df, sample, s)
    check_limits([c.name for c in cols], [c.kind for c in cols], raise_on=True)
    return cols


def _parent_columns(df: pd.DataFrame, sample: str, s: _Settings) -> list[Column]:
    n = len(df)
    sec = df["_sec"].to_numpy(float)
    dated = sec[np.isfinite(sec)]
    depth = df["depth_m"].to_numpy(float, na_value=np.nan)
    iso = lambda v: f"{pd.Timestamp(v, unit='s', tz='UTC'):%Y-%m-%dT%H:%M:%SZ}"  # noqa: E731
    sample_meta = {
        "sample_id": sample, **s.sample,
        "sample_start_utc": iso(dated.min()) if len(dated) else "",
        "sample_end_utc": iso(dated.max()) if len(dated) else "",
        "sample_depth_min_m": float(np.nanmin(depth)) if np.isfinite(depth).any() else None,
        "sample_depth_max_m": float(np.nanmax(depth)) if np.isfinite(depth).any() else None,
        "sample_objects": n,
    }
    acq = {"acq_id": f"{sample}_acq", **s.acq}
    process = {"process_id": f"{sample}_process", **s.process}
    out = []
    for meta in (sample_meta, acq, process):
        for name, value in meta.items():
            out.append(_constant(name, value, n))
    return out


def check_limits(names: list[str], kinds: list[str], raise_on: bool = False) -> list[str]:
    """EcoTaxa's free-column limits; the problems, or EcoTaxaExportError with ``raise_on``."""
    problems = []
    free = [(n.split("_", 1)[0], k) for n, k in zip(names, kinds) if n not in PREDEFINED]
    obj_f = sum(1 for p, k in free if p == "object" and k == "f")
    obj_t = sum(1 for p, k in free if p == "object" and k != "f")
    if obj_f > OBJECT_NUMERIC_MAX:
        problems.append(f"{obj_f} numeric object_ columns: EcoTaxa stores at most {OBJECT_NUMERIC_MAX}")
    if obj_t > OBJECT_TEXT_MAX:
        problems.append(f"{obj_t} text object_ columns: EcoTaxa stores at most {OBJECT_TEXT_MAX}")
    for prefix in ("sample", "acq", "process"):
        m = sum(1 for p, _ in free if p == prefix)
        if m > PARENT_COLUMNS_MAX:
            problems.append(f"{m} {prefix}_ columns besides the predefined ones: EcoTaxa stores at most "
                            f"{PARENT_COLUMNS_MAX}")
    if problems and raise_on:
        raise EcoTaxaExportError("; ".join(problems) + " (drop columns, e.g. features=False)")
    return problems


def tsv_bytes(columns: list[Column]) -> bytes:
    """Header, type row, one row per object; UTF-8 with a BOM, ``\\n`` line ends."""
    n = len(columns[0].cells) if columns else 0
    lines = ["\t".join(c.name for c in columns), "\t".join(f"[{c.kind}]" for c in columns)]
    cells = [c.cells for c in columns]
    lines += ["\t".join(col[i] for col in cells) for i in range(n)]
    return ("\n".join(lines) + "\n").encode("utf-8-sig")
