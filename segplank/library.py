"""Vignette libraries: what ecologists train with (EcoTaxa exports, or one folder per taxon).

Two layouts, one reader (:func:`open_library`):

- a **folder tree** as torchvision's ImageFolder: ``<taxon>/…/*.png|jpg|tif|bmp``; the taxon
  is the first folder under the root, its hierarchy the name's prefixes (NDSB style,
  ``copepod_calanoid_large``);
- an **EcoTaxa export**, a folder or a zip holding ``ecotaxa_*.tsv`` (any ``.tsv`` with an
  ``img_file_name`` column) and its images; ``img_file_name`` is relative to the TSV's folder,
  the taxon is ``object_annotation_category`` and its hierarchy
  ``object_annotation_hierarchy``; only ``validated`` rows unless told otherwise.

A zip is read in place, member by member; a member name that climbs out of the archive
(``..``) or is absolute is refused. Each vignette becomes a :class:`Vignette`: its grey
pixels, its organism's mask cut from its own background (:func:`organism_mask`), its taxon
(:mod:`segplank.taxonomy`) and its pixel size when the export states one. Whatever cannot be
used (an unreadable or missing file, an empty mask, a mask without background around it) is
one line of the log and one count in :attr:`VignetteLibrary.skipped`; the rest is used.
"""
from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import re
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .config import Polarity
from .refine import fill_holes
from .taxonomy import Taxon, taxon_from_ecotaxa, taxon_from_prefix

log = logging.getLogger("segplank")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TYPE_CELL = re.compile(r"\[[tf]\]")
_WARN_LINES = 20  # per kind of problem; the rest are counted
# pixel-size columns of EcoTaxa exports, with the factor that makes them µm
_PIXEL_COLUMNS = (("process_pixel", 1.0), ("process_particle_pixel_size_mm", 1000.0),
                  ("process_particle_pixel_size_um", 1.0), ("acq_pixel", None), ("pixel_size_um", 1.0))
MIN_CONTRAST = 10.0  # grey levels from the background that count as organism (8-bit)
NOISE_SIGMAS = 4.0  # ... or this many standard deviations of the border's noise, if more
MAX_FILL = 0.9  # a mask over this share of the vignette has no background to be cut from


class LibraryError(ValueError):
    """A library that cannot be read at all; the message names it and what to do."""


@dataclass(frozen=True)
class LibraryItem:
    """One vignette as listed: where it is and what it is, before it is read."""

    source: str  # path relative to the library root (a zip member name in a zip)
    taxon: str
    pixel_size_um: float | None = None
    object_id: str | None = None


@dataclass(frozen=True)
class Vignette:
    """One organism (or particle) of a library, masked from its own background."""

    source: str
    taxon: str
    image: np.ndarray  # uint8 (H, W) grey as stored
    mask: np.ndarray  # bool (H, W): the main object and what touches it, holes filled
    polarity: Polarity  # of this vignette: dark_on_bright when its background is bright
    background: float  # grey level of its background
    pixel_size_um: float | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class VignetteLibrary:
    """A library opened: its items and taxa, vignettes read on demand (a season does not fit in memory)."""

    root: Path
    kind: str  # "folders" or "ecotaxa"
    items: list[LibraryItem]
    taxa: dict[str, Taxon]
    skipped: Counter = field(default_factory=Counter)  # reason → count
    # the library's own polarity (most of its vignettes'), so that an organism filling a
    # vignette to its border is not read as a background of its own colour
    polarity: Polarity | None = None
    quiet: bool = False  # count what is left out, and say it in one line at the end (composed frames)
    _zip: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def taxon_names(self) -> list[str]:
        """Taxa in sorted order: a class map's order."""
        return sorted(self.taxa)

    def counts(self) -> Counter:
        return Counter(it.taxon for it in self.items)

    def digest(self) -> str:
        """Names what was listed (sources and taxa), for caches of anything cut from it."""
        h = hashlib.sha256(str(self.root.resolve()).encode())
        for it in self.items:
            h.update(f"{it.source}\t{it.taxon}\t{it.pixel_size_um}\n".encode())
        return h.hexdigest()

    def skip(self, source: str, reason: str) -> None:
        """Count one unusable vignette and say so (the first few of each reason in full)."""
        self.skipped[reason] += 1
        if self.quiet:
            return
        if self.skipped[reason] <= _WARN_LINES:
            log.warning("%s: %s; left out", source, reason)
        elif self.skipped[reason] == _WARN_LINES + 1:
            log.warning("more vignettes: %s (counted, not listed)", reason)

    def read_bytes(self, source: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(source)
        return (self.root / source).read_bytes()

    def vignette(self, item: LibraryItem, polarity: Polarity | None = None) -> Vignette | None:
        """The item read and masked, or None (counted in ``skipped``, one line) when unusable."""
        try:
            data = self.read_bytes(item.source)
        except (OSError, KeyError):
            self.skip(item.source, "file not found or unreadable")
            return None
        image = decode_grey(data)
        if image is None:
            self.skip(item.source, "not a readable image")
            return None
        mask, pol, bg = organism_mask(image, polarity or self.polarity)
        if not mask.any():
            self.skip(item.source, "no organism stands out from the vignette's background (empty mask)")
            return None
        if mask.mean() > MAX_FILL:
            self.skip(item.source, "the mask fills the whole vignette (no background to cut the organism from)")
            return None
        return Vignette(item.source, item.taxon, image, mask, pol, bg, item.pixel_size_um)

    def vignettes(self, items: Sequence[LibraryItem] | None = None,
                  polarity: Polarity | None = None) -> Iterator[Vignette]:
        for it in self.items if items is None else items:
            v = self.vignette(it, polarity)
            if v is not None:
                yield v

    def split(self, held_out: float = 0.2, seed: int = 0) -> tuple[list[LibraryItem], list[LibraryItem]]:
        """(train, held-out) with ``held_out`` of every taxon held out (at least one vignette
        where a taxon has two or more); the same library and seed give the same split."""
        rng = np.random.default_rng(seed)
        by_taxon: dict[str, list[LibraryItem]] = {}
        for it in sorted(self.items, key=lambda i: i.source):
            by_taxon.setdefault(it.taxon, []).append(it)
        train, test = [], []
        for name in sorted(by_taxon):
            items = by_taxon[name]
            order = rng.permutation(len(items))
            n = 0 if len(items) < 2 else max(1, int(round(held_out * len(items))))
            test += [items[i] for i in order[:n]]
            train += [items[i] for i in order[n:]]
        return train, test

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> "VignetteLibrary":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- pixels and masks ----------------------------------------------------------------------

def decode_grey(data: bytes) -> np.ndarray | None:
    """uint8 grey pixels of an encoded image (colour averaged, alpha dropped, 16 bit scaled), or None."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        return None
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[:, :, :3], cv2.COLOR_BGR2GRAY) if arr.shape[2] >= 3 else arr[:, :, 0]
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = cv2.normalize(arr.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _border(image: np.ndarray, width: int = 2) -> np.ndarray:
    w = max(1, min(width, min(image.shape) // 4))
    return np.concatenate([image[:w].ravel(), image[-w:].ravel(), image[:, :w].ravel(), image[:, -w:].ravel()])


def organism_mask(image: np.ndarray, polarity: Polarity | None = None,
                  min_contrast: float = MIN_CONTRAST) -> tuple[np.ndarray, Polarity, float]:
    """(mask, polarity, background grey) of a vignette's organism.

    The background is the median of the vignette's border; the polarity, unless given, is
    that of a bright border (dark objects: shadowgraph, flat-fielded vignettes) or a dark one
    (lit objects). Pixels further from the background than ``min_contrast`` or four times the
    border's noise are foreground; the organism is the largest foreground component together
    with every component touching it within 2 px (antennae, appendages, a tail cut by the
    threshold), its holes filled. A scale bar or text apart from it is left out.
    """
    grey = image.astype(np.float32)
    border = _border(grey)
    bg = float(np.median(border))
    if polarity is None:
        polarity = "dark_on_bright" if bg >= 128 else "bright_on_dark"
    # an organism that reaches the border takes part of it: the background (its level and
    # noise) is read from the half of the border furthest from the organism's side
    side = border[border >= np.median(border)] if polarity == "dark_on_bright" else border[border <= np.median(border)]
    bg = float(np.median(side))
    contrast = bg - grey if polarity == "dark_on_bright" else grey - bg
    noise = 1.4826 * float(np.median(np.abs(side - bg)))
    fg = (contrast > max(min_contrast, NOISE_SIGMAS * noise)).astype(np.uint8)
    if not fg.any():
        return fg.astype(bool), polarity, bg
    near = cv2.dilate(fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(near, connectivity=8)
    # the main object: the largest by its own foreground pixels, not by its dilated area
    own = np.bincount(labels[fg > 0], minlength=n)
    main = int(np.argmax(own[1:]) + 1)
    mask = (labels == main) & (fg > 0)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return fill_holes(mask).astype(bool), polarity, bg


# --- listing a library ---------------------------------------------------------------------

def read_ecotaxa_tsv(data: bytes, source: str) -> pd.DataFrame:
    """Every column of an EcoTaxa TSV as text (names lower-cased), its type row dropped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LibraryError(f"{source}: not UTF-8 ({e}); export from EcoTaxa again or convert it") from None
    df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    df.columns = [str(c).strip().lower() for c in df.columns]
    if len(df) and len(df.columns) and _TYPE_CELL.fullmatch(str(df.iloc[0, 0]).strip()):
        df = df.iloc[1:]  # EcoTaxa's type row ([t] text, [f] float)
    return df.reset_index(drop=True)


def _safe_member(name: str) -> bool:
    """A zip member that stays inside the archive's own tree."""
    n = name.replace("\\", "/")
    return not (n.startswith("/") or re.match(r"^[A-Za-z]:", n) or ".." in n.split("/"))


def _pixel_size(row: pd.Series) -> float | None:
    for col, factor in _PIXEL_COLUMNS:
        v = pd.to_numeric(row.get(col, ""), errors="coerce")
        if pd.notna(v) and v > 0:
            # acq_pixel is mm on the UVP (0.0x-0.1x), µm elsewhere
            f = factor if factor is not None else (1000.0 if v < 1.0 else 1.0)
            return float(v) * f
    return None


def open_library(path: Path, statuses: Sequence[str] | None = ("validated",),
                 pixel_size_um: float | None = None, unlabelled: bool = False, quiet: bool = False) -> VignetteLibrary:
    """Open a folder tree or an EcoTaxa export (folder or zip); see the module's docstring.

    ``statuses``: EcoTaxa annotation statuses to keep (None: every row). ``pixel_size_um``:
    the library's pixel size where the export does not state one (a folder tree never does).
    ``unlabelled``: images outside any taxon folder are items too, with taxon ``""`` (a
    folder of vignettes to classify). ``quiet``: what is left out is only counted (``skipped``).
    """
    path = Path(path)
    if not path.exists():
        raise LibraryError(f"{path}: no such vignette library; pass a folder per taxon or an EcoTaxa export (.zip or folder)")
    zf = None
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise LibraryError(f"{path}: not a folder or a zip; pass a folder per taxon or an EcoTaxa export")
        zf = zipfile.ZipFile(path)
        names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]
    else:
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    lib = VignetteLibrary(path, "folders", [], {}, quiet=quiet, _zip=zf)
    unsafe = [n for n in names if not _safe_member(n)]
    for n in unsafe:
        lib.skip(n, "member name leaves the archive (absolute or '..'); refused")
    names = [n for n in names if _safe_member(n)]
    tsvs = [n for n in names if n.lower().endswith(".tsv")]
    if tsvs:
        _list_ecotaxa(lib, names, tsvs, statuses, pixel_size_um)
    else:
        _list_folders(lib, names, pixel_size_um, unlabelled)
    if not lib.items:
        lib.close()
        raise LibraryError(f"{path}: no usable vignette ({dict(lib.skipped) or 'no image found'}); a library is a folder "
                           "per taxon of images, or an EcoTaxa export with its .tsv and images")
    lib.polarity = _majority_polarity(lib)
    one = sorted(t for t, c in lib.counts().items() if c == 1 and t)
    if one:
        log.warning("%s: %d taxon(s) with a single vignette (%s): kept for training, too few to test on",
                    path, len(one), ", ".join(one[:5]) + (", …" if len(one) > 5 else ""))
    return lib


def _majority_polarity(lib: VignetteLibrary, n: int = 64) -> Polarity | None:
    """The polarity of most of up to ``n`` vignettes spread over the library (None: no readable one)."""
    votes = Counter()
    for it in lib.items[::max(1, len(lib.items) // n)][:n]:
        try:
            image = decode_grey(lib.read_bytes(it.source))
        except (OSError, KeyError):
            continue
        if image is not None:
            votes["dark_on_bright" if np.median(_border(image)) >= 128 else "bright_on_dark"] += 1
    return votes.most_common(1)[0][0] if votes else None


def _list_folders(lib: VignetteLibrary, names: list[str], pixel_size_um: float | None, unlabelled: bool) -> None:
    items = []
    for n in names:
        parts = n.split("/")
        if parts[-1].startswith("."):
            continue  # .DS_Store, editors' files: not vignettes and not worth a line
        if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            lib.skip(n, "not an image file (.png, .jpg, .tif, .bmp)")
            continue
        if len(parts) < 2 and not unlabelled:
            lib.skip(n, "outside any taxon folder (a library is <taxon>/…/<image>)")
            continue
        items.append(LibraryItem(n, parts[0] if len(parts) > 1 else "", pixel_size_um))
    known = {it.taxon for it in items if it.taxon}
    lib.items = items
    lib.taxa = {t: taxon_from_prefix(t, known) for t in sorted(known)}


def _list_ecotaxa(lib: VignetteLibrary, names: list[str], tsvs: list[str], statuses: Sequence[str] | None,
                  pixel_size_um: float | None) -> None:
    lib.kind = "ecotaxa"
    present = set(names)
    keep = None if statuses is None else {s.strip().lower() for s in statuses}
    taxa: dict[str, Taxon] = {}
    items = []
    for t in tsvs:
        df = read_ecotaxa_tsv(lib.read_bytes(t), f"{lib.root}:{t}" if lib._zip else str(lib.root / t))
        if "img_file_name" not in df.columns or "object_annotation_category" not in df.columns:
            log.warning("%s: no img_file_name or object_annotation_category column; not an EcoTaxa export with "
                        "images and labels, skipped", t)
            continue
        if keep is not None and "object_annotation_status" in df.columns:
            status = df["object_annotation_status"].str.strip().str.lower()
            dropped = int((~status.isin(keep)).sum())
            if dropped:
                lib.skipped[f"status not {'/'.join(sorted(keep))}"] += dropped
                log.info("%s: %d row(s) not %s, left out", t, dropped, "/".join(sorted(keep)))
            df = df[status.isin(keep)]
        elif keep is not None:
            log.warning("%s: no object_annotation_status column; every row is taken as validated", t)
        base = posixpath.dirname(t)
        hierarchy = df["object_annotation_hierarchy"] if "object_annotation_hierarchy" in df else pd.Series("", df.index)
        for (_, row), h in zip(df.iterrows(), hierarchy):
            category = str(row["object_annotation_category"]).strip()
            img = str(row["img_file_name"]).strip()
            if not category:
                lib.skip(img or t, "validated without a category")
                continue
            member = posixpath.normpath(posixpath.join(base, img.replace("\\", "/"))) if img else ""
            if not img or not _safe_member(img) or not _safe_member(member):
                lib.skip(img or t, "img_file_name leaves the export's folder (absolute or '..'); refused")
                continue
            if member not in present:
                lib.skip(member, f"named in {t} but not in the export")
                continue
            if category not in taxa:
                taxa[category] = taxon_from_ecotaxa(category, str(h))
            px = _pixel_size(row)
            items.append(LibraryItem(member, category, px if px is not None else pixel_size_um,
                                     str(row.get("object_id", "")) or None))
    lib.items = items
    lib.taxa = taxa


__all__ = ["LibraryError", "LibraryItem", "Vignette", "VignetteLibrary", "decode_grey",
           "open_library", "organism_mask", "read_ecotaxa_tsv"]
