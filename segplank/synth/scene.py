"""Which objects are in a frame: how many, which categories, how big, where.

Each frame "owns" the objects whose centres fall in it, drawn from its own random stream.
On a line-scan (ISIIS) cruise the frames are consecutive cuts of one stream of lines, so
a frame also shows the parts of its neighbours' objects that reach across the cut, and
both frames draw such an object identically (rows are counted along the whole stream).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .categories import (BUBBLE, CONTRAST, DETRITUS, LIBRARY, MAX_REACH_REF_PX, NON_PLANKTON_IDS,
                         NON_PLANKTON_MIX, PLANKTON_IDS, PLANKTON_MIX, reach_px, sample_sizes,
                         size_scale)
from .environment import Environment
from .params import STREAM_OBJECTS, SynthConfig, rng_for
from .shapes import VARIANTS

TILE_SEAMS = (448, 496, 512)  # common model tile strides: objects across them test the stitcher
OUT_OF_FOCUS_SHARE = 0.15
TOUCH_SHARE = 0.06  # non-plankton placed against another object
EDGE_SHARE = 0.02  # non-plankton placed across the frame's side edges
MAX_BLUR = 3.2


@dataclass(frozen=True)
class ObjectSpec:
    """All an object's renderer needs: rendering is a pure function of this record."""

    uid: str  # "<owner frame>:<index>", the same in every frame that shows a part of it
    category_id: int
    cx: float  # column, frame px
    cy: float  # row along the stream (line-scan) or in the frame (snapshots)
    size: float  # px, the category's natural length
    angle: float  # radians
    contrast: float  # peak opacity, 0..1
    blur: float  # Gaussian sigma of the edge, px (larger when out of focus)
    variant: int
    seed: int
    vignette: int = -1  # index into the cruise's organism pool; -1: a drawn shape


    @property
    def reach(self) -> float:
        return reach_px(self.category_id, self.size, self.blur)


def blur_limit(category_ids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Largest edge blur that still leaves the object visible: specks and fibres stay crisp."""
    limit = np.minimum(0.45 + 0.12 * np.asarray(sizes, dtype=np.float64), MAX_BLUR)
    return np.where(np.asarray(category_ids) == DETRITUS, np.minimum(limit, 1.3), limit)


def _stochastic_round(x: float, rng: np.random.Generator) -> int:
    base = math.floor(x)
    return int(base + (rng.random() < x - base))


def _counts(cfg: SynthConfig, env: Environment, k: int, rng: np.random.Generator) -> tuple[int, float]:
    """Objects in the frame and the share of plankton among them, by density setting."""
    u = rng.random(3)
    if cfg.density == "sparse":
        n = math.floor(u[1] * 4) if u[0] < 0.4 else 4 + math.floor(u[1] * 27)
        share = 0.05 + 0.2 * u[2]
    elif cfg.density == "dense":
        n = 1100 + u[1] * 1300
        share = 0.007 + 0.007 * u[2]
    else:
        n = math.exp(math.log(50) + u[1] * math.log(400 / 50))
        share = 0.03 + 0.07 * env.plankton_weight(cfg.frame_seconds(k)) * (0.7 + 0.3 * u[2])
    if cfg.plankton_share is not None:
        share = cfg.plankton_share
    return _stochastic_round(n * cfg.area_factor, rng), share


def _seam_positions(cfg: SynthConfig, n: int, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) x, y centred on a tile seam, or on a side edge for the last one."""
    out = np.stack([rng.uniform(0, cfg.width, n), rng.uniform(0, cfg.height, n)], axis=1)
    dims = (cfg.width, cfg.height)
    for i in range(n):
        jitter = rng.normal(0, 0.1 * sizes[i])
        if i == n - 1 and n > 1:  # one straddles the side edge of the frame
            out[i, 0] = (0.0 if rng.random() < 0.5 else cfg.width) + jitter
            continue
        tile = TILE_SEAMS[int(rng.integers(len(TILE_SEAMS)))]
        axis = int(rng.integers(2))
        if dims[axis] <= tile:
            axis = 1 - axis
        if dims[axis] <= tile:
            continue
        m = int(rng.integers(1, (dims[axis] - 1) // tile + 1))
        out[i, axis] = m * tile + jitter
    return out


def sample_owned(cfg: SynthConfig, k: int, env: Environment | None = None) -> list[ObjectSpec]:
    """The objects whose centre lies in frame k (in stream rows for a line-scan cruise)."""
    env = env or Environment.for_seed(cfg.seed)
    rng = rng_for(cfg.seed, STREAM_OBJECTS, k)
    n, share = _counts(cfg, env, k, rng)
    cats, n_pl, n_seam = _categories(cfg, n, share, rng)
    sizes = sample_sizes(cats, rng, cfg.pixel_size_um)
    blur, contrast, angle, variant = _appearance(cats, sizes, rng)
    seeds = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
    xy = _positions(cfg, k, sizes, n_pl, n_seam, rng)
    specs = [ObjectSpec(f"{k}:{i}", int(cats[i]), float(xy[i, 0]), float(xy[i, 1]), float(sizes[i]),
                        float(angle[i]), float(contrast[i]), float(blur[i]), int(variant[i]), int(seeds[i]))
             for i in range(n)]
    pool = cfg.pool()
    return specs if pool is None else _with_organisms(specs, pool, rng)


def _with_organisms(specs: list[ObjectSpec], pool, rng: np.random.Generator) -> list[ObjectSpec]:
    """Plankton and detritus become library organisms (living and non-living taxa, each
    taxon equally likely): same place, turn, focus and seed; their size is the organism's own
    at the instrument's pixel size, give or take SIZE_JITTER. Marine snow and bubbles stay drawn."""
    from dataclasses import replace

    from .organisms import SIZE_JITTER

    living, dead = pool.by_living(True), pool.by_living(False)
    if not living:
        raise ValueError("the organism library holds no living taxon to draw as plankton")
    diag = pool.diagonal
    out = []
    for s in specs:
        groups = living if s.category_id in PLANKTON_IDS else dead if s.category_id == DETRITUS else None
        if not groups:
            out.append(s)
            continue
        members = groups[int(rng.integers(len(groups)))]
        v = int(members[int(rng.integers(len(members)))])
        strength = float(np.clip(s.contrast / CONTRAST[s.category_id][1], 0.5, 1.0))
        out.append(replace(s, category_id=LIBRARY, vignette=v, size=float(diag[v] * rng.uniform(*SIZE_JITTER)),
                           contrast=strength))
    return out


def _categories(cfg: SynthConfig, n: int, share: float, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Category per object, plankton first; also how many plankton and how many go on seams."""
    n_pl = int(rng.binomial(n, share)) if n else 0
    n_seam = 0
    if cfg.density != "sparse" and n and share > 0:
        n_seam = min(int(rng.integers(2, 5)), max(1, round(0.05 * n)))
        n_pl = max(n_pl, n_seam) if cfg.plankton_share is None else n_pl
        n_seam = min(n_seam, n_pl)
    cats = np.concatenate([rng.choice(PLANKTON_IDS, n_pl, p=PLANKTON_MIX),
                           rng.choice(NON_PLANKTON_IDS, n - n_pl, p=NON_PLANKTON_MIX)]).astype(np.int64)
    return cats, n_pl, n_seam


def _appearance(cats: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Edge blur, contrast (both worse out of focus), orientation and shape variant."""
    n = len(cats)
    in_focus = rng.random(n) >= OUT_OF_FOCUS_SHARE
    blur = np.where(in_focus, rng.uniform(0.5, 1.0, n), rng.uniform(1.6, MAX_BLUR, n))
    blur = np.minimum(blur, blur_limit(cats, sizes))
    lo = np.array([CONTRAST[c][0] for c in cats])
    hi = np.array([CONTRAST[c][1] for c in cats])
    contrast = rng.uniform(lo, hi) * np.where(in_focus, 1.0, rng.uniform(0.5, 0.8, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    variant = np.zeros(n, np.int64)
    vu = rng.random(n)
    for cid, probs in VARIANTS.items():
        sel = cats == cid
        variant[sel] = np.searchsorted(np.cumsum(probs)[:-1], vu[sel], side="right")
    angle[(cats == BUBBLE) & (variant == 1)] = 0.0  # a line-scan glitch runs along the line
    return blur, contrast, angle, variant


def _positions(cfg: SynthConfig, k: int, sizes: np.ndarray, n_pl: int, n_seam: int,
               rng: np.random.Generator) -> np.ndarray:
    """(n, 2) centres: uniform, then seams, touching pairs and edges; stream rows if line-scan."""
    n = len(sizes)
    xy = np.stack([rng.uniform(0, cfg.width, n), rng.uniform(0, cfg.height, n)], axis=1)
    xy[:n_seam] = _seam_positions(cfg, n_seam, sizes[:n_seam], rng)
    _place_touching_and_edges(cfg, xy, sizes, n_pl, rng)
    if cfg.line_scan:  # centres stay in the owner's lines; reach does the rest
        xy[:, 1] = np.clip(xy[:, 1], 0, np.nextafter(cfg.height, 0)) + k * cfg.height
    return xy


def _place_touching_and_edges(cfg: SynthConfig, xy: np.ndarray, sizes: np.ndarray, n_pl: int,
                              rng: np.random.Generator) -> None:
    """Move some non-plankton against another object, and some across the side edges."""
    n = len(xy)
    u = rng.random(n)
    partner = rng.integers(0, max(n, 1), n)
    direction = rng.uniform(0, 2 * np.pi, n)
    gap = 0.4 * (sizes + sizes[partner]) * rng.uniform(0.5, 1.0, n)
    touch = (u < TOUCH_SHARE) & (np.arange(n) >= n_pl) & (partner != np.arange(n))
    xy[touch, 0] = xy[partner[touch], 0] + gap[touch] * np.cos(direction[touch])
    xy[touch, 1] = xy[partner[touch], 1] + gap[touch] * np.sin(direction[touch])
    edge = (u > 1 - EDGE_SHARE) & (np.arange(n) >= n_pl)
    side = rng.random(n) < 0.5
    offset = rng.uniform(-0.35, 0.35, n) * sizes
    axis = np.zeros(n, np.int64) if cfg.line_scan else rng.integers(0, 2, n)
    for i in np.flatnonzero(edge):
        limit = cfg.width if axis[i] == 0 else cfg.height
        xy[i, axis[i]] = (limit if side[i] else 0.0) + offset[i]


def neighbour_span(cfg: SynthConfig) -> int:
    """How many frames away an object's centre can be and still reach into a frame."""
    if not cfg.line_scan:
        return 0
    reach = MAX_REACH_REF_PX * size_scale(cfg.pixel_size_um) + 3 * MAX_BLUR + 4
    pool = cfg.pool()
    if pool is not None:
        from .organisms import SIZE_JITTER

        reach = max(reach, 0.5 * float(pool.diagonal.max()) * SIZE_JITTER[1] + 3 * MAX_BLUR + 4)
    return int(math.ceil(reach / cfg.height))


def frame_objects(cfg: SynthConfig, k: int, env: Environment | None = None) -> list[ObjectSpec]:
    """Every object that can be drawn in frame k, in drawing order (owner frame, index)."""
    env = env or Environment.for_seed(cfg.seed)
    span = neighbour_span(cfg)
    top, bottom = k * cfg.height, (k + 1) * cfg.height
    out: list[ObjectSpec] = []
    for j in range(k - span, k + span + 1):
        owned = sample_owned(cfg, j, env)
        if j != k:
            owned = [s for s in owned if s.cy - s.reach < bottom and s.cy + s.reach > top]
        out.extend(owned)
    return out
