"""Write a whole synthetic cruise: frames, exact COCO ground truth, navigation, CTD, config.

Layout of OUT (other modules read it):
    cruise.yaml, frames/<NAME>_<YYYYMMDD>_<HHMMSS>_<mmm>.png, ground_truth.coco.json,
    nav.csv, ctd.csv
    ground_truth_stream.json (line-scan cruises: each object once, whole, in stream rows)
    avi/ (``avi=True``): the same frames as one lossless AVI, with its own cruise.yaml, nav.csv
        and ctd.csv: a cruise of its own (``segplank infer OUT/avi``); OUT's cruise.yaml then
        lists image extensions only, so ``segplank infer OUT`` still reads each frame once
The same seed gives byte-identical files whatever the number of workers: every frame is
rendered from its own random streams and results are gathered in frame order.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

import cv2
import numpy as np
import yaml

from .environment import Environment
from .params import TIMESTAMP_FORMAT, TIMESTAMP_REGEX, SynthConfig, iso_z
from .linescan import write_avi
from .render import encode_rle, render_frame

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fixed: same bytes every run, and fast
NAV_CTD_MARGIN_S = 15.0  # nav and CTD extend this far beyond the first and last frame
DEPTH_OF_FIELD_PX = 2500  # imaged depth in pixel sizes (25 mm at 10 µm): sets the volume
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class CruiseSummary:
    """What `make_cruise` wrote (the CLI prints `str(summary)`)."""

    out_dir: Path
    n_frames: int
    n_objects: int
    per_category: Mapping[str, int]
    seconds: float
    files: tuple[Path, ...]

    def lines(self) -> list[str]:
        per_frame = self.seconds / self.n_frames if self.n_frames else 0.0
        shown = {name: n for name, n in self.per_category.items() if n} if len(self.per_category) > 12 else self.per_category
        cats = ", ".join(f"{name} {n}" for name, n in shown.items())
        return [
            f"synthetic cruise in {self.out_dir}",
            f"  {self.n_frames} frames, {self.n_objects} annotated objects, {len(self.files)} files",
            f"  per category: {cats}",
            f"  {self.seconds:.1f} s ({per_frame:.2f} s per frame)",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


@dataclass(frozen=True)
class _FrameRecord:
    index: int
    annotations: list[dict[str, Any]]
    crops: list[dict[str, Any]] | None = None  # line scan: each annotation's box-relative RLE (the stream file's)


def make_cruise(out_dir: Path, n_frames: int = 10, seed: int = 0, *, preset: Literal["isiis", "uvp", "cfe"] = "isiis",
                density: Literal["sparse", "mixed", "dense"] = "mixed", plankton_share: float | None = None,
                size: tuple[int, int] = (2048, 2048), workers: int = 1,
                start_time: datetime = datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
                frame_rate_hz: float = 2.0, pixel_size_um: float = 10.0, avi: bool = False,
                organisms: Path | None = None, organisms_split: Literal["all", "train", "held_out"] = "all",
                organisms_held_out: float = 0.2, organisms_seed: int = 0,
                library_pixel_size_um: float | None = None, backgrounds: Path | None = None) -> CruiseSummary:
    """Render `n_frames` frames with exact ground truth, plus nav, CTD and cruise.yaml.

    `size` is (height, width); `plankton_share` overrides the share of plankton among
    objects (training sets); `workers` > 1 renders frames in a process pool. A line-scan
    (isiis) cruise also gets ``ground_truth_stream.json``; `avi` also writes the frames as
    one lossless AVI in ``avi/`` (a cruise folder of its own). ``organisms``: a vignette
    library whose organisms (its ``organisms_split``, as ``train-classifier --library``
    splits it with the same seed and share) replace the drawn plankton and detritus; the
    ground truth's categories are then the library's taxa and the drawn particles.
    ``backgrounds``: a folder of the user's own frames drawn behind the objects, whose own
    objects are ``iscrowd`` (ignore) annotations. ``preset="cfe"``: an area-camera
    shadowgraph (strong radial vignetting, gain drift, JPEG frames).
    """
    t0 = time.perf_counter()
    cfg = SynthConfig(seed=seed, n_frames=n_frames, preset=preset, density=density,
                      plankton_share=plankton_share, size=tuple(size), start_time=start_time,
                      frame_rate_hz=frame_rate_hz, pixel_size_um=pixel_size_um,
                      organisms=None if organisms is None else str(Path(organisms).resolve()),
                      organisms_split=organisms_split, organisms_held_out=organisms_held_out,
                      organisms_seed=organisms_seed, library_pixel_size_um=library_pixel_size_um,
                      backgrounds=None if backgrounds is None else str(Path(backgrounds).resolve()))
    out = Path(out_dir)
    frames_dir = out / "frames"
    _check_target(frames_dir, {cfg.frame_name(k) for k in range(n_frames)}, f"*{cfg.frame_suffix}")
    if avi:
        _check_target(out / "avi", {Path(cfg.frame_name(0)).stem + ".avi"}, "*.avi")
    frames_dir.mkdir(parents=True, exist_ok=True)

    records = _render_all(cfg, frames_dir, workers)
    files = [frames_dir / cfg.frame_name(k) for k in range(n_frames)]
    if cfg.line_scan:
        with StreamTruthWriter(out / "ground_truth_stream.json", cfg) as truth:
            counts = _write_coco(out / "ground_truth.coco.json", cfg, truth.tap(records))
        files.append(truth.path)
    else:
        counts = _write_coco(out / "ground_truth.coco.json", cfg, records)
    env = Environment.for_seed(cfg.seed)
    nav, ctd = nav_csv(cfg, env), ctd_csv(cfg, env)
    image_exts = IMAGE_EXTENSIONS if avi else None  # the AVI's frames must not be read twice
    files += [
        out / "ground_truth.coco.json",
        _write_text(out / "nav.csv", nav),
        _write_text(out / "ctd.csv", ctd),
        _write_text(out / "cruise.yaml", cruise_yaml(cfg, image_exts)),
    ]
    if avi and n_frames:
        files += write_avi_cruise(out / "avi", cfg, frames_dir, nav, ctd)
    return CruiseSummary(out, n_frames, sum(counts.values()),
                         {c["name"]: counts.get(c["id"], 0) for c in cfg.categories()},
                         time.perf_counter() - t0, tuple(files))


# --- frames --------------------------------------------------------------------------------

def _check_target(frames_dir: Path, names: set[str], pattern: str = "*.png") -> None:
    """Refuse to mix two cruises in one folder (stale frames would join the new one)."""
    if not frames_dir.is_dir():
        return
    stale = sorted(p.name for p in frames_dir.glob(pattern) if p.name not in names)
    if stale:
        raise FileExistsError(f"{frames_dir} already holds {len(stale)} frame(s) of another cruise "
                              f"(e.g. {stale[0]}); write the synthetic cruise to an empty folder")


def _render_all(cfg: SynthConfig, frames_dir: Path, workers: int) -> Iterator[_FrameRecord]:
    """Frame records in frame order, rendered here or in a process pool."""
    if workers <= 1 or cfg.n_frames <= 1:
        yield from (render_and_write(cfg, k, frames_dir) for k in range(cfg.n_frames))
        return
    # spawn: safe even when the parent holds threads (torch, a CLI's progress bar)
    with ProcessPoolExecutor(max_workers=min(workers, cfg.n_frames), mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        yield from pool.map(render_and_write, repeat(cfg), range(cfg.n_frames), repeat(frames_dir))


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses the cores


def render_and_write(cfg: SynthConfig, k: int, frames_dir: Path) -> _FrameRecord:
    """Render frame k, write it (PNG; JPEG for an area camera) and return its COCO annotations (ids come later)."""
    frame = render_frame(cfg, k)
    name = cfg.frame_name(k)
    _write_png(Path(frames_dir) / name, frame.image)
    h, w = cfg.height, cfg.width
    anns = [{
        "category_id": cfg.truth_category(o.spec),
        "segmentation": encode_rle(o.mask, o.x0, o.y0, h, w),
        "area": o.area,
        "bbox": o.bbox,
        "iscrowd": 0,
        # parts of one object cut by line-scan frame boundaries share their uid
        "attributes": {"uid": o.spec.uid, "truncated": o.truncated},
    } for o in frame.objects]
    if frame.ignore:  # the user's background frame's own objects: neither objects nor background
        crowd = cfg.truth_category_by_name("marine_snow")
        anns += [{"category_id": crowd, "segmentation": encode_rle(m, x, y, h, w), "area": int(m.sum()),
                  "bbox": [x, y, int(m.shape[1]), int(m.shape[0])], "iscrowd": 1,
                  "attributes": {"uid": f"ignore:{k}:{i}", "truncated": False}} for i, (x, y, m) in enumerate(frame.ignore)]
    crops = [encode_rle(o.mask, 0, 0, *o.mask.shape) for o in frame.objects] if cfg.line_scan else None
    return _FrameRecord(k, anns, crops)


# --- the same frames as one AVI --------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def write_avi_cruise(avi_dir: Path, cfg: SynthConfig, frames_dir: Path, nav: str, ctd: str) -> list[Path]:
    """``avi_dir``: the cruise's frames (read back from their PNGs, one at a time) as one lossless
    AVI named after the first frame, with cruise.yaml (AVI only), nav.csv and ctd.csv."""
    avi_dir = Path(avi_dir)
    avi_dir.mkdir(parents=True, exist_ok=True)
    path = avi_dir / (Path(cfg.frame_name(0)).stem + ".avi")
    tmp = path.with_name(f".{path.stem}.tmp.avi")
    try:
        write_avi(tmp, (cv2.imread(str(Path(frames_dir) / cfg.frame_name(k)), cv2.IMREAD_UNCHANGED)
                        for k in range(cfg.n_frames)), cfg.frame_rate_hz)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return [path, _write_text(avi_dir / "nav.csv", nav), _write_text(avi_dir / "ctd.csv", ctd),
            _write_text(avi_dir / "cruise.yaml", cruise_yaml(cfg, (".avi",)))]


# --- ground truth in stream coordinates (line scan) ----------------------------------------

class StreamTruthWriter:
    """``ground_truth_stream.json`` from the frame records as they pass (``tap``), never re-rendered.

    Each object once, whole, in stream coordinates (row 0 = frame 0's first line): ``uid``,
    ``category_id``, ``owner_frame`` (0-based frame of its first line; COCO image id - 1),
    ``frames`` it spans, ``x0``, ``y0`` (stream row), ``area`` and ``segmentation``, a COCO
    RLE relative to its box (``size`` = [h, w] of the box). Parts are joined by their
    ``attributes.uid``; only the parts of objects crossing a cut are decoded and merged. An
    object is written once a frame no longer continues it, so memory holds only the open ones.
    """

    def __init__(self, path: Path, cfg: SynthConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.n = 0
        self._open: dict[str, list] = {}  # uid → [(frame, x0, y0 stream, crop RLE, category, area)]
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._f = None

    def __enter__(self) -> "StreamTruthWriter":
        cfg = self.cfg
        head = {"info": {"description": f"segplank synthetic {cfg.instrument_name} cruise, seed {cfg.seed}: "
                                        "objects in stream coordinates, each once",
                         "version": str(GENERATOR_VERSION)},
                "frame_height": cfg.height, "width": cfg.width, "n_frames": cfg.n_frames,
                "categories": cfg.categories()}
        self._f = self._tmp.open("w", encoding="utf-8", newline="\n")
        self._f.write(_dumps(head)[:-1] + ',"objects":[')
        return self

    def tap(self, records: Iterable[_FrameRecord]) -> Iterator[_FrameRecord]:
        for rec in records:
            self.add(rec)
            yield rec

    def add(self, rec: _FrameRecord) -> None:
        seen = set()
        for ann, crop in zip(rec.annotations, rec.crops or ()):
            uid = ann["attributes"]["uid"]
            x, y = ann["bbox"][:2]
            self._open.setdefault(uid, []).append((rec.index, x, y + rec.index * self.cfg.height, crop,
                                                   ann["category_id"], ann["area"]))
            seen.add(uid)
        for uid in [u for u in self._open if u not in seen]:  # not continued by this frame: whole
            self._write(uid, self._open.pop(uid))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for uid in list(self._open):
                    self._write(uid, self._open.pop(uid))
                self._f.write("\n]}\n")
                self._f.close()
                os.replace(self._tmp, self.path)
        finally:
            if not self._f.closed:
                self._f.close()
            self._tmp.unlink(missing_ok=True)

    def _write(self, uid: str, parts: list) -> None:
        frames = sorted({p[0] for p in parts})
        if len(parts) == 1:
            _, x0, y0, rle, cat, area = parts[0]
        else:
            from pycocotools import mask as mask_utils

            x0, y0 = min(p[1] for p in parts), min(p[2] for p in parts)
            x1 = max(p[1] + p[3]["size"][1] for p in parts)
            y1 = max(p[2] + p[3]["size"][0] for p in parts)
            canvas = np.zeros((y1 - y0, x1 - x0), bool)
            for _, x, y, r, _, _ in parts:
                m = mask_utils.decode({"size": r["size"], "counts": r["counts"].encode("ascii")}).astype(bool)
                canvas[y - y0:y - y0 + m.shape[0], x - x0:x - x0 + m.shape[1]] |= m
            rle = encode_rle(canvas, 0, 0, *canvas.shape)
            cat, area = parts[0][4], int(canvas.sum())
        self.n += 1
        self._f.write(("\n" if self.n == 1 else ",\n") + _dumps({
            "id": self.n, "uid": uid, "category_id": cat, "owner_frame": frames[0], "frames": frames,
            "x0": int(x0), "y0": int(y0), "area": int(area), "segmentation": rle}))


def coco_image(cfg: SynthConfig, k: int) -> dict[str, Any]:
    return {"id": k + 1, "file_name": f"frames/{cfg.frame_name(k)}", "width": cfg.width, "height": cfg.height,
            "date_captured": iso_z(cfg.frame_time(k))}


JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 80]  # an area camera's frames, with their blocking


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write a frame atomically: PNG, or JPEG for a .jpg name."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image, JPEG_PARAMS if path.suffix == ".jpg" else PNG_PARAMS):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


def _write_coco(path: Path, cfg: SynthConfig, records: Iterable[_FrameRecord]) -> Counter:
    """Stream the COCO file frame by frame (memory stays flat); return counts per category id."""
    head = {
        "info": {"description": f"segplank synthetic {cfg.instrument_name} cruise, seed {cfg.seed}",
                 "version": str(GENERATOR_VERSION), "date_created": iso_z(cfg.start_time)},
        "licenses": [],
        "images": [coco_image(cfg, k) for k in range(cfg.n_frames)],
    }
    counts: Counter = Counter()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            f.write(_dumps(head)[:-1] + ',"annotations":[')
            n = 0
            for rec in records:
                for ann in rec.annotations:
                    n += 1
                    f.write(("\n" if n == 1 else ",\n") + _dumps({"id": n, "image_id": rec.index + 1, **ann}))
                    counts[ann["category_id"]] += 0 if ann["iscrowd"] else 1
            f.write("\n]," + _dumps({"categories": cfg.categories()})[1:] + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- nav, CTD, config ----------------------------------------------------------------------

def _time_grid(cfg: SynthConfig) -> tuple[list[datetime], np.ndarray]:
    """Whole UTC seconds covering every frame with a margin; also as seconds since start."""
    last = cfg.frame_time(max(cfg.n_frames - 1, 0))
    first_s = math.floor((cfg.start_time - timedelta(seconds=NAV_CTD_MARGIN_S)).timestamp())
    last_s = math.ceil((last + timedelta(seconds=NAV_CTD_MARGIN_S)).timestamp())
    epochs = np.arange(first_s, last_s + 1)
    times = [datetime.fromtimestamp(int(e), UTC) for e in epochs]
    return times, epochs - cfg.start_time.timestamp()


def nav_csv(cfg: SynthConfig, env: Environment) -> str:
    times, seconds = _time_grid(cfg)
    lat, lon = env.track(seconds)
    rows = ["time,lat,lon"] + [f"{iso_z(t, ms=False)},{a:.6f},{o:.6f}" for t, a, o in zip(times, lat, lon)]
    return "\n".join(rows) + "\n"


CTD_COLUMNS = ("pressure_dbar", "depth_m", "temperature_c", "salinity_psu", "fluorescence_mg_m3", "oxygen_umol_kg")
_CTD_DECIMALS = (3, 3, 4, 4, 4, 2)


def ctd_csv(cfg: SynthConfig, env: Environment) -> str:
    times, seconds = _time_grid(cfg)
    lat, _ = env.track(seconds)
    data = env.ctd(seconds, lat)
    rows = ["time," + ",".join(CTD_COLUMNS)]
    for i, t in enumerate(times):
        vals = ",".join(f"{data[c][i]:.{d}f}" for c, d in zip(CTD_COLUMNS, _CTD_DECIMALS))
        rows.append(f"{iso_z(t, ms=False)},{vals}")
    return "\n".join(rows) + "\n"


def volume_per_frame_l(cfg: SynthConfig) -> float:
    """Imaged volume: frame area times a depth of field of DEPTH_OF_FIELD_PX pixel sizes."""
    px_m = cfg.pixel_size_um * 1e-6
    litres = cfg.height * cfg.width * px_m ** 2 * DEPTH_OF_FIELD_PX * px_m * 1000.0
    return float(f"{litres:.6g}")


def cruise_yaml(cfg: SynthConfig, extensions: tuple[str, ...] | None = None) -> str:
    """The cruise's config; ``extensions``: the frame files to read (None: the pipeline's default)."""
    doc = {
        "instrument": {
            "name": cfg.instrument_name,
            "polarity": cfg.polarity,
            "pixel_size_um": float(cfg.pixel_size_um),
            "volume_per_frame_l": volume_per_frame_l(cfg),
            "frame_rate_hz": float(cfg.frame_rate_hz),
            # ISIIS frames are consecutive cuts of one line scan: frame_rate × height lines per second
            **({"line_rate_hz": float(cfg.frame_rate_hz * cfg.height)} if cfg.preset == "isiis" else {}),
            "timestamp_regex": TIMESTAMP_REGEX,
            "timestamp_format": TIMESTAMP_FORMAT,
            **({"extensions": list(extensions)} if extensions else {}),
        },
        "synth": {
            "seed": int(cfg.seed),
            "preset": cfg.preset,
            "density": cfg.density,
            "n_frames": int(cfg.n_frames),
            "size": [cfg.height, cfg.width],
            "plankton_share": cfg.plankton_share,
            "start_time": iso_z(cfg.start_time),
            "generator_version": GENERATOR_VERSION,
            **({"organisms": cfg.organisms, "organisms_split": cfg.organisms_split,
                "organisms_held_out": cfg.organisms_held_out, "organisms_seed": cfg.organisms_seed}
               if cfg.organisms else {}),
        },
    }
    return "# segplank synthetic cruise: instrument settings and how it was generated\n" + \
        yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
