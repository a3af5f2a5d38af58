"""Real organisms in synthetic frames: a vignette library's objects as opacity stamps.

How the ISIIS group behind the seed paper built its Mask R-CNN training set: validated
vignettes placed into frames. Each vignette's organism (masked from its own background by
:mod:`segplank.library`) becomes an opacity map, ``1 - grey / background`` for a dark
organism on a bright vignette (the share of light it stops) or ``(grey - background) /
(lit level - background)`` for a lit one. The renderer composites opacities as it does its
own drawn shapes: multiplicatively on a shadowgraph (a transmission map), additively towards
the lit level on a UVP frame; a pixel outside every mask keeps the background exactly, so
the ground truth stays exact.

The pool is read once per process (``load_pool`` is cached by its arguments) so that frames
rendered in a process pool load the library once per worker, not once per frame.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

Split = Literal["all", "train", "held_out"]
MAX_OPACITY = 0.97
# a library organism drawn at up to this factor of its own size (natural variation and
# the rounding of pixel sizes)
SIZE_JITTER = (0.85, 1.18)


@dataclass(frozen=True)
class OrganismPool:
    """Every usable vignette of a library as an opacity map and mask, tight to the mask."""

    opacity: tuple[np.ndarray, ...]  # float32 (h, w), 0 outside the mask
    masks: tuple[np.ndarray, ...]  # bool (h, w)
    taxon: np.ndarray  # (N,) int index into ``names``
    names: tuple[str, ...]  # the library's taxa, sorted
    living: tuple[bool, ...]  # per taxon
    scale: np.ndarray  # (N,) frame pixels per vignette pixel (library pixel size / instrument's)
    sources: tuple[str, ...]  # each vignette's file in the library

    @property
    def diagonal(self) -> np.ndarray:
        """(N,) the diagonal of each stamp's box in frame pixels: no rotation reaches further."""
        return np.array([math.hypot(*m.shape) for m in self.masks]) * self.scale

    def by_living(self, living: bool) -> list[np.ndarray]:
        """Vignette indices of each living (or non-living) taxon, one array per taxon."""
        return [np.flatnonzero(self.taxon == t) for t in range(len(self.names))
                if self.living[t] == living and (self.taxon == t).any()]


def opacity_of(image: np.ndarray, mask: np.ndarray, polarity: str, background: float) -> np.ndarray:
    """float32 opacity of a vignette's organism, 0 outside its mask."""
    g = image.astype(np.float32)
    if polarity == "dark_on_bright":
        a = 1.0 - g / max(background, 1.0)
    else:
        a = (g - background) / max(255.0 - background, 1.0)
    a = np.clip(a, 0.0, MAX_OPACITY).astype(np.float32)
    a[~mask] = 0.0
    return a


@lru_cache(maxsize=4)
def load_pool(library: str, split: Split, split_seed: int, held_out: float, pixel_size_um: float,
              library_pixel_size_um: float | None) -> OrganismPool:
    """The organisms of ``library`` (its ``split``: the same split as ``train-classifier
    --library`` with the same seed and share), scaled from the library's pixel size to the
    instrument's (1:1 when neither the export nor ``library_pixel_size_um`` states one)."""
    from ..library import open_library

    logger = logging.getLogger("segplank")
    with open_library(Path(library), pixel_size_um=library_pixel_size_um, quiet=True) as lib:
        names = tuple(lib.taxon_names)
        index = {n: k for k, n in enumerate(names)}
        train, test = lib.split(held_out, split_seed)
        items = {"all": lib.items, "train": train, "held_out": test}[split]
        opacity, masks, taxon, scale, sources = [], [], [], [], []
        for v in lib.vignettes(items):
            rows, cols = np.flatnonzero(v.mask.any(1)), np.flatnonzero(v.mask.any(0))
            sl = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            opacity.append(opacity_of(v.image, v.mask, v.polarity, v.background)[sl])
            masks.append(v.mask[sl])
            taxon.append(index[v.taxon])
            scale.append((v.pixel_size_um or pixel_size_um) / pixel_size_um)
            sources.append(v.source)
        living = tuple(lib.taxa[n].living for n in names)
        skipped = dict(lib.skipped)
    if not masks:
        raise ValueError(f"{library}: no usable organism in its {split} split")
    logger.info("%s: %d organisms of %d taxa (%s split)", library, len(masks), len(names), split)
    if skipped:
        logger.warning("%s: %d vignette(s) left out of the organisms (%s)", library, sum(skipped.values()),
                       "; ".join(f"{n} {r}" for r, n in skipped.items()))
    return OrganismPool(tuple(opacity), tuple(masks), np.asarray(taxon, np.int64), names, living,
                        np.asarray(scale, np.float64), tuple(sources))


def stamp_arrays(pool: OrganismPool, index: int, cx: float, cy: float, size: float, angle: float, blur: float,
                 strength: float, seed: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(x0, y0, opacity, mask) of vignette ``index`` drawn centred at (cx, cy), turned by
    ``angle`` (radians), maybe mirrored, its diagonal ``size`` px, defocused by ``blur``.

    The mask is the warped mask, grown by whatever the defocus spreads visibly beyond it;
    opacity is zeroed outside it, so the truth is exactly what is drawn.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    a, m = pool.opacity[index], pool.masks[index].astype(np.float32)
    if rng.random() < 0.5:
        a, m = a[:, ::-1], m[:, ::-1]
    h, w = a.shape
    s = size / math.hypot(h, w)
    margin = int(math.ceil(3 * blur)) + 2
    side = int(math.ceil(size)) + 2 * margin
    x0, y0 = math.floor(cx - side / 2), math.floor(cy - side / 2)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), math.degrees(angle), s)
    rot[:, 2] += np.array([cx - x0, cy - y0]) - np.array([w / 2, h / 2])  # the vignette's centre onto (cx, cy)
    flags = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    op = cv2.warpAffine(np.ascontiguousarray(a), rot, (side, side), flags=flags, borderValue=0)
    mask = cv2.warpAffine(np.ascontiguousarray(m), rot, (side, side), flags=cv2.INTER_LINEAR, borderValue=0) >= 0.5
    if blur > 1.2:  # out of focus: the organism spreads and fades
        op = cv2.GaussianBlur(op, (0, 0), math.sqrt(blur ** 2 - 1.0))
        mask |= op >= 0.08
    op = np.minimum(op * np.float32(strength), MAX_OPACITY).astype(np.float32)
    op[~mask] = 0.0
    return x0, y0, op, mask


def composed_categories(pool: OrganismPool, drawn: list[dict]) -> list[dict]:
    """COCO categories of a composed cruise: the library's taxa (ids 1..K, plankton when
    living), then the generator's own drawn particles (``drawn``) that the library lacks."""
    cats = [{"id": k + 1, "name": n, "supercategory": "plankton" if live else "non-plankton"}
            for k, (n, live) in enumerate(zip(pool.names, pool.living))]
    for c in drawn:
        if c["name"] not in pool.names:
            cats.append({"id": len(cats) + 1, "name": c["name"], "supercategory": c["supercategory"]})
    return cats


__all__ = ["OrganismPool", "Split", "composed_categories", "load_pool", "opacity_of", "stamp_arrays"]
