"""Rasterise objects into crops, render the background, composite, and encode masks.

The ground truth is exact by construction: an object's mask is decided in its own crop
(blurred ink above a fixed threshold, or its silhouette), its opacity is zeroed outside
that mask, and the frame is `background + (level - background) * A` where A accumulates
the opacities. Outside every mask A is exactly 0, so those pixels are the background.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from .categories import MARINE_SNOW
from .environment import Environment
from .params import STREAM_BACKGROUND, STREAM_NOISE, STREAM_SENSOR, STREAM_SHADING, SynthConfig, rng_for
from .scene import ObjectSpec, frame_objects
from .shapes import BUILDERS, Sketch

INK_THRESHOLD = 0.16  # blurred ink (0..1) from which a pixel is part of the object
SIL_THRESHOLD = 128  # blurred silhouette (0..255): its geometric edge
ALPHA_FLOOR = 0.5 * INK_THRESHOLD  # x contrast: every mask pixel is visibly drawn
MAX_ALPHA = 0.97
LIT_LEVEL = 250.0  # what a fully opaque lit object reaches on UVP
_TEXTURE_SIZE = 1024
_SHADING_STEP = 256  # px between the knots of the smooth 2-D shading


@dataclass(frozen=True)
class Stamp:
    """One object rasterised: opacity and mask in a tight crop at (x0, y0), stream coordinates."""

    x0: int
    y0: int
    alpha: np.ndarray  # float32 (h, w), 0 outside the mask (negative where a bubble glints)
    mask: np.ndarray  # bool (h, w)


@dataclass(frozen=True)
class DrawnObject:
    """An object as it appears in one frame: its mask cropped to the frame, tight."""

    spec: ObjectSpec
    x0: int
    y0: int
    mask: np.ndarray  # bool (h, w), tight: every row and column holds a pixel
    truncated: bool  # part of it lies outside this frame (side edge or line-scan cut)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> list[int]:
        """COCO [x, y, w, h] in frame pixels."""
        return [self.x0, self.y0, int(self.mask.shape[1]), int(self.mask.shape[0])]

    def full_mask(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), bool)
        out[self.y0:self.y0 + self.mask.shape[0], self.x0:self.x0 + self.mask.shape[1]] = self.mask
        return out


@dataclass(frozen=True)
class RenderedFrame:
    index: int
    image: np.ndarray  # uint8 (H, W)
    objects: list[DrawnObject]
    background: np.ndarray | None = None  # uint8 (H, W): the frame without its objects
    # the user's background frame's own objects (synth/backgrounds.py): (x0, y0, tight mask)
    ignore: list[tuple[int, int, np.ndarray]] = field(default_factory=list)


# --- texture -------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _texture() -> np.ndarray:
    """A fixed tile of fine, slightly smoothed noise in [0, 1] (same in every process)."""
    rng = np.random.Generator(np.random.PCG64(20260601))
    t = cv2.GaussianBlur(rng.random((_TEXTURE_SIZE, _TEXTURE_SIZE), dtype=np.float32), (0, 0), 0.8)
    t = (t - t.mean()) / t.std()
    return np.clip(0.5 + t / 5, 0, 1).astype(np.float32)


def _texture_patch(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    tex = _texture()
    oy, ox = (int(v) for v in rng.integers(0, _TEXTURE_SIZE, 2))
    if oy + h <= _TEXTURE_SIZE and ox + w <= _TEXTURE_SIZE:
        return tex[oy:oy + h, ox:ox + w]
    rows = (oy + np.arange(h)) % _TEXTURE_SIZE
    cols = (ox + np.arange(w)) % _TEXTURE_SIZE
    return tex[np.ix_(rows, cols)]


# --- one object ----------------------------------------------------------------------------

def rasterise(spec: ObjectSpec, dark_on_bright: bool = True, pool=None) -> Stamp | None:
    """Draw one object in its own crop; None when nothing of it reaches the threshold.

    ``pool``: the cruise's organism pool, for objects that are a library's vignette."""
    if spec.vignette >= 0:
        from .organisms import stamp_arrays

        x0, y0, alpha, mask = stamp_arrays(pool, spec.vignette, spec.cx, spec.cy, spec.size, spec.angle, spec.blur,
                                           spec.contrast, spec.seed)
        return _trim(x0, y0, alpha, mask)
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    sk = Sketch(spec.cx, spec.cy, spec.angle)
    BUILDERS[spec.category_id](sk, rng, spec.size, spec.variant)
    bx0, by0, bx1, by1 = sk.bounds()
    margin = int(math.ceil(3 * spec.blur)) + 2
    x0, y0 = math.floor(bx0) - margin, math.floor(by0) - margin
    w, h = math.ceil(bx1) + margin + 1 - x0, math.ceil(by1) + margin + 1 - y0
    layers = sk.rasterise(x0, y0, h, w)

    ink = _blur(layers["ink"], spec.blur).astype(np.float32) * np.float32(1 / 255)
    tex = _texture_patch(h, w, rng)
    if spec.category_id == MARINE_SNOW:  # ragged, porous edges
        ink *= 0.35 + 1.1 * tex
    mask = ink >= INK_THRESHOLD
    if "sil" in layers:
        mask |= _blur(layers["sil"], spec.blur) >= SIL_THRESHOLD
    alpha = np.maximum(ink * (0.85 + 0.3 * tex), ALPHA_FLOOR) * np.float32(spec.contrast)
    np.minimum(alpha, MAX_ALPHA, out=alpha)
    if "glint" in layers and dark_on_bright:  # a bubble's lens focuses light: brighter centre
        alpha -= _blur(layers["glint"], spec.blur).astype(np.float32) * np.float32(0.35 / 255)
    alpha[~mask] = 0.0
    return _trim(x0, y0, alpha, mask)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _trim(x0: int, y0: int, alpha: np.ndarray, mask: np.ndarray) -> Stamp | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return Stamp(x0 + int(c0), y0 + int(r0), alpha[r0:r1, c0:c1], mask[r0:r1, c0:c1])


# --- background ----------------------------------------------------------------------------

def column_gain(cfg: SynthConfig) -> np.ndarray:
    """(W,) illumination x sensor gain: vignetting, per-column gain and a few streaks."""
    rng = rng_for(cfg.seed, STREAM_SENSOR)
    w = cfg.width
    u = (np.arange(w) + 0.5) / w * 2 - 1
    if not cfg.line_scan:
        return np.ones(w, np.float32)
    vignette = 1 - rng.uniform(0.04, 0.07) * u ** 2 - rng.uniform(0.01, 0.03) * u ** 4
    knots = rng.normal(0, 0.012, 18)
    smooth = np.interp(np.linspace(0, 17, w), np.arange(18), knots)
    gain = 1 + smooth + rng.normal(0, 0.004, w)
    for _ in range(int(rng.integers(3, 9))):  # dirty or hot sensor columns
        c = int(rng.integers(0, w))
        gain[c:c + int(rng.integers(1, 4))] *= rng.choice([rng.uniform(0.88, 0.97), rng.uniform(1.02, 1.04)])
    return (vignette * gain).astype(np.float32)


def _shading(cfg: SynthConfig, row0: int) -> np.ndarray:
    """(H, W) smooth unevenness, continuous along a line-scan stream (knots keyed by row)."""
    step, h, w = _SHADING_STEP, cfg.height, cfg.width
    j0 = row0 // step
    j1 = (row0 + h - 1) // step + 1
    n_cols = w // step + 2
    knot_cols = np.arange(n_cols) * step
    xs = np.arange(w)
    knots = np.stack([np.interp(xs, knot_cols, rng_for(cfg.seed, STREAM_SHADING, j).standard_normal(n_cols))
                      for j in range(j0, j1 + 1)]).astype(np.float32)
    r = (row0 + np.arange(h)) / step - j0
    i = np.minimum(r.astype(np.int64), j1 - j0 - 1)
    t = (r - i).astype(np.float32)[:, None]
    return knots[i] * (1 - t) + knots[i + 1] * t


def background(cfg: SynthConfig, k: int) -> np.ndarray:
    """Float32 (H, W) frame k without objects, sensor noise included."""
    return _background(cfg, k)[0]


def _background(cfg: SynthConfig, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(background, ignore map of the user's frame or None)."""
    h, w = cfg.height, cfg.width
    if cfg.backgrounds:
        from .backgrounds import user_background

        return user_background(cfg.backgrounds, k, h, w, cfg.polarity, rng_for(cfg.seed, STREAM_BACKGROUND, k))
    sensor = rng_for(cfg.seed, STREAM_SENSOR, 1)
    noise = rng_for(cfg.seed, STREAM_NOISE, k)
    if cfg.area_camera:
        return _area_background(cfg, k, sensor, noise), None
    if cfg.line_scan:
        base, p1, p2 = sensor.uniform(205, 215), sensor.uniform(40_000, 80_000), sensor.uniform(3000, 8000)
        ph1, ph2 = sensor.uniform(0, 2 * np.pi, 2)
        rows = (k * h + np.arange(h)).astype(np.float64)  # slow drift along the stream
        drift = 1 + 0.025 * np.sin(2 * np.pi * rows / p1 + ph1) + 0.008 * np.sin(2 * np.pi * rows / p2 + ph2)
        bg = np.outer((base * drift).astype(np.float32), column_gain(cfg))
        bg *= 1 + 0.015 * _shading(cfg, k * h)
        bg += noise.standard_normal((h, 1), dtype=np.float32) * np.float32(0.5)  # line jitter
        bg += noise.standard_normal((h, w), dtype=np.float32) * np.float32(2.2)
        return bg, None
    base, period, phase = sensor.uniform(6, 12), sensor.uniform(20, 60), sensor.uniform(0, 2 * np.pi)
    yy, xx = np.ogrid[:h, :w]
    rho2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    lit = (1 + 0.5 * np.clip(1 - rho2 / 2, 0, 1)).astype(np.float32)
    bg = lit * np.float32(base * (1 + 0.08 * math.sin(2 * math.pi * k / period + phase)))
    bg += noise.standard_normal((h, w), dtype=np.float32) * np.float32(1.3)
    return bg, None


def _area_background(cfg: SynthConfig, k: int, sensor: np.random.Generator, noise: np.random.Generator) -> np.ndarray:
    """An area-camera shadowgraph: a bright centre falling to 55-65 % in the corners, lens
    shading, and a gain that drifts from frame to frame."""
    h, w = cfg.height, cfg.width
    base, corner = sensor.uniform(205, 235), sensor.uniform(0.55, 0.65)
    period, phase = sensor.uniform(20, 60), sensor.uniform(0, 2 * np.pi)
    cx, cy = w / 2 * sensor.uniform(0.9, 1.1), h / 2 * sensor.uniform(0.9, 1.1)  # the optical axis, off centre
    yy, xx = np.ogrid[:h, :w]
    rho2 = (((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2) / 2  # 1 in the corners
    vignette = (1 - (1 - corner) * np.clip(rho2, 0, 1.3) ** 1.2).astype(np.float32)
    gain = np.float32(base * (1 + 0.04 * math.sin(2 * math.pi * k / period + phase)))
    bg = vignette * gain * (1 + 0.02 * _shading(cfg, 0))
    bg += noise.standard_normal((h, w), dtype=np.float32) * np.float32(2.0)
    return bg


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- a frame -------------------------------------------------------------------------------

def render_frame(cfg: SynthConfig, k: int, *, with_background: bool = False,
                 env: Environment | None = None) -> RenderedFrame:
    """Frame k with the exact mask of every object drawn in it (in drawing order)."""
    h, w = cfg.height, cfg.width
    row0 = k * h if cfg.line_scan else 0
    dark = cfg.polarity == "dark_on_bright"
    acc = np.zeros((h, w), np.float32)  # A = 1 - product of (1 - alpha)
    drawn: list[DrawnObject] = []
    pool = cfg.pool()
    for spec in frame_objects(cfg, k, env):
        stamp = rasterise(spec, dark, pool)
        if stamp is None:
            continue
        obj = _composite(acc, stamp, spec, row0, h, w)
        if obj is not None:
            drawn.append(obj)
    bg, ignore = _background(cfg, k)
    level = np.float32(0.0 if dark else LIT_LEVEL)
    image = to_uint8(bg + (level - bg) * acc)
    regions = []
    if ignore is not None:
        from .backgrounds import ignore_regions

        regions = ignore_regions(ignore)
    return RenderedFrame(k, image, drawn, to_uint8(bg) if with_background else None, regions)


def _composite(acc: np.ndarray, stamp: Stamp, spec: ObjectSpec, row0: int, h: int, w: int) -> DrawnObject | None:
    """Blend the part of a stamp inside the frame; return that part's tight mask."""
    x0, y0 = stamp.x0, stamp.y0 - row0
    sh, sw = stamp.mask.shape
    c0, r0 = max(0, -x0), max(0, -y0)
    c1, r1 = min(sw, w - x0), min(sh, h - y0)
    if c0 >= c1 or r0 >= r1:
        return None
    mask = stamp.mask[r0:r1, c0:c1]
    if not mask.any():
        return None
    alpha = stamp.alpha[r0:r1, c0:c1]
    view = acc[y0 + r0:y0 + r1, x0 + c0:x0 + c1]
    view += alpha * (1 - view)
    clipped = (r0, c0, r1, c1) != (0, 0, sh, sw)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    tight = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    truncated = clipped and int(tight.sum()) < int(stamp.mask.sum())
    return DrawnObject(spec, x0 + c0 + int(cols[0]), y0 + r0 + int(rows[0]), tight, truncated)


# --- COCO RLE ------------------------------------------------------------------------------

def rle_counts(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE (column-major runs) of a cropped mask, without a full frame."""
    hc = mask.shape[0]
    q = np.flatnonzero(mask.T)  # column-major order inside the crop
    if q.size == 0:
        return [height * width]
    idx = (x0 + q // hc) * height + (y0 + q % hc)
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    return counts.tolist() if counts[-1] else counts[:-1].tolist()


def encode_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """Compressed COCO RLE ({"size": [h, w], "counts": str}) of a cropped mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects({"size": [height, width], "counts": rle_counts(mask, x0, y0, height, width)},
                                 height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
