"""The annotation loop: a run's predictions as editable COCO polygons, for CVAT or Label Studio.

:func:`export_for_annotation` writes the frames (or tiles of them) of a ``segplank infer``
run as 8-bit PNG under ``out/images/`` and its objects as polygons in
``out/annotations.coco.json``; annotators move vertices, delete, relabel and add objects,
and the corrected file goes straight back to ``segplank train`` (file names are relative to
the COCO file's folder, train's default image root). Label Studio reads COCO through
``label-studio-converter import coco``; CVAT imports it as "COCO 1.0".

Choices, and why:

- Categories are all the model's classes, plankton and non-plankton (supercategory as in
  ``export/coco.py``), ids the model's labels: any object can be relabelled to any class.
  Non-plankton predictions exist only in a run made with ``--keep-non-plankton``; without
  it a warning says that annotators see plankton predictions only.
- Polygons join the midpoints of the mask's boundary pixel edges: pycocotools fills the
  pixels whose centres a polygon encloses, so this outline gives the mask back. It is
  simplified (1 px, else 0.7 or 0.3 px) where the simpler outline keeps IoU >= 0.95 with the
  mask, so a large object has tens of vertices a person can drag, not hundreds. A mask in
  several pieces gives several polygons. COCO polygons cannot hold holes: the outer
  outline is kept and a ring comes back filled.
- Uncertainty of an image: the mean over its objects of ``1 - |2 * score - 1|`` (1 at score
  0.5, 0 at 0 or 1): how unsure the model is about what the annotator will look at, the
  same scale for a crowded and a sparse image. Every image record carries it as
  ``uncertainty``; ``uncertain_first`` orders the images (and their ids) by it, most
  uncertain first, ties in frame order, and names the files ``images/<rank>_<name>.png``
  (flat), because CVAT lists a task's images by name.
- Only images holding objects are written: a frame or tile with no prediction offers
  nothing to correct. Tiles are a grid without overlap (edge tiles smaller), so each pixel
  is annotated once; an object cut by a tile border is clipped to the tile and flagged
  ``attributes.truncated``. ``frame_offset`` in the image record maps tile px to frame px.
- A line-stream run (``--stream``, the default for line-scan cameras) attributes an organism
  across a frame cut to the frame of its first line; here each frame it reaches holds its
  piece, clipped and flagged ``attributes.truncated`` under the same ``object_id``, so no
  frame offers an organism's pixels as background to the next training.
- 16-bit frames are divided by 257: the values the model sees (``to_model_input`` divides
  by 65535) are unchanged, so the next model trains on what it will infer on; dim frames
  need the annotation tool's brightness control.
"""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Iterator, Literal, NamedTuple

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from .io.atomic import write_json
from .export.coco import coco_categories
from .io.rle import decode_cropped
from .runs import frame_paths, frames_root, is_line_stream, read_manifest, read_objects

log = logging.getLogger("segplank")

Unit = Literal["frame", "tile"]
COCO_NAME = "annotations.coco.json"
SIMPLIFY_PX = (1.0, 0.7, 0.3)  # tried in turn
MIN_SIMPLIFIED_IOU = 0.95
_COLUMNS = ["object_id", "frame_path", "frame_index", "label", "label_name", "score", "is_plankton",
            "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask_rle"]


class AnnotationExportError(ValueError):
    """A request the export cannot honour; the message says what to change."""


def export_for_annotation(run_dir: Path, out: Path, *, unit: Unit = "frame", tile_size: int = 1024,
                          uncertain_first: bool = False, include_non_plankton: bool = True,
                          cruise_dir: Path | None = None) -> Path:
    """Write ``out/images/`` and ``out/annotations.coco.json`` for correction; returns the COCO path.

    ``cruise_dir`` overrides the manifest's (where the frames are read from).
    """
    if unit not in ("frame", "tile"):
        raise AnnotationExportError(f"unit={unit!r}: choose frame or tile")
    if tile_size < 1:
        raise AnnotationExportError(f"tile_size={tile_size}: must be 1 or more")
    run_dir, out = Path(run_dir), Path(out)
    manifest = read_manifest(run_dir)
    classes = (manifest.get("model") or {}).get("classes") or []
    if not classes:
        raise AnnotationExportError(f"{run_dir}/manifest.json names no model classes; re-run `segplank infer`")
    table = _objects(run_dir, manifest, include_non_plankton)
    records: list[tuple[dict, list[dict]]] = []
    if len(table):
        root = frames_root(manifest, run_dir, cruise_dir, list(pd.unique(table["frame_path"]))[:50])
        if is_line_stream(manifest):
            reach = int(((manifest.get("config") or {}).get("stream") or {}).get("max_open_frames", 4)) + 1
            frames = _stream_frames(table, run_dir, root, reach)
        else:
            frames = _own_frames(table, root)
        for fp, grey, items in frames:
            records += _frame_records(grey, fp, items, out, unit, tile_size, flat=uncertain_first)
    if uncertain_first:
        records.sort(key=lambda r: -r[0]["uncertainty"])  # stable: ties stay in frame order
        _rank_names([image for image, _ in records], out)
    path = out / COCO_NAME
    write_json(path, _coco(records, classes, run_dir, manifest, unit, tile_size, uncertain_first))
    return path


def _objects(run_dir: Path, manifest: dict, include_non_plankton: bool) -> pd.DataFrame:
    """The objects to offer, in frame order."""
    table = read_objects(run_dir, _COLUMNS)
    kept_non_plankton = ((manifest.get("config") or {}).get("filter") or {}).get("keep_non_plankton", False)
    if not include_non_plankton:
        table = table[table["is_plankton"].fillna(False).astype(bool)]
    elif not kept_non_plankton:
        log.warning("%s was run without --keep-non-plankton: it holds no non-plankton predictions, so annotators "
                    "see plankton predictions only (every class is still offered for relabelling)", run_dir)
    return table.sort_values(["frame_index", "frame_path", "object_id"], kind="stable").reset_index(drop=True)


class Piece(NamedTuple):
    """What one frame holds of one object."""

    row: dict
    origin: tuple[int, int]  # frame px
    mask: np.ndarray  # box mask
    cut: bool = False  # a piece of a line-stream object across a frame cut


def _own_pieces(table: pd.DataFrame) -> dict[str, list[Piece]]:
    """Frame path -> its objects, each whole in its own frame."""
    out: dict[str, list[Piece]] = {}
    for fp, rows in table.groupby("frame_path", sort=False):
        origins = rows[["bbox_x", "bbox_y"]].to_numpy(np.int64)
        out[str(fp)] = [Piece(r, (int(o[0]), int(o[1])), m)
                        for r, o, m in zip(rows.to_dict("records"), origins, box_masks(rows))]
    return out


Frame = tuple[str, np.ndarray, list[Piece]]  # (frame path, 8-bit grey frame, what it holds)


def _own_frames(table: pd.DataFrame, root: Path) -> Iterator[Frame]:
    """Each frame holding objects, read once, with its objects (a frame-by-frame run)."""
    for fp, items in _own_pieces(table).items():
        grey = _read_grey(root, fp, len(items))
        if grey is not None:
            yield fp, grey, items


def _stream_frames(table: pd.DataFrame, run_dir: Path, root: Path, reach: int) -> Iterator[Frame]:
    """Each frame that objects reach, read once, with the pieces of every object in it (a line stream).

    An object lies in the frames of its first line and may reach the next ones (or, grown by
    refinement, the frame above): frames are cut in index order and a frame is given out once
    no later object can reach it (one spans at most ``reach`` frames), so at most that many
    stay in memory. A stream's frames share one height.
    """
    from .stream import frame_pieces

    paths = frame_paths(run_dir)
    pieces: dict[int, list[Piece]] = {}
    greys: dict[int, np.ndarray] = {}
    given = -1  # frames up to this index are out

    def ready(upto: int) -> Iterator[Frame]:
        nonlocal given
        for k in sorted(i for i in pieces if i <= upto):
            items = pieces.pop(k)
            grey = greys.pop(k, None)
            if grey is None:  # a frame reached only by its neighbours' objects
                grey = _read_grey(root, paths[k], len(items))
            if grey is not None:
                yield paths[k], grey, items
        given = max(given, upto)
        for k in [i for i in greys if i <= upto]:
            del greys[k]

    for fp, items in _own_pieces(table).items():  # the table is in frame index order
        k = int(items[0].row["frame_index"])
        grey = _read_grey(root, fp, len(items))
        if grey is not None:
            greys[k] = grey
            for p in items:
                cut = frame_pieces(p.mask, p.origin, grey.shape[0])
                for step, origin, mask in cut:
                    if given < k + step and k + step in paths:
                        pieces.setdefault(k + step, []).append(Piece(p.row, origin, mask, len(cut) > 1))
        yield from ready(k - reach)
    yield from ready(max(pieces, default=given))


def _read_grey(root: Path, frame_path: str, n_objects: int) -> np.ndarray | None:
    """The frame at the model's 8-bit scale; None, with a warning, if it cannot be read."""
    from .frames import FrameError, read_frame

    try:
        return model_scale_8bit(read_frame(root / frame_path))
    except FrameError as e:
        log.warning("%s: %s; its %d object(s) are left out of the annotation export", frame_path, e, n_objects)
        return None


def box_masks(rows: pd.DataFrame) -> list[np.ndarray]:
    """The rows' masks as bool bitmaps cropped to their boxes (``mask_rle`` is box-relative)."""
    return [decode_cropped(c, w, h) for c, w, h in zip(rows["mask_rle"], rows["bbox_w"], rows["bbox_h"])]


def model_scale_8bit(image: np.ndarray) -> np.ndarray:
    """8-bit frames as they are; 16-bit ones divided by 257, the scale the model reads them at."""
    if image.dtype == np.uint8:
        return image
    return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _frame_records(grey: np.ndarray, frame_path: str, items: list[Piece], out: Path, unit: Unit, tile_size: int,
                   flat: bool) -> list[tuple[dict, list[dict]]]:
    """(image record, its annotations) for each frame or tile holding objects; PNGs written
    (all in ``images/`` itself with ``flat``)."""
    h, w = grey.shape
    windows = tile_windows(h, w, tile_size) if unit == "tile" else np.array([[0, 0, w, h]])
    boxes = np.array([[*p.origin, p.mask.shape[1], p.mask.shape[0]] for p in items], np.int64).reshape(-1, 4)
    stem = image_stem(frame_path).replace("/", "__") if flat else image_stem(frame_path)
    records = []
    for x0, y0, x1, y1 in windows.tolist():
        near = np.flatnonzero((boxes[:, 0] < x1) & (boxes[:, 0] + boxes[:, 2] > x0)
                              & (boxes[:, 1] < y1) & (boxes[:, 1] + boxes[:, 3] > y0))
        anns = [ann for k in near
                if (ann := _annotation(items[k], (x0, y0, x1, y1))) is not None]
        if not anns:
            continue
        name = f"images/{stem}.png" if unit == "frame" else f"images/{stem}_x{x0}_y{y0}.png"
        _write_png(out / name, grey[y0:y1, x0:x1])
        image = {"file_name": name, "width": x1 - x0, "height": y1 - y0, "frame_path": frame_path,
                 "frame_offset": [x0, y0],
                 "uncertainty": round(image_uncertainty(np.array([a["score"] for a in anns])), 6)}
        records.append((image, anns))
    return records


def _rank_names(images: list[dict], out: Path) -> None:
    """Prefix each (flat) image file with its rank, so tools that sort by name keep the order."""
    width = len(str(len(images)))
    for rank, image in enumerate(images, start=1):
        name = f"images/{rank:0{width}d}_{image['file_name'].removeprefix('images/')}"
        (out / image["file_name"]).replace(out / name)
        image["file_name"] = name


def tile_windows(height: int, width: int, tile_size: int) -> np.ndarray:
    """Windows ``(T, 4)`` int64, x0 y0 x1 y1, row-major, without overlap; edge tiles are smaller."""
    ys = np.arange(0, height, tile_size, dtype=np.int64)
    xs = np.arange(0, width, tile_size, dtype=np.int64)
    y0, x0 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    return np.stack([x0, y0, np.minimum(x0 + tile_size, width), np.minimum(y0 + tile_size, height)], 1)


def image_uncertainty(scores: np.ndarray) -> float:
    """Mean of ``1 - |2 * score - 1|`` over an image's objects: 1 when all sit at 0.5."""
    return float(np.mean(1.0 - np.abs(2.0 * np.asarray(scores, np.float64) - 1.0))) if len(scores) else 0.0


def image_stem(frame_path: str) -> str:
    """A relative, collision-free name for a frame's images: the frame path without ``.png``
    (another extension stays in the name, so ``a.tif`` and ``a.png`` stay apart)."""
    p = PurePosixPath(str(frame_path).replace("\\", "/"))
    parts = [q for q in p.parts if q not in ("/", ".", "..") and not q.endswith(":")]
    name = parts[-1]
    parts[-1] = name[:-4] if name.lower().endswith(".png") else name.replace(".", "_")
    return "/".join(parts)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:  # pragma: no cover - OpenCV encodes any 2-D uint8 array
        raise AnnotationExportError(f"{path}: PNG encoding failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def clip_to_window(bitmap: np.ndarray, origin: tuple[int, int],
                   window: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int], bool] | None:
    """The part of a box mask inside ``window`` (x0 y0 x1 y1 frame px): the cropped bitmap, its
    origin in window px and whether some of the mask fell outside; None if nothing is inside."""
    ox, oy = int(origin[0]), int(origin[1])
    h, w = bitmap.shape
    x0, y0, x1, y1 = window
    cx0, cy0, cx1, cy1 = max(ox, x0), max(oy, y0), min(ox + w, x1), min(oy + h, y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    part = bitmap[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox]
    inside = int(part.sum())
    if inside == 0:
        return None
    return part, (cx0 - x0, cy0 - y0), inside < int(bitmap.sum())


def _annotation(piece: Piece, window: tuple[int, int, int, int]) -> dict | None:
    """One object in one image as an editable polygon annotation (ids come later)."""
    clipped = clip_to_window(piece.mask, piece.origin, window)
    if clipped is None:
        return None
    part, (px, py), truncated = clipped
    row = piece.row
    polygons, filled = mask_polygons(part)
    ys, xs = np.nonzero(filled.any(1))[0], np.nonzero(filled.any(0))[0]
    score = round(float(row["score"]), 5)
    return {
        "category_id": int(row["label"]),
        "segmentation": [(np.asarray(p, np.float64) + np.tile([px, py], len(p) // 2)).tolist() for p in polygons],
        "area": int(filled.sum()),
        "bbox": [int(px + xs[0]), int(py + ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)],
        "iscrowd": 0, "score": score,
        "attributes": {"object_id": str(row["object_id"]), "score": score, "model_label": str(row["label_name"]),
                       "truncated": bool(truncated or piece.cut)},
    }


def mask_polygons(bitmap: np.ndarray) -> tuple[list[list[float]], np.ndarray]:
    """Outer outlines of a mask (box px), one per piece, and the mask they fill (holes filled).

    The outline joins the midpoints of the mask's boundary pixel edges: it separates the
    centres of the pixels inside from those outside, which is how pycocotools fills a
    polygon, and it cuts the pixel staircase into straight lines. Simplified at the first of
    ``SIMPLIFY_PX`` that keeps IoU >= ``MIN_SIMPLIFIED_IOU`` with the mask.
    """
    outline = [(p + np.roll(p, -1, axis=0)) / 2.0 for p in _pixel_edge_outlines(bitmap)]
    for eps in SIMPLIFY_PX:
        simple = [_simplify(p, eps) for p in outline]
        filled = _fill(simple, bitmap.shape)
        if np.logical_and(filled, bitmap).sum() >= MIN_SIMPLIFIED_IOU * np.logical_or(filled, bitmap).sum():
            return [p.ravel().tolist() for p in simple], filled
    return [p.ravel().tolist() for p in outline], _fill(outline, bitmap.shape)


def _pixel_edge_outlines(bitmap: np.ndarray) -> list[np.ndarray]:
    """(K, 2) int pixel corners per piece, in unit steps. Traced on the mask upsampled 2x and
    padded by one: sub-pixel ``u`` of the padded grid lies on the pixel edge at ``u // 2``
    (left/top halves map to a pixel's first corner, right/bottom halves to its last)."""
    up = np.pad(np.kron(bitmap.astype(np.uint8), np.ones((2, 2), np.uint8)), 1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for c in contours:
        p = c.reshape(-1, 2) // 2
        out.append(p[np.any(p != np.roll(p, 1, axis=0), axis=1)])  # corners repeated by the halving
    return out


def _simplify(points: np.ndarray, eps: float) -> np.ndarray:
    """Douglas-Peucker at ``eps`` px, unless it leaves fewer than 3 points (not a polygon, and
    pycocotools reads a 4-number polygon as a box)."""
    q = cv2.approxPolyDP(points.reshape(-1, 1, 2).astype(np.float32), eps, True).reshape(-1, 2)
    return q.astype(np.float64) if len(q) >= 3 else points


def _fill(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The bool mask pycocotools makes of these polygons, in box px."""
    h, w = shape
    rle = mask_utils.merge(mask_utils.frPyObjects([p.ravel().astype(np.float64).tolist() for p in polygons], h, w))
    return mask_utils.decode(rle).astype(bool)


def _coco(records: list[tuple[dict, list[dict]]], classes: list[dict], run_dir: Path, manifest: dict, unit: Unit,
          tile_size: int, uncertain_first: bool) -> dict:
    """The COCO document: image and annotation ids follow the image order."""
    images, annotations = [], []
    for image_id, (image, anns) in enumerate(records, start=1):
        images.append({"id": image_id, **image})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    categories = coco_categories([c["name"] for c in classes], [bool(c["is_plankton"]) for c in classes])
    info = {"description": "segplank predictions for correction", "run_dir": str(run_dir), "unit": unit,
            "tile_size": tile_size if unit == "tile" else None, "uncertain_first": uncertain_first,
            "model_sha256": (manifest.get("model") or {}).get("sha256"),
            "uncertainty": "per image: mean over its objects of 1 - |2 score - 1|"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


__all__ = ["AnnotationExportError", "export_for_annotation", "box_masks", "model_scale_8bit",
           "tile_windows", "image_uncertainty", "image_stem", "clip_to_window", "mask_polygons"]
