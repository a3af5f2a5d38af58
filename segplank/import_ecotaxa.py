"""The EcoTaxa loop: experts' validated labels on segplank's own masks become a training set.

Ecologists validate labels in EcoTaxa, not masks. :func:`import_ecotaxa` reads an EcoTaxa
export of objects segplank wrote, matches them to the run(s) by ``object_id`` and writes
``OUT_DIR/train.coco.json`` plus ``OUT_DIR/images/`` for ``segplank train``. The rules:

- The export is UTF-8 TSV (a byte-order mark is allowed), with or without EcoTaxa's type row
  (``[t]``/``[f]``), or a zip holding one or more ``.tsv``. Needed columns:
  ``object_id``, ``object_annotation_status``, ``object_annotation_category``;
  ``object_annotation_hierarchy`` is used when present.
- Categories are kept as EcoTaxa gives them, display name and all (``Copepoda<Maxillopoda``
  or ``living>...>Copepoda`` stay as they are): a name equal to one of the model's classes
  keeps that class's id, any other is a new category, appended in alphabetical order. A new
  category is ``non-plankton`` when its hierarchy starts with ``not-living`` or a part of
  its name (split at ``<`` and ``>``) names non-living matter (detritus, artefact, bubble...),
  else ``plankton``. Every class of the model stays in the set, so the class map only grows.
- Kept (``validated``): status ``validated`` with a category outside ``drop_categories``.
  Dropped (``discarded``): status ``discarded``, or a validated category in
  ``drop_categories`` (default ``discarded``, ``duplicate``, ``multiple<other``: a second
  view of an organism, a mask over several). ``not-living`` classes are *kept*: detritus
  and artefacts labelled by an expert are what teaches the model non-plankton.
  Anything else (``predicted``, ``dubious``, blank, validated without a category) is
  ``not_validated``.
- A frame is in the set when at least one of its objects is kept. Its other objects
  (dropped, not validated, or absent from the export, e.g. non-plankton segplank did not
  export) are written as ``iscrowd: 1`` regions with the model's label: an expert saw a real
  object or did not look, so they must be neither positives nor background (COCO's "ignore";
  ``segplank train`` paints them with the background grey in its chips).
- Object ids of the export no run holds are counted and warned about (with examples); an id
  in two runs, or twice in the export with different labels, is an error.
- Frames are hard-linked into ``images/`` (a symlink across file systems, a copy as the last
  resort): the set is one folder, without doubling a season of frames on disk. Masks are
  segplank's own, as frame-relative RLE.
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import pandas as pd

from .annotate import box_masks
from .io.atomic import write_json
from .io.rle import encode_in_frame
from .library import LibraryError, read_ecotaxa_tsv
from .runs import frames_root, read_manifest, read_objects
from .taxonomy import is_non_living

log = logging.getLogger("segplank")

COCO_NAME = "train.coco.json"
DROP_CATEGORIES = frozenset({"discarded", "duplicate", "multiple<other"})
REQUIRED = ("object_id", "object_annotation_status", "object_annotation_category")
_RUN_COLUMNS = ["object_id", "frame_path", "frame_index", "label_name", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
                "mask_rle"]


class EcoTaxaImportError(ValueError):
    """An export or run that cannot make a training set; the message says why."""


@dataclass(frozen=True)
class ImportSummary:
    """What became of every object of the export, and what was written."""

    path: Path  # the COCO file
    rows: int  # object rows in the export
    validated: int  # kept, with the expert's class
    not_validated: int  # matched, but predicted, dubious or blank
    discarded: int  # matched, status discarded or a drop category
    unmatched: int  # object ids no run given holds
    not_exported: int  # objects of the frames used that the export does not list
    ignore_regions: int  # iscrowd annotations written (dropped, not validated, not exported, in frames used)
    frames: int  # images in the training set
    frames_unreadable: int  # frames with kept objects that could not be read (left out, warned)
    categories: tuple[str, ...]  # names, in category id order
    new_categories: tuple[str, ...]  # the experts' names the model did not have
    per_category: dict[str, int]  # kept objects written, per class


def import_ecotaxa(tsv: Path, out_dir: Path, *, run_dirs: list[Path], cruise_dir: Path | None = None,
                   drop_categories: Iterable[str] = DROP_CATEGORIES) -> ImportSummary:
    """Write ``out_dir/train.coco.json`` and ``out_dir/images/`` from an EcoTaxa export.

    ``run_dirs``: the `segplank infer` folders whose objects were exported. ``cruise_dir``
    overrides the manifests' (where the frames are).
    """
    if not run_dirs:
        raise EcoTaxaImportError("pass the run folder(s) whose objects were exported to EcoTaxa (run_dirs)")
    out_dir = Path(out_dir)
    export = read_export(Path(tsv))
    objects, base = _run_objects([Path(r) for r in run_dirs])
    decision = _decide(objects, export, {c.strip().lower() for c in drop_categories})
    unmatched = sorted(set(export["object_id"]) - set(objects["object_id"]))
    if unmatched:
        log.warning("%d object id(s) of the export are in no run given (e.g. %s); they are left out",
                    len(unmatched), ", ".join(unmatched[:5]))
    category = objects["object_id"].map(export.set_index("object_id")["category"])
    objects = objects.assign(decision=decision, category=category)
    used = objects.groupby(["run", "frame_path"], sort=False)["decision"].transform(lambda d: (d == "keep").any())
    if not used.any():
        raise EcoTaxaImportError(f"{tsv}: no validated object matches the run(s) ({len(export)} rows, "
                                 f"{len(unmatched)} unmatched, {int((decision == 'drop').sum())} discarded): "
                                 "nothing to train on")
    categories, new = _categories(base, objects[objects["decision"] == "keep"], export)
    images, annotations, unreadable = _write_frames(objects[used], run_dirs, cruise_dir, out_dir, categories)
    path = out_dir / COCO_NAME
    write_json(path, {"info": {"description": "segplank training set from EcoTaxa validations", "export": str(tsv),
                               "runs": [str(r) for r in run_dirs]},
                      "licenses": [], "images": images, "annotations": annotations, "categories": categories})
    kept = [a for a in annotations if not a["iscrowd"]]
    names = {c["id"]: c["name"] for c in categories}
    return ImportSummary(
        path=path, rows=len(export), validated=int((decision == "keep").sum()),
        not_validated=int((decision == "not_validated").sum()), discarded=int((decision == "drop").sum()),
        unmatched=len(unmatched), not_exported=int((objects[used]["decision"] == "not_exported").sum()),
        ignore_regions=len(annotations) - len(kept), frames=len(images), frames_unreadable=unreadable,
        categories=tuple(c["name"] for c in categories), new_categories=tuple(new),
        per_category=dict(Counter(names[a["category_id"]] for a in kept)),
    )


# --- the export ----------------------------------------------------------------------------

def read_export(path: Path) -> pd.DataFrame:
    """``object_id``, ``status`` (lower case), ``category`` and ``hierarchy`` (as given) of
    every object of a .tsv or of every .tsv in a .zip; one row per object."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EcoTaxa export not found")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.lower().endswith(".tsv") and not n.startswith("__MACOSX")]
            if not names:
                raise EcoTaxaImportError(f"{path}: the zip holds no .tsv file")
            parts = [_read_tsv(z.read(n), f"{path}:{n}") for n in names]
    else:
        parts = [_read_tsv(path.read_bytes(), str(path))]
    table = pd.concat(parts, ignore_index=True).drop_duplicates()
    twice = table["object_id"][table["object_id"].duplicated()]
    if len(twice):
        raise EcoTaxaImportError(f"{path}: object_id {twice.iloc[0]!r} has two different labels in the export")
    return table.reset_index(drop=True)


def _read_tsv(data: bytes, source: str) -> pd.DataFrame:
    try:
        df = read_ecotaxa_tsv(data, source)
    except LibraryError as e:
        raise EcoTaxaImportError(str(e)) from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise EcoTaxaImportError(f"{source}: no column {', '.join(missing)}; export the objects from EcoTaxa "
                                 "with their annotation (status and category)")
    hierarchy = df["object_annotation_hierarchy"] if "object_annotation_hierarchy" in df else ""
    out = pd.DataFrame({"object_id": df["object_id"].str.strip(),
                        "status": df["object_annotation_status"].str.strip().str.lower(),
                        "category": df["object_annotation_category"].str.strip(),
                        "hierarchy": hierarchy})
    return out[out["object_id"] != ""]


# --- the runs ------------------------------------------------------------------------------

def _run_objects(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """Every object of the runs (column ``run``: index in ``run_dirs``) and the runs' model
    classes as COCO categories (union, in order of first appearance, ids from 1)."""
    tables, names, plankton = [], [], []
    for k, run in enumerate(run_dirs):
        for c in (read_manifest(run).get("model") or {}).get("classes") or []:
            if c["name"] not in names:
                names.append(c["name"])
                plankton.append(bool(c["is_plankton"]))
        tables.append(read_objects(run, _RUN_COLUMNS).assign(run=k))
    objects = pd.concat(tables, ignore_index=True)
    twice = objects.loc[objects["object_id"].duplicated(), "object_id"]
    if len(twice):
        runs = objects.loc[objects["object_id"] == twice.iloc[0], "run"].map(lambda k: str(run_dirs[k])).tolist()
        raise EcoTaxaImportError(f"object_id {twice.iloc[0]!r} is in more than one run ({', '.join(runs)}): "
                                 "pass only the run whose objects were exported to EcoTaxa")
    base = [{"id": k + 1, "name": n, "supercategory": "plankton" if p else "non-plankton"}
            for k, (n, p) in enumerate(zip(names, plankton))]
    return objects.sort_values(["run", "frame_index", "frame_path", "object_id"]).reset_index(drop=True), base


def _decide(objects: pd.DataFrame, export: pd.DataFrame, drop: set[str]) -> pd.Series:
    """Per run object: ``keep``, ``drop``, ``not_validated`` or ``not_exported``."""
    row = export.set_index("object_id").reindex(objects["object_id"])
    status, category = row["status"].fillna(""), row["category"].fillna("")
    out = np.full(len(objects), "not_validated", dtype=object)
    validated = (status == "validated").to_numpy() & (category != "").to_numpy()
    dropped = (status == "discarded").to_numpy() | (validated & category.str.lower().isin(drop).to_numpy())
    out[validated] = "keep"
    out[dropped] = "drop"
    out[row["status"].isna().to_numpy()] = "not_exported"
    return pd.Series(out, index=objects.index)


def _categories(base: list[dict], kept: pd.DataFrame, export: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """The model's categories plus the experts' new names, appended alphabetically."""
    known = {c["name"] for c in base}
    new = sorted(set(kept["category"]) - known)
    hierarchy = export.set_index("category")["hierarchy"]
    hierarchy = hierarchy[~hierarchy.index.duplicated()]
    cats = list(base)
    for name in new:
        living = not is_non_living(name, str(hierarchy.get(name, "")))
        cats.append({"id": len(cats) + 1, "name": name, "supercategory": "plankton" if living else "non-plankton"})
    return cats, new


# --- writing -------------------------------------------------------------------------------

def _write_frames(objects: pd.DataFrame, run_dirs: list[Path], cruise_dir: Path | None, out_dir: Path,
                  categories: list[dict]) -> tuple[list[dict], list[dict], int]:
    """Link each frame into ``out_dir/images`` and annotate all its objects; (images,
    annotations, frames that could not be read)."""
    from .frames import FrameError, read_frame

    cat_id = {c["name"]: c["id"] for c in categories}
    images: list[dict] = []
    annotations: list[dict] = []
    unreadable = 0
    for k, run_objects in objects.groupby("run", sort=True):
        run = Path(run_dirs[k])
        root = frames_root(read_manifest(run), run, cruise_dir, list(pd.unique(run_objects["frame_path"]))[:50])
        for fp, rows in run_objects.groupby("frame_path", sort=False):
            src = root / str(fp)
            try:
                height, width = read_frame(src).shape
            except FrameError as e:
                unreadable += 1
                log.warning("%s: %s; its %d validated object(s) are left out of the training set", fp, e,
                            int((rows["decision"] == "keep").sum()))
                continue
            name = _image_name(str(fp), k, run, len(run_dirs))
            _link(src, out_dir / name)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": width, "height": height,
                           "frame_path": str(fp), "run": str(run)})
            annotations += _annotations(rows, image_id, height, width, cat_id, len(annotations))
    return images, annotations, unreadable


def _annotations(rows: pd.DataFrame, image_id: int, height: int, width: int, cat_id: dict[str, int],
                 first: int) -> list[dict]:
    """Kept objects with the expert's class; all others as crowd (ignore) regions."""
    out = []
    for r, bitmap in zip(rows.itertuples(index=False), box_masks(rows)):
        keep = r.decision == "keep"
        out.append({
            "id": first + len(out) + 1, "image_id": image_id,
            "category_id": cat_id[r.category if keep else r.label_name],
            "segmentation": encode_in_frame(bitmap, (int(r.bbox_x), int(r.bbox_y)), height, width),
            "area": int(bitmap.sum()), "bbox": [int(r.bbox_x), int(r.bbox_y), int(r.bbox_w), int(r.bbox_h)],
            "iscrowd": 0 if keep else 1, "object_id": r.object_id, "ecotaxa": r.decision,
        })
    return out


def _image_name(frame_path: str, k: int, run: Path, n_runs: int) -> str:
    """``images/<frame path>``; with several runs under ``images/<k>_<run name>/`` so that
    equal frame paths of two cruises stay apart."""
    parts = [q for q in PurePosixPath(frame_path.replace("\\", "/")).parts if q not in ("/", ".", "..")
             and not q.endswith(":")]
    prefix = ["images"] if n_runs == 1 else ["images", f"{k}_{run.name}"]
    return "/".join(prefix + parts)


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s hard link, else a symlink to it, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        if dst.exists() and os.path.samefile(src, dst):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        try:
            os.symlink(src.resolve(), dst)
        except OSError:
            shutil.copy2(src, dst)


__all__ = ["EcoTaxaImportError", "ImportSummary", "import_ecotaxa", "read_export", "is_non_living",
           "DROP_CATEGORIES"]
