"""One HTML page per run, for an ecologist to look at it before trusting it.

The page formats what the run wrote (the manifest, the object table, the figures of
`segplank profile`) and recomputes nothing: the vignettes are cut by the EcoTaxa export's own
functions, so both show the same crops. Every image is a PNG data URI, so the page is one
file that opens from disk in any browser, mailed or copied, with no server and nothing
beside it. Without the frames (only the run folder copied) the galleries list the objects
without their images and say how to point at the frames; the rest of the page is the same.
"""
from __future__ import annotations

import base64
import html
import math
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .io.atomic import atomic_path
from .export.ecotaxa import StreamFrames, cut_vignette, to_8bit
from .io.rle import decode_cropped
from .frames import FrameError, read_frame
from .runs import RunFolderError, frames_root, is_line_stream, read_frames, read_manifest, read_objects

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAD_PX = 10  # around each box, as in the EcoTaxa export
MIN_SIDE_PX = 48  # smaller vignettes are enlarged (whole factors, pixels kept square) ...
MAX_SIDE_PX = 120  # ... larger ones reduced: the galleries stay a grid of cells
OUTLINE_BGR = (0, 110, 255)  # the mask's outline: orange stands out on bright and dark frames alike
_COLUMNS = ["object_id", "frame_path", "frame_index", "label_name", "score", "is_plankton",
            "bbox_x", "bbox_y", "bbox_w", "bbox_h", "esd_um"]


@dataclass(frozen=True)
class Vignette:
    """One object of a gallery: its numbers always, its images when its frame was read."""

    object_id: str
    frame_path: str
    score: float
    esd_um: float
    raw: bytes | None = None  # PNG of the vignette as recorded
    outlined: bytes | None = None  # the same with the mask's outline
    zoom: float = 1.0  # drawn size / recorded size
    problem: str = ""  # why there is no image


@dataclass(frozen=True)
class Gallery:
    """One taxon's least and most confident objects (``most`` empty when ``least`` holds them all)."""

    taxon: str
    is_plankton: bool
    count: int
    least: list[Vignette]
    most: list[Vignette]


def write_report(run_dir: Path, out: Path | None = None, *, cruise_dir: Path | None = None,
                 per_taxon: int = 8) -> Path:
    """Write the run's report (default ``RUN_DIR/report.html``; a folder gets ``report.html`` in it).

    ``per_taxon``: vignettes of the least and of the most confident objects of each taxon.
    ``cruise_dir`` overrides the manifest's (the frames are read again for the vignettes).
    RunFolderError when ``run_dir`` holds no readable manifest.
    """
    run_dir = Path(run_dir)
    if per_taxon < 1:
        raise ValueError(f"per_taxon={per_taxon}: must be 1 or more")
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        out = out / "report.html"
    page = build_report(run_dir, cruise_dir=cruise_dir, per_taxon=per_taxon)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def build_report(run_dir: Path, *, cruise_dir: Path | None = None, per_taxon: int = 8) -> str:
    """The page as a string (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    objects, objects_problem = _objects(run_dir)
    frames = _frame_coverage(run_dir)
    galleries, gallery_problem, notes = _galleries(run_dir, manifest, objects, cruise_dir, per_taxon)
    figures = _figures(run_dir, manifest, frames)
    return _page(run_dir, manifest, objects, objects_problem, frames, galleries, gallery_problem, notes, figures,
                 per_taxon)


# --- reading the run ---------------------------------------------------------------------

def _objects(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """The object table without its masks (those are read for the gallery's objects only)."""
    try:
        return read_objects(run_dir, _COLUMNS), ""
    except RunFolderError as e:
        return None, str(e)
    except (pa.ArrowException, OSError, KeyError) as e:
        return None, f"{run_dir / 'objects'}: unreadable object table ({e}); rerun `segplank infer` into a fresh folder"


def _frame_coverage(run_dir: Path) -> dict[str, int] | None:
    """Processed frames without a time, a position, a depth, from the frame table as it is now
    (a `join-ctd` after `infer` may have given them depths); None without a readable table."""
    try:
        t = read_frames(run_dir, ["time", "lat", "lon", "depth_m"])
    except (RunFolderError, pa.ArrowException, OSError, KeyError):
        return None
    return {"frames": len(t), "no_time": int(t["time"].isna().sum()),
            "no_position": int((t["lat"].isna() | t["lon"].isna()).sum()), "no_depth": int(t["depth_m"].isna().sum())}


def _masks(run_dir: Path, ids: list[str]) -> dict[str, str]:
    """object_id -> mask_rle of ``ids`` only: a cruise's masks would not fit in memory for a page."""
    found: dict[str, str] = {}
    for part in sorted((run_dir / "objects").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["object_id", "mask_rle"], filters=[("object_id", "in", ids)])
        found.update(zip(t.column("object_id").to_pylist(), t.column("mask_rle").to_pylist()))
    return found


# --- galleries ---------------------------------------------------------------------------

def _pick(rows: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` least confident (least first) and ``k`` most confident (most first); all in the
    first when there are no more than ``2k``, so no object shows twice."""
    rows = rows.sort_values(["score", "object_id"], kind="stable")
    if len(rows) <= 2 * k:
        return rows, rows.iloc[:0]
    return rows.iloc[:k], rows.iloc[::-1].iloc[:k]


def _galleries(run_dir: Path, manifest: dict, objects: pd.DataFrame | None, cruise_dir: Path | None,
               k: int) -> tuple[list[Gallery], str, list[str]]:
    """Each taxon's gallery (most objects first), why there are no images (if so), and notes
    on the frames that could not be read."""
    if objects is None or objects.empty:
        return [], "", []
    picks = {}
    for taxon, rows in objects.groupby("label_name", sort=False):
        picks[str(taxon)] = _pick(rows, k)
    chosen = pd.concat([p for pair in picks.values() for p in pair])
    problem, notes, images = "", [], {}
    try:
        root = frames_root(manifest, run_dir, cruise_dir, list(pd.unique(chosen["frame_path"])[:50]))
        masks = _masks(run_dir, chosen["object_id"].drop_duplicates().tolist())
        images, notes = _cut(run_dir, manifest, root, chosen, masks)
    except FileNotFoundError as e:
        problem = f"{e}, e.g. `segplank report {shlex.quote(str(run_dir))} --cruise-dir PATH`"
    except RunFolderError as e:  # a line stream's frame table, read to find each frame's neighbours
        problem = str(e)
    missing = "frame not found" if problem else "not cut"
    counts = objects["label_name"].value_counts()
    plankton = objects["is_plankton"].fillna(False).astype(bool).groupby(objects["label_name"]).any()
    out = []
    for taxon in sorted(picks, key=lambda t: (-int(counts[t]), t)):
        least, most = picks[taxon]
        out.append(Gallery(taxon, bool(plankton[taxon]), int(counts[taxon]),
                           [_vignette(r, images, missing) for r in least.itertuples()],
                           [_vignette(r, images, missing) for r in most.itertuples()]))
    return out, problem, notes


def _vignette(row: Any, images: dict[str, tuple[bytes, bytes, float] | str], missing: str) -> Vignette:
    got = images.get(row.object_id, missing)
    esd = float(row.esd_um) if row.esd_um is not None and not pd.isna(row.esd_um) else math.nan
    base = {"object_id": str(row.object_id), "frame_path": str(row.frame_path), "score": float(row.score),
            "esd_um": esd}
    if isinstance(got, str):
        return Vignette(**base, problem=got)
    raw, outlined, zoom = got
    return Vignette(**base, raw=raw, outlined=outlined, zoom=zoom)


def _cut(run_dir: Path, manifest: dict, root: Path, chosen: pd.DataFrame,
         masks: dict[str, str]) -> tuple[dict[str, tuple[bytes, bytes, float] | str], list[str]]:
    """Each chosen object's (raw PNG, outlined PNG, zoom), or why not; each frame read once.

    A line-stream run's objects may reach past their frame: the frame is stacked with the
    neighbours they reach, as the EcoTaxa export does."""
    stream = StreamFrames(run_dir, root) if is_line_stream(manifest) else None
    chosen = chosen.drop_duplicates("object_id").sort_values(["frame_index", "frame_path"], kind="stable")
    images: dict[str, tuple[bytes, bytes, float] | str] = {}
    notes = []
    for fp, rows in chosen.groupby("frame_path", sort=False):
        try:
            image, shift = stream.stack(rows) if stream is not None else (read_frame(root / fp), 0)
        except FrameError as e:
            notes.append(f"{root / fp}: {e}; its {len(rows)} vignette(s) are left out")
            images.update({oid: "frame unreadable" for oid in rows["object_id"]})
            continue
        grey = to_8bit(image)
        fill = int(np.median(grey[::8, ::8]))
        for r in rows.itertuples():
            box = (int(r.bbox_x), int(r.bbox_y) + shift, int(r.bbox_w), int(r.bbox_h))
            v = cut_vignette(grey, box, PAD_PX, fill)
            rle = masks.get(r.object_id)
            mask = decode_cropped(rle, r.bbox_w, r.bbox_h) if rle else np.zeros((r.bbox_h, r.bbox_w), bool)
            images[r.object_id] = _draw(v, mask)
    return images, notes


def _draw(vignette: np.ndarray, mask: np.ndarray) -> tuple[bytes, bytes, float]:
    """The vignette at gallery size, as recorded and with its mask's outline; and the zoom."""
    h, w = vignette.shape
    side = max(h, w)
    if side < MIN_SIDE_PX:
        zoom: float = math.ceil(MIN_SIDE_PX / side)
    elif side > MAX_SIDE_PX:
        zoom = MAX_SIDE_PX / side
    else:
        zoom = 1.0
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    full = np.zeros((h, w), np.uint8)
    full[PAD_PX:PAD_PX + mask.shape[0], PAD_PX:PAD_PX + mask.shape[1]] = mask
    if zoom != 1.0:
        vignette = cv2.resize(vignette, size, interpolation=cv2.INTER_NEAREST if zoom > 1 else cv2.INTER_AREA)
        full = cv2.resize(full, size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(full, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outlined = cv2.drawContours(cv2.cvtColor(vignette, cv2.COLOR_GRAY2BGR), contours, -1, OUTLINE_BGR, 1)
    return _png(vignette), _png(outlined), zoom


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any 2-D or BGR uint8 array
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


# --- figures -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """A figure of `segplank profile`, or what to run to get it."""

    name: str
    title: str
    png: bytes | None
    hint: str


def _figures(run_dir: Path, manifest: dict, frames: dict[str, int] | None) -> list[Figure]:
    folder = run_dir / "profile"
    stated = ((manifest.get("config") or {}).get("instrument") or {}).get("volume_per_frame_l")
    cmd = f"segplank profile {shlex.quote(str(run_dir))}"
    make = (f"make it with <code>{_e(cmd)}</code>" if stated is not None else
            f"make it with <code>{_e(cmd)} --volume-per-frame L</code> (L: the litres imaged per frame; "
            "the run's config states none)")
    if frames and frames["frames"] and frames["no_depth"] == frames["frames"]:
        make += (f"; no frame has a depth yet: first <code>segplank join-ctd {_e(shlex.quote(str(run_dir)))} "
                 "CTD_FILE</code>")
    out = []
    for name, title, what in (("profile.png", "Vertical profile", "no profile figure"),
                              ("track.png", "Track map", "no track map")):
        path = folder / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            hint = what + ": " + make
            if name == "track.png" and (folder / "profile.png").is_file():
                hint = (f"{what}: no processed frame has a position (no navigation record covers them); "
                        "<code>segplank profile</code> draws it when one does")
            out.append(Figure(name, title, None, hint))
            continue
        except OSError as e:
            out.append(Figure(name, title, None, f"{_e(path)}: unreadable ({_e(e.strerror)}); " + make))
            continue
        if not data.startswith(PNG_SIGNATURE):
            out.append(Figure(name, title, None, f"{_e(path)} is not a PNG; " + make.replace("make it", "remake it")))
            continue
        out.append(Figure(name, title, data, ""))
    return out


# --- the page ----------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _n(value: Any) -> str:
    """A number for a cell: integers with thousands separators, '-' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):,.6g}"


def _row(label: str, value: Any, key: str = "", note: str = "") -> str:
    """A key-value row; ``key`` names the cell (``data-key``) for whoever reads the page back."""
    cell = _n(value) if isinstance(value, (int, float, np.integer, np.floating, bool)) or value is None else _e(value)
    attr = f' data-key="{_e(key)}"' if key else ""
    tail = f' <span class="note">{note}</span>' if note else ""
    return f"<tr><th>{_e(label)}</th><td{attr}>{cell}{tail}</td></tr>"


def _table(title: str, rows: list[str]) -> str:
    return f'<div class="card"><h3>{_e(title)}</h3><table class="kv">{"".join(rows)}</table></div>'


def _page(run_dir: Path, m: dict, objects: pd.DataFrame | None, objects_problem: str, frames: dict[str, int] | None,
          galleries: list[Gallery], gallery_problem: str, notes: list[str], figures: list[Figure],
          per_taxon: int) -> str:
    warnings = [str(w) for w in (m.get("warnings") or [])]
    name = run_dir.resolve().name or str(run_dir)
    written_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f'<p class="meta">{_e(run_dir.resolve())} · cruise {_e(m.get("cruise_dir", "?"))} · segplank '
            f'{_e(m.get("segplank_version", "?"))} · report by segplank {_e(__version__)}, {_e(written_at)}</p>')
    nav = ('<nav><a href="#summary">Summary</a> <a href="#taxa">Taxa</a> <a href="#galleries">Galleries</a> '
           f'<a href="#figures">Profile and track</a> <a href="#warnings">Warnings ({len(warnings)})</a></nav>')
    body = [
        f'<header><h1>segplank run <span class="run">{_e(name)}</span></h1>{meta}{nav}</header>',
        _banners(m, warnings, objects_problem),
        _summary(m, frames),
        _taxa(m, objects, galleries),
        _gallery_section(galleries, gallery_problem, notes, objects, objects_problem, per_taxon),
        _figure_section(figures),
        _warning_section(warnings),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>segplank run {_e(name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _banners(m: dict, warnings: list[str], objects_problem: str) -> str:
    out = []
    if not m.get("complete", False):
        why = f" (interrupted by {m['interrupted']})" if m.get("interrupted") else ""
        out.append(f'<p class="banner bad">This run is not finished{_e(why)}: rerun the same '
                   "<code>segplank infer</code> command to complete it; the numbers below cover the frames done.</p>")
    if (m.get("model") or {}).get("demo"):
        out.append('<p class="banner warn">The bundled demo model made these objects: it was trained on synthetic '
                   "frames only. Train your own with <code>segplank train</code> before trusting the taxa.</p>")
    skipped = ((m.get("frames") or {}).get("skipped")) or []
    if skipped:
        out.append(f'<p class="banner warn">{len(skipped)} frame(s) were skipped (see <a href="#skipped">why</a>).</p>')
    if warnings:
        out.append(f'<p class="banner warn">The run logged {len(warnings)} warning(s): '
                   '<a href="#warnings">read them</a> before using its numbers.</p>')
    if objects_problem:
        out.append(f'<p class="banner bad">{_e(objects_problem)}</p>')
    return "\n".join(out)


def _summary(m: dict, coverage: dict[str, int] | None) -> str:
    fr, tiles, geo = m.get("frames") or {}, m.get("tiles") or {}, m.get("geo") or {}
    cfg = m.get("config") or {}
    inst, tiling, flt = cfg.get("instrument") or {}, cfg.get("tiling") or {}, cfg.get("filter") or {}
    model = m.get("model") or {}
    skipped = fr.get("skipped") or []
    this, before = fr.get("done_this_run"), fr.get("done_before")
    processed = (this or 0) + (before or 0)
    frames = _table("Frames", [
        _row("frames found", fr.get("found"), "frames.found"),
        _row("processed (all runs of this folder)", processed, "frames.processed"),
        _row("processed by the last run", this, "frames.done_this_run"),
        _row("processed before (resumed)", before, "frames.done_before"),
        _row("skipped", len(skipped), "frames.skipped", "unreadable or empty frames: no volume imaged"),
        _row("tiles", tiles.get("total"), "tiles.total"),
        _row("empty tiles skipped", f"{tiles['skipped_share']:.1%}" if "skipped_share" in tiles else None,
             "tiles.skipped_share"),
        _row("tiles full of detections", tiles.get("capped"), "tiles.capped",
             "raise detections_per_tile if more than 0" if tiles.get("capped") else ""),
    ])
    cov = coverage or {"frames": geo.get("frames"), "no_time": geo.get("no_time"),
                       "no_position": _add(geo.get("no_time"), geo.get("outside_nav")),
                       "no_depth": _add(geo.get("no_time"), geo.get("outside_ctd"))}
    source = "the frame table now" if coverage else "the manifest (no readable frame table)"
    join = m.get("ctd_join") or {}
    nav = _table("Navigation and CTD", [
        _row("navigation record", geo.get("nav") or "none found"),
        _row("CTD record", geo.get("ctd") or "none found"),
        _row("depth from", geo.get("depth_from") or "-"),
        _row("largest gap bridged (s)", geo.get("max_gap_s")),
        _row("processed frames", cov["frames"], "coverage.frames", f"from {source}"),
        _row("with no time", cov["no_time"], "coverage.no_time", "no time, so no position or depth either"),
        _row("with no position", cov["no_position"], "coverage.no_position"),
        _row("with no depth", cov["no_depth"], "coverage.no_depth"),
        *([_row("CTD joined after infer", f"{join.get('file')} ({', '.join(join.get('columns') or []) or 'none'})"),
           _row("frames without a CTD sample", join.get("frames_without_ctd"), "ctd_join.frames_without_ctd")]
          if join else []),
    ])
    volume = inst.get("volume_per_frame_l")
    instrument = _table("Instrument and config", [
        _row("instrument", inst.get("name", "?")),
        _row("polarity", inst.get("polarity", "?")),
        _row("pixel size (µm)", inst.get("pixel_size_um"), "instrument.pixel_size_um"),
        _row("volume per frame (L)", volume, "instrument.volume_per_frame_l",
             "" if volume is not None else "not stated: concentrations need instrument.volume_per_frame_l "
             "or <code>--volume-per-frame</code>"),
        _row("frame rate (Hz)", inst.get("frame_rate_hz")),
        _row("line rate (Hz)", inst.get("line_rate_hz")),
        _row("line stream", bool((cfg.get("stream") or {}).get("enabled")), "",
             "objects across frame cuts stitched" if (cfg.get("stream") or {}).get("enabled") else ""),
        _row("tile size / overlap (px)", f"{tiling.get('tile_size', '?')} / {tiling.get('overlap', '?')}"),
        _row("score threshold", flt.get("score_threshold"), "filter.score_threshold",
             "and each class's own (Taxa)"),
        _row("size limits (µm)", f"{_n(flt.get('min_size_um') or 0)} to "
             f"{'no limit' if flt.get('max_size_um') is None else _n(flt['max_size_um'])}"),
        _row("non-plankton written", bool(flt.get("keep_non_plankton"))),
    ])
    sha = str(model.get("sha256", ""))
    model_t = _table("Model and timing", [
        _row("model", Path(str(model.get("path", "?"))).name, "", _e(sha[:12]) if sha else ""),
        _row("demo model", bool(model.get("demo")), "model.demo",
             "synthetic training only" if model.get("demo") else ""),
        _row("device / engine", f"{m.get('device', '?')} / {(m.get('engine') or {}).get('name', '?')}"),
        _row("run time (s)", m.get("seconds"), "seconds", "the last run"),
        _row("frames per second", f"{this / m['seconds']:.3g}" if this and m.get("seconds") else None),
        _row("time per stage", _stages(m.get("stage_seconds") or {})),
    ])
    skipped_t = ""
    if skipped:
        lines = "".join(f"<tr><td>{_e(s.get('path'))}</td><td>{_e(s.get('reason'))}</td></tr>" for s in skipped)
        skipped_t = (f'<h3 id="skipped">Skipped frames</h3><table class="list"><tr><th>frame</th><th>reason</th></tr>'
                     f"{lines}</table>")
    return (f'<section id="summary"><h2>Summary</h2><div class="cards">{frames}{nav}{instrument}{model_t}</div>'
            f"{skipped_t}</section>")


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _stages(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in seconds.items()) if total else "-"


def _taxa(m: dict, objects: pd.DataFrame | None, galleries: list[Gallery]) -> str:
    counts = m.get("counts") or {}
    detected, written = counts.get("detected_per_class") or {}, counts.get("written_per_class") or {}
    classes = {c.get("name"): c for c in (m.get("model") or {}).get("classes") or []}
    in_table = objects["label_name"].value_counts().to_dict() if objects is not None else {}
    linked = {g.taxon: k for k, g in enumerate(galleries)}
    names = sorted(set(detected) | set(written) | set(in_table), key=lambda t: (-detected.get(t, 0), str(t)))
    rows = []
    for t in names:
        c = classes.get(t, {})
        kind = "plankton" if c.get("is_plankton", t in written) else "not plankton"
        link = f'<a href="#taxon-{linked[t]}">gallery</a>' if t in linked else ""
        rows.append(f'<tr data-taxon="{_e(t)}"><td>{_e(t)}</td><td>{kind}</td>'
                    f'<td class="num" data-key="detected">{_n(detected.get(t, 0))}</td>'
                    f'<td class="num" data-key="written">{_n(written.get(t, 0))}</td>'
                    f'<td class="num">{_n(c.get("score_threshold"))}</td><td>{link}</td></tr>')
    total_d = sum(detected.values())
    non_plankton = ", and non-plankton" if ((m.get("config") or {}).get("filter") or {}).get("keep_non_plankton") else ""
    plank = sum(n for t, n in detected.items() if classes.get(t, {}).get("is_plankton"))
    mismatch = ""
    if objects is not None and in_table != {k: v for k, v in written.items() if v}:
        mismatch = ('<p class="banner warn">The object table does not hold what the manifest says was written '
                    f"({_n(len(objects))} rows); the galleries show the table.</p>")
    return (f'<section id="taxa"><h2>Objects per taxon</h2>{mismatch}<table class="list taxa">'
            "<tr><th>taxon</th><th></th><th>detected</th><th>written</th><th>class threshold</th><th></th></tr>"
            + "".join(rows)
            + f'<tr class="total"><td>all</td><td></td><td class="num" data-key="detected_total">{_n(total_d)}</td>'
            f'<td class="num" data-key="objects_written">{_n(counts.get("objects_written"))}</td><td></td><td></td>'
            "</tr>"
            f'</table><p class="note">Detected: every detection, written or not; '
            f"written: the rows of the object table (plankton above their score threshold"
            f"{non_plankton}). "
            f"Plankton share of detections: {f'{plank / total_d:.1%}' if total_d else '-'}.</p></section>")


def _gallery_section(galleries: list[Gallery], problem: str, notes: list[str], objects: pd.DataFrame | None,
                     objects_problem: str, k: int) -> str:
    head = '<section id="galleries"><h2>Galleries</h2>'
    if objects is None:
        return head + f'<p class="banner bad">No galleries: {_e(objects_problem)}</p></section>'
    if not galleries:
        return head + "<p>The run wrote no objects.</p></section>"
    intro = (f"<p>Per taxon, the {k} least and the {k} most confident objects, each with its score and its "
             f"equivalent spherical diameter (ESD). The box plus {PAD_PX} px on each side, as recorded; vignettes "
             f"are drawn at least {MIN_SIDE_PX} px and at most {MAX_SIDE_PX} px on their longer side, the factor "
             "shown when not 1.</p>")
    if problem:
        intro += f'<p class="banner bad">No vignettes: {_e(problem)}</p>'
    else:
        intro += '<p><label><input type="checkbox" id="show-masks"> show the mask outlines</label></p>'
    intro += "".join(f'<p class="banner warn">{_e(n)}</p>' for n in notes)
    parts = []
    for i, g in enumerate(galleries):
        kind = "" if g.is_plankton else ' <span class="note">(not plankton)</span>'
        noun = "object" if g.count == 1 else "objects"
        only = "the only one" if g.count == 1 else f"all {g.count}, least confident first"
        strips = (_strip(only, g.least) if not g.most else
                  _strip(f"{len(g.least)} least confident", g.least) + _strip(f"{len(g.most)} most confident", g.most))
        parts.append(f'<section class="taxon" id="taxon-{i}" data-taxon="{_e(g.taxon)}">'
                     f'<h3>{_e(g.taxon)}{kind} <span class="count">{_n(g.count)} {noun}</span></h3>{strips}</section>')
    return head + intro + '<div class="galleries">' + "".join(parts) + "</div></section>"


def _strip(title: str, vignettes: list[Vignette]) -> str:
    cells = []
    for v in vignettes:
        esd = f"{v.esd_um:,.0f} µm" if math.isfinite(v.esd_um) else "- µm"
        zoom = "" if v.zoom == 1 else (f" · ×{v.zoom:.0f}" if v.zoom > 1 else f" · ×{v.zoom:.2f}")
        tip = _e(f"{v.object_id} in {v.frame_path}")
        if v.raw is not None and v.outlined is not None:
            img = (f'<img class="raw" src="{_uri(v.raw)}" alt="{_e(v.object_id)}">'
                   f'<img class="outlined" src="{_uri(v.outlined)}" alt="{_e(v.object_id)} with its mask">')
        else:
            img = f'<div class="noimg">{_e(v.problem or "no image")}</div>'
        cells.append(f'<figure title="{tip}"><div class="pic">{img}</div><figcaption>'
                     f'<b>{v.score:.2f}</b> · {esd}{zoom}</figcaption></figure>')
    return f'<div class="strip"><h4>{_e(title)}</h4><div class="cells">{"".join(cells)}</div></div>'


def _figure_section(figures: list[Figure]) -> str:
    parts = []
    for f in figures:
        if f.png is not None:
            parts.append(f'<figure class="plot"><img src="{_uri(f.png)}" alt="{_e(f.title)}">'
                         f"<figcaption>{_e(f.title)} (profile/{_e(f.name)})</figcaption></figure>")
        else:
            parts.append(f'<p class="banner info">{f.hint}</p>')
    return f'<section id="figures"><h2>Profile and track</h2>{"".join(parts)}</section>'


def _warning_section(warnings: list[str]) -> str:
    if not warnings:
        return '<section id="warnings"><h2>Warnings</h2><p>The run logged no warning.</p></section>'
    items = "".join(f'<li class="warning">{_e(w)}</li>' for w in warnings)
    return f'<section id="warnings"><h2>Warnings ({len(warnings)})</h2><ol>{items}</ol></section>'


_CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --card: #f6f8fb; --accent: #0b6e99; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 24px; margin: 8px 0 2px; } h1 .run { color: var(--accent); }
h2 { font-size: 20px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 16px; margin: 0 0 6px; } #skipped { margin-top: 16px; }
h4 { font-size: 13px; color: var(--muted); margin: 8px 0 4px;
     font-weight: 600; text-transform: uppercase; letter-spacing: .03em; }
.meta, .note { color: var(--muted); font-size: 13px; } .meta { margin: 0 0 8px; word-break: break-all; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-weight: 600; }
code { background: #eef1f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
.banner { padding: 8px 12px; border-radius: 6px; border-left: 5px solid; margin: 8px 0; }
.banner.bad { background: #fdecec; border-color: #c62828; } .banner.warn { background: #fff6e0; border-color: #e0a100; }
.banner.info { background: #e9f3fa; border-color: var(--accent); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
table { border-collapse: collapse; } .kv { width: 100%; }
.kv th { width: 46%; text-align: left; font-weight: normal; color: var(--muted); padding: 2px 10px 2px 0;
         vertical-align: top; }
.kv td { padding: 2px 0; font-variant-numeric: tabular-nums; word-break: break-word; }
.list th, .list td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left; }
.list td.num { text-align: right; font-variant-numeric: tabular-nums; } .list tr.total td { font-weight: 600; }
.taxa th:nth-child(n+3):nth-child(-n+5) { text-align: right; }
.taxon { border-top: 1px solid var(--line); padding-top: 10px; margin-top: 14px; }
.taxon .count { color: var(--muted); font-weight: normal; font-size: 13px; margin-left: 6px; }
.cells { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; } .cells figure { width: 132px; background: var(--card); border: 1px solid var(--line);
        border-radius: 6px; padding: 5px; }
.pic { height: 122px; display: flex; align-items: center; justify-content: center; background: #8a8f98;
       border-radius: 3px; }
.pic img { max-width: 120px; max-height: 120px; image-rendering: pixelated; display: block; }
.pic .outlined { display: none; }
#galleries:has(#show-masks:checked) .pic .raw { display: none; }
#galleries:has(#show-masks:checked) .pic .outlined { display: block; }
.noimg { color: #fff; font-size: 12px; padding: 8px; text-align: center; overflow: hidden; max-height: 120px; }
figcaption { font-size: 12px; text-align: center; margin-top: 4px; font-variant-numeric: tabular-nums; }
.plot img { max-width: 100%; height: auto; border: 1px solid var(--line); display: block; }
.plot { margin: 12px 0 20px; } .plot figcaption { text-align: left; color: var(--muted); }
ol { padding-left: 24px; } li.warning { margin: 4px 0; font-family: ui-monospace, Menlo, Consolas, monospace;
     font-size: 13px; white-space: pre-wrap; word-break: break-word; }
"""
