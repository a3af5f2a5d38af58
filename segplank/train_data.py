"""Training data: COCO files of full frames, checked and merged, then cut into chips.

Annotators label whole frames, the model sees tiles. Every problem in the COCO input is
either an error naming the file and the annotation (nothing is trained) or, where the fix
is obvious, a repair reported in one warning line per kind with a count: training never
starts on silently dropped data. Several files merge by category *name*; each file's images
lie relative to its own folder (or ``image_root``).

Chips are a pure function of ``(seed, chip index)``, so an interrupted run resumes with
exactly the chips it would have seen. Object chips follow a per-epoch list in which each
object appears about ``r`` times (``repeat_factors``); background chips are interleaved.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from .config import Polarity
from .io.rle import to_rle
from .frames import FrameError, read_frame
from .model.checkpoint import ClassMap
from .tiling import to_model_input

log = logging.getLogger("segplank")

Sampling = Literal["repeat_factor", "class_uniform", "none"]
_CHIP_STREAM, _EPOCH_STREAM = 0, 1  # independent random streams of one seed
_MAX_LISTED = 20  # errors listed in one message


class CocoError(ValueError):
    """COCO input that cannot be trained on; one line per problem, each naming file and annotation."""


# --- frames ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Annotation:
    label: int  # 1-based model label
    origin: tuple[int, int]  # x0, y0 of the bitmap in frame px
    bitmap: np.ndarray  # bool, cropped to the object's box


@dataclass(frozen=True, eq=False)
class TrainFrame:
    """One annotated frame; pixels stay as read (uint8/uint16), chips are converted when cut."""

    pixels: np.ndarray
    annotations: tuple[Annotation, ...]
    polarity: Polarity = "dark_on_bright"
    name: str = ""  # "<file>: image <id>", for messages
    path: Path | None = None
    ignore: tuple[Annotation, ...] = ()  # iscrowd regions: neither objects nor background

    @cached_property
    def background_grey(self) -> float:
        return float(np.median(self.pixels[::4, ::4]))

    @cached_property
    def boxes(self) -> np.ndarray:
        """(N, 4) int64 x0 y0 x1 y1 of the annotations."""
        b = [(a.origin[0], a.origin[1], a.origin[0] + a.bitmap.shape[1], a.origin[1] + a.bitmap.shape[0])
             for a in self.annotations]
        return np.array(b, np.int64).reshape(-1, 4)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.array([a.label for a in self.annotations], np.int64)

    @cached_property
    def areas(self) -> np.ndarray:
        return np.array([int(a.bitmap.sum()) for a in self.annotations], np.int64)

    def chip(self, x0: int, y0: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Model input (size, size) float32, target masks (K, size, size) uint8 and labels (K,).

        Frames smaller than a chip are padded with edge values; slivers of under 2 px that
        the chip's border cuts off an object are left out (nothing a detector could box),
        whole objects never are. Ignore regions (``iscrowd``: objects nobody labelled) are
        painted over with the frame's background grey, so they are learnt neither as
        objects nor as background.
        """
        img = self.pixels[y0:y0 + size, x0:x0 + size]
        if img.shape != (size, size):
            img = np.pad(img, ((0, size - img.shape[0]), (0, size - img.shape[1])), mode="edge")
        if self.ignore:
            img = self._paint_ignored(img, x0, y0)
        b = self.boxes
        hit = np.flatnonzero((b[:, 0] < x0 + size) & (b[:, 2] > x0) & (b[:, 1] < y0 + size) & (b[:, 3] > y0))
        masks, labels = [], []
        for i in hit:
            ann = self.annotations[i]
            ox, oy = ann.origin
            ix0, iy0 = max(ox, x0), max(oy, y0)
            ix1, iy1 = min(b[i, 2], x0 + size), min(b[i, 3], y0 + size)
            part = ann.bitmap[iy0 - oy:iy1 - oy, ix0 - ox:ix1 - ox]
            if part.sum() < min(2, self.areas[i]):
                continue
            m = np.zeros((size, size), np.uint8)
            m[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = part
            masks.append(m)
            labels.append(ann.label)
        stack = np.stack(masks) if masks else np.zeros((0, size, size), np.uint8)
        return to_model_input(img, self.polarity), stack, np.array(labels, np.int64)

    def _paint_ignored(self, img: np.ndarray, x0: int, y0: int) -> np.ndarray:
        """The chip with ignore regions (dilated 2 px, labelled objects spared) set to the background grey."""
        h, w = img.shape
        region = np.zeros((h, w), np.uint8)
        for ann in self.ignore:
            _stamp(region, ann, x0, y0)
        if not region.any():
            return img
        region = cv2.dilate(region, np.ones((5, 5), np.uint8))
        for ann in self.annotations:
            _stamp(region, ann, x0, y0, value=0)
        out = img.copy()
        out[region.astype(bool)] = np.asarray(self.background_grey).astype(img.dtype)
        return out


def _stamp(canvas: np.ndarray, ann: Annotation, x0: int, y0: int, value: int = 1) -> None:
    """Write ``ann``'s pixels that fall in the chip at (x0, y0) into ``canvas``."""
    h, w = canvas.shape
    ox, oy = ann.origin
    bh, bw = ann.bitmap.shape
    ix0, iy0, ix1, iy1 = max(ox, x0), max(oy, y0), min(ox + bw, x0 + w), min(oy + bh, y0 + h)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    part = ann.bitmap[iy0 - oy:iy1 - oy, ix0 - ox:ix1 - ox]
    canvas[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][part] = value


# --- reading and checking COCO ---------------------------------------------------------------

@dataclass
class _Report:
    """Errors and repairs found while reading; raised or warned once, all together."""

    errors: list[str] = field(default_factory=list)
    repairs: dict[str, list[str]] = field(default_factory=dict)

    def error(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    def repair(self, kind: str, where: str) -> None:
        self.repairs.setdefault(kind, []).append(where)

    def raise_errors(self) -> None:
        if not self.errors:
            return
        shown = self.errors[:_MAX_LISTED]
        more = len(self.errors) - len(shown)
        raise CocoError(f"{len(self.errors)} problem(s) in the COCO input, nothing was trained:\n  "
                        + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))

    def warn_repairs(self) -> None:
        for kind, where in self.repairs.items():
            log.warning("%d %s (e.g. %s)", len(where), kind, "; ".join(where[:3]))


@dataclass
class _Pending:
    """An image whose annotations passed the checks that need no pixels."""

    where: str
    path: Path
    height: int
    width: int
    anns: list[tuple[str, int, dict]]  # where, label, RLE
    crowd: list[tuple[str, int, dict]] = field(default_factory=list)  # ignore regions


REPAIR_CLIPPED = "annotation(s) partly outside their image, clipped to it"
REPAIR_EMPTY = "annotation(s) with an empty mask (or polygons of under 3 points) dropped"
REPAIR_DEGENERATE = "annotation(s) with polygon parts of under 3 points, those parts dropped"
REPAIR_CROWD = "iscrowd annotation(s) used as ignore regions (painted with the background grey in chips)"
REPAIR_DUPLICATE = "exact duplicate entries (same id, same content) dropped"


PLANKTON_CLASSES = [{"id": 1, "name": "plankton", "supercategory": "plankton"},
                    {"id": 2, "name": "non-plankton", "supercategory": "non-plankton"}]


def load_coco_frames(coco_paths: Path | Sequence[Path], image_root: Path | None, polarity: Polarity,
                     classes: ClassMap | None = None,
                     by_plankton: bool = False) -> tuple[list[TrainFrame], ClassMap, list[dict]]:
    """Frames with cropped masks from one or several COCO files, checked and merged.

    Model labels follow the first file's category ids in sorted order, then categories
    new in later files (matched by name). With ``classes`` (a validation set) labels follow
    those names and a category outside them is an error. ``by_plankton``: every category is
    one of two classes, plankton or non-plankton (PLANKTON_CLASSES), by its supercategory: a
    detector that finds organisms for a vignette classifier to name.
    """
    paths = [Path(coco_paths)] if isinstance(coco_paths, (str, Path)) else [Path(p) for p in coco_paths]
    report = _Report()
    docs = [_read_json(p, report) for p in paths]
    report.raise_errors()
    if by_plankton:
        fine, fine_label_of = _merge_categories(paths, docs, None, report)
        coarse = [1 if _plankton_flag(c) else 2 for c in fine]
        categories, label_of = list(PLANKTON_CLASSES), [{k: coarse[v - 1] for k, v in m.items()} for m in fine_label_of]
        classes = classes or ClassMap.from_coco_categories(categories)
    else:
        categories, label_of = _merge_categories(paths, docs, classes, report)
    pending: list[_Pending] = []
    seen: dict[Path, str] = {}
    for p, doc, labels in zip(paths, docs, label_of):
        pending += _check_file(p, doc, Path(image_root) if image_root else p.parent, labels, seen, report)
    report.raise_errors()
    frames = [_decode_frame(img, polarity, report) for img in pending]
    report.raise_errors()
    report.warn_repairs()
    class_map = classes or ClassMap.from_coco_categories(categories)
    return frames, class_map, categories


def coco_categories(coco_paths: Sequence[Path]) -> list[dict]:
    """The merged categories of COCO files, as ``load_coco_frames`` merges them, without reading a frame."""
    paths = [Path(p) for p in coco_paths]
    report = _Report()
    docs = [_read_json(p, report) for p in paths]
    report.raise_errors()
    categories, _ = _merge_categories(paths, docs, None, report)
    report.raise_errors()
    return categories


def _read_json(path: Path, report: _Report) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.error(str(path), "annotation file not found")
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        report.error(str(path), f"not a readable JSON file ({e})")
        return {}
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key) if isinstance(doc, dict) else None, list):
            report.error(str(path), f"no '{key}' list: not a COCO instances file")
    return doc


def _merge_categories(paths: list[Path], docs: list[dict], classes: ClassMap | None,
                      report: _Report) -> tuple[list[dict], list[dict[int, int]]]:
    """Merged category list and, per file, category id -> model label (names are the key).

    The first file keeps its category ids; a name new in a later file gets the next free id.
    """
    merged: list[dict] = [{"id": k + 1, "name": n, "is_plankton": p}
                          for k, (n, p) in enumerate(zip(classes.names, classes.is_plankton))] if classes else []
    by_name = {c["name"]: k for k, c in enumerate(merged)}
    label_of = []
    for path, doc in zip(paths, docs):
        labels: dict[int, int] = {}
        for c in _file_categories(path, doc["categories"], report):
            where = f"{path.name}: category {c['id']}"
            if c["name"] not in by_name:
                if classes is not None:
                    report.error(where, f"'{c['name']}' is not among the training classes {list(classes.names)}")
                    continue
                by_name[c["name"]] = len(merged)
                merged.append({**c, "id": c["id"] if not label_of else max(m["id"] for m in merged) + 1})
            elif _plankton_flag(merged[by_name[c["name"]]]) != _plankton_flag(c):
                report.error(where, f"'{c['name']}' is plankton in one file and not in another")
            labels[c["id"]] = by_name[c["name"]] + 1
        label_of.append(labels)
    return merged, label_of


def _file_categories(path: Path, categories: list, report: _Report) -> list[dict]:
    """One file's well-formed categories, sorted by id; ids and names must be unique."""
    ok: dict[int, dict] = {}
    names: dict[str, int] = {}
    for k, c in enumerate(categories):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            report.error(f"{path.name}: category #{k}", "needs an integer 'id' and a 'name'")
        elif c["id"] in ok:
            report.error(f"{path.name}: category {c['id']}", "duplicate category id")
        elif c["name"] in names:
            report.error(f"{path.name}: category {c['id']}", f"name '{c['name']}' is also category {names[c['name']]}")
        else:
            ok[c["id"]] = c
            names[c["name"]] = c["id"]
    return [ok[i] for i in sorted(ok)]


def _plankton_flag(category: dict) -> bool:
    return ClassMap.from_coco_categories([{**category, "id": 0}]).is_plankton[0]


def _unique(items: list, what: str, file: str, report: _Report) -> dict[int, dict]:
    """Entries by id; exact duplicates are dropped (a repair), differing ones are errors."""
    out: dict[int, dict] = {}
    for k, item in enumerate(items):
        i = item.get("id") if isinstance(item, dict) else None
        if not isinstance(i, int):
            report.error(f"{file}: {what} #{k}", "no integer 'id'")
        elif i in out:
            if item == out[i]:
                report.repair(REPAIR_DUPLICATE, f"{file}: {what} {i}")
            else:
                report.error(f"{file}: {what} {i}", "duplicate id with different content")
        else:
            out[i] = item
    return out


def _check_file(path: Path, doc: dict, root: Path, label_of: dict[int, int], seen: dict[Path, str],
                report: _Report) -> list[_Pending]:
    """Every check that needs no pixels: ids, categories, files, mask geometry."""
    images = _unique(doc["images"], "image", path.name, report)
    anns = _unique(doc["annotations"], "annotation", path.name, report)
    pending: dict[int, _Pending] = {}
    for i, img in images.items():
        where = f"{path.name}: image {i}"
        h, w, name = img.get("height"), img.get("width"), img.get("file_name")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and isinstance(name, str)):
            report.error(where, "needs 'file_name', and positive integer 'width' and 'height'")
            continue
        file = (root / name).resolve()
        if not file.is_file():
            report.error(where, f"image file not found: {root / name}")
        elif file in seen:
            report.error(where, f"{name} is also {seen[file]}")
        else:
            seen[file] = where
            pending[i] = _Pending(where, file, h, w, [])
    for i, a in anns.items():
        where = f"{path.name}: annotation {i}"
        bad_id = _bad_id(a.get("image_id"), "image_id") or _bad_id(a.get("category_id"), "category_id")
        if bad_id:
            report.error(where, bad_id)
            continue
        img = pending.get(a["image_id"])
        if a["image_id"] not in images:
            report.error(where, f"image_id {a['image_id']} is not in images")
        elif a["category_id"] not in label_of:
            report.error(where, f"unknown category_id {a['category_id']}")
        elif "segmentation" not in a:
            report.error(where, "no segmentation (segplank trains masks)")
        elif img is not None:
            rle = _to_rle(a, img.height, img.width, where, report)
            if rle is not None and a.get("iscrowd", 0):
                report.repair(REPAIR_CROWD, where)
                img.crowd.append((where, label_of[a["category_id"]], rle))
            elif rle is not None:
                img.anns.append((where, label_of[a["category_id"]], rle))
    return list(pending.values())


def _bad_id(value: object, key: str) -> str | None:
    """Why ``value`` is no COCO id, None when it is one.

    JSON keeps ``"1"`` and ``1`` apart, so a string id would otherwise be reported as
    "not in images", which sends the user looking for a missing image.
    """
    if value is None:
        return f"no {key}"
    if isinstance(value, str):
        return f"{key} '{value}' is a string; COCO ids are integers"
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{key} {value!r} is not an integer; COCO ids are integers"
    return None


def _to_rle(ann: dict, h: int, w: int, where: str, report: _Report) -> dict | None:
    """The annotation's mask as RLE, checked against the image; None when dropped.

    RLE counts that do not cover exactly the image's pixels refuse the input (an error, as
    for every file problem that has no obvious fix), before any training step. Dropping the
    annotation would teach its object as background, and ignoring its region needs the
    very mask that is broken; pycocotools itself decodes short counts into whatever memory
    holds, without an error. A corrupt export is mended by exporting again.
    """
    seg = ann["segmentation"]
    try:
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
            if not polys:
                report.repair(REPAIR_EMPTY, where)
                return None
            if len(polys) < len(seg):
                report.repair(REPAIR_DEGENERATE, where)
            xy = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in polys])
            extents = [(*xy.min(0), *xy.max(0))]
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg, dict) and "counts" in seg:
            if list(seg.get("size", ())) != [h, w]:
                report.error(where, f"RLE size {seg.get('size')} differs from its image's [{h}, {w}]")
                return None
            problem = _rle_counts_problem(seg["counts"], h * w)
            if problem:
                report.error(f"{where} (image {ann['image_id']})", f"its RLE counts do not decode to a {w}x{h} mask "
                                                                   f"({problem}); re-export the annotation")
                return None
            extents, rle = [], to_rle(seg, h, w)
        else:
            report.error(where, "segmentation is neither polygons nor RLE")
            return None
        if "bbox" in ann:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            extents.append((x, y, x + bw, y + bh))
    except (TypeError, ValueError) as e:
        report.error(where, f"unreadable segmentation or bbox ({e})")
        return None
    if any(x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h for x0, y0, x1, y1 in extents):
        report.error(where, f"mask or bbox lies entirely outside its {w}x{h} image")
        return None
    if any(x0 < 0 or y0 < 0 or x1 > w or y1 > h for x0, y0, x1, y1 in extents):
        report.repair(REPAIR_CLIPPED, where)
    return rle


def _rle_counts_problem(counts: object, n_pixels: int) -> str | None:
    """What is wrong with COCO RLE counts (uncompressed list or compressed string), None if they cover ``n_pixels``."""
    if isinstance(counts, str):
        runs = _compressed_runs(counts)
        if runs is None:
            return "not a COCO RLE string"
    elif isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "runs must be non-negative integers"
        runs = np.array(counts, np.int64)
    else:
        return "neither a string nor a list of run lengths"
    if runs.min(initial=0) < 0:
        return "a run of negative length"
    total = int(runs.sum())
    return None if total == n_pixels else f"their runs cover {total} px, not {n_pixels}"


def _compressed_runs(counts: str) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), None if it is not one.

    Each run is 5 bits per character (offset by 48), a 0x20 bit meaning "more follows" and
    the last character's 0x10 bit the sign; from the third run on, each is stored as the
    difference to the run two before it.
    """
    c = np.frombuffer(counts.encode("utf-8"), np.uint8).astype(np.int64) - 48
    if c.size == 0 or c.min() < 0 or c.max() > 63 or c[-1] & 0x20:
        return None
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 7:  # over 35 bits: no frame has that many pixels
        return None
    run_of = np.repeat(np.arange(len(ends)), lengths)
    shift = 5 * (np.arange(c.size) - starts[run_of])
    values = np.bincount(run_of, weights=(c & 0x1F) << shift, minlength=len(ends)).astype(np.int64)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _decode_frame(img: _Pending, polarity: Polarity, report: _Report) -> TrainFrame:
    """Read the pixels, check the size and crop each mask to its box."""
    try:
        pixels = read_frame(img.path)
    except FrameError as e:
        report.error(img.where, f"{img.path}: {e}")
        pixels = np.zeros((img.height, img.width), np.uint8)
    if pixels.shape != (img.height, img.width):
        report.error(img.where, f"{img.path.name} is {pixels.shape[1]}x{pixels.shape[0]} px, "
                                f"the COCO entry says {img.width}x{img.height}")
    anns, ignore = [], []
    for group, out in ((img.anns, anns), (img.crowd, ignore)):
        for where, label, rle in group:
            if mask_utils.area(rle) == 0:
                report.repair(REPAIR_EMPTY, where)
                continue
            x0, y0, bw, bh = (int(v) for v in mask_utils.toBbox(rle))
            bitmap = mask_utils.decode(rle)[y0:y0 + bh, x0:x0 + bw].astype(bool)
            out.append(Annotation(label, (x0, y0), bitmap))
    return TrainFrame(pixels, tuple(anns), polarity, img.where, img.path, tuple(ignore))


# --- sampling ---------------------------------------------------------------------------------

def repeat_factors(frames: Sequence[TrainFrame], n_classes: int, sampling: Sampling, threshold: float) -> np.ndarray:
    """(N objects,) expected copies per epoch of each object's chip.

    ``repeat_factor`` is LVIS's rule with object chips as the images. A chip is cut at a
    random shift around its object, so the one class it surely holds is that object's:
    ``f_c`` is the share of object chips centred on class ``c`` (its share of annotated
    objects) and a chip repeats ``r_c = max(1, sqrt(threshold / f_c))`` times: classes
    rarer than ``threshold`` are boosted, frequent ones are never thinned out. (Counting
    every class anywhere in the chip would not do: on dense frames nearly every chip holds
    some marine snow, a large organism's box and a rare class, and nothing is boosted.)
    ``class_uniform`` gives every present class the same expected number of chips,
    ``none`` shows each object once.
    """
    labels = np.concatenate([fr.labels for fr in frames]) if frames else np.zeros(0, np.int64)
    if sampling == "none":
        return np.ones(len(labels))
    counts = np.bincount(labels, minlength=n_classes + 1)
    if sampling == "class_uniform":
        return len(labels) / (np.count_nonzero(counts) * counts[labels])
    f = counts[labels] / len(labels)
    return np.maximum(1.0, np.sqrt(threshold / f))


def plankton_augmentations() -> A.Compose:
    """Mild, label-preserving changes that plankton imagery really shows.

    Exact flips and 90° turns (organisms have no up in the water), small shifts of
    brightness, contrast and gamma (illumination, camera gain), slight blur (depth of
    field) and sensor noise; nothing that deforms shapes or invents textures. No motion
    blur: albumentations' 3-px motion kernels are often two taps, which moves the image
    half a pixel off its masks.
    """
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.08, contrast_limit=0.1, p=0.5),
        A.RandomGamma(gamma_limit=(85, 118), p=0.5),
        A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 0.8), p=0.2),
        A.GaussNoise(std_range=(0.005, 0.025), p=0.3),
    ])


def augment(aug: A.Compose, img: np.ndarray, masks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``aug`` to a chip and its masks, reproducibly from ``seed``.

    Each transform gets its own seed: albumentations hands one seed to all of them, which
    would tie the horizontal and vertical flips together.
    """
    aug.set_random_seed(seed)
    for t, s in zip(aug.transforms, np.random.SeedSequence(seed).generate_state(len(aug.transforms))):
        t.set_random_seed(int(s))
    out = aug(image=img, masks=list(masks))
    m = np.stack(out["masks"]) if len(masks) else masks
    return np.clip(out["image"], 0, 1).astype(np.float32), m


def to_target(img: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, dict]:
    """A torchvision Mask R-CNN input and target; boxes are the masks' own extents."""
    c = img.shape[0]
    rows, cols = masks.any(2), masks.any(1)
    boxes = np.stack([cols.argmax(1), rows.argmax(1), c - cols[:, ::-1].argmax(1), c - rows[:, ::-1].argmax(1)], 1)
    target = {"boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
              "labels": torch.from_numpy(labels), "masks": torch.from_numpy(masks)}
    return torch.from_numpy(img)[None].expand(3, -1, -1), target


class ChipSampler:
    """Chip ``k`` of an endless stream, a pure function of ``(seed, k)``.

    Object chips centre on an annotated object, shifted randomly by up to 0.4 chip so
    that objects are also seen cut by the border (what a tile border shows the model).
    Each epoch lists every object ``floor(r) + Bernoulli(frac(r))`` times (``r`` from
    ``repeat_factors``) plus background chips (random place in a random frame) for a
    ``background_share`` of the list, shuffled.
    """

    def __init__(self, frames: Sequence[TrainFrame], chip: int, n_classes: int, seed: int,
                 background_share: float = 0.1, sampling: Sampling = "repeat_factor",
                 rfs_threshold: float = 0.2, augment: bool = True) -> None:
        self.frames = list(frames)
        self.chip = chip
        self.seed = seed
        self.background_share = background_share
        self.index = np.array([(f, a) for f, fr in enumerate(self.frames) for a in range(len(fr.annotations))],
                              np.int64).reshape(-1, 2)
        if not len(self.index):
            raise CocoError("the training set holds no annotated object")
        self.repeats = repeat_factors(self.frames, n_classes, sampling, rfs_threshold)
        self.aug = plankton_augmentations() if augment else None
        self._epoch, self._start, self._order = 0, 0, self.epoch_order(0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Object indices (−1: a background chip) of one epoch, shuffled."""
        rng = np.random.default_rng([self.seed, _EPOCH_STREAM, epoch])
        r = self.repeats
        copies = np.floor(r).astype(np.int64) + (rng.random(len(r)) < r - np.floor(r))
        objects = np.repeat(np.arange(len(r)), copies)
        n_bg = int(round(len(objects) * self.background_share / (1 - self.background_share)))
        order = np.concatenate([objects, np.full(n_bg, -1)])
        rng.shuffle(order)
        return order

    def _entry(self, k: int) -> int:
        if k < self._start:
            self._epoch, self._start, self._order = 0, 0, self.epoch_order(0)
        while k >= self._start + len(self._order):
            self._start += len(self._order)
            self._epoch += 1
            self._order = self.epoch_order(self._epoch)
        return int(self._order[k - self._start])

    def batch(self, iteration: int, size: int) -> list[tuple[torch.Tensor, dict]]:
        return [self.sample(iteration * size + j) for j in range(size)]

    def sample(self, k: int) -> tuple[torch.Tensor, dict]:
        rng = np.random.default_rng([self.seed, _CHIP_STREAM, k])
        entry, c = self._entry(k), self.chip
        if entry < 0:
            fr = self.frames[int(rng.integers(len(self.frames)))]
            h, w = fr.pixels.shape
            x0, y0 = int(rng.integers(0, max(1, w - c + 1))), int(rng.integers(0, max(1, h - c + 1)))
        else:
            f, a = self.index[entry]
            fr = self.frames[f]
            h, w = fr.pixels.shape
            bx0, by0, bx1, by1 = fr.boxes[a]
            cx = (bx0 + bx1) / 2 + rng.uniform(-0.4, 0.4) * c
            cy = (by0 + by1) / 2 + rng.uniform(-0.4, 0.4) * c
            x0 = int(np.clip(cx - c / 2, 0, max(0, w - c)))
            y0 = int(np.clip(cy - c / 2, 0, max(0, h - c)))
        img, masks, labels = fr.chip(x0, y0, c)
        if self.aug is not None:
            img, masks = augment(self.aug, img, masks, int(rng.integers(2**31)))
        return to_target(img, masks, labels)
