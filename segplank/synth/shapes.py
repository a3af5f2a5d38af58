"""Vector drawings of each category, rasterised into a small crop around the object.

A builder draws in the object's own frame (x along the body, head towards +x) and the
`Sketch` rotates and places the points; nothing here touches a whole frame. Three layers:
`ink` (opacity x 255: what darkens a shadowgraph), `sil` (silhouette of translucent parts
whose ink is too faint to count, e.g. a medusa's bell) and `glint` (the bright centre of a
bubble, which brightens a shadowgraph).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from .categories import (APPENDICULARIAN, BUBBLE, CHAETOGNATH, COPEPOD, DETRITUS,
                         MARINE_SNOW, MEDUSA, RADIOLARIAN)

_SHIFT = 4  # OpenCV fixed-point bits: 1/16 px precision
_ONE = 1 << _SHIFT


@dataclass
class Sketch:
    """Drawing operations in frame coordinates, recorded so the crop can be sized first."""

    cx: float
    cy: float
    angle: float
    ops: list[tuple] = field(default_factory=list)

    def _place(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = pts[:, 0] * c - pts[:, 1] * s + self.cx
        y = pts[:, 0] * s + pts[:, 1] * c + self.cy
        return np.stack([x, y], axis=1)

    def poly(self, pts: np.ndarray, value: float, layer: str = "ink") -> None:
        """Filled polygon."""
        self.ops.append(("poly", layer, int(value), self._place(pts), 0.0))

    def line(self, pts: np.ndarray, value: float, thickness: float = 1.0, layer: str = "ink") -> None:
        """Open polyline; thickness in px (at least 1: thinner lines are drawn fainter)."""
        t = max(1, int(round(thickness)))
        if thickness < 1.0:
            value *= max(thickness, 0.35)
        self.ops.append(("line", layer, int(value), self._place(pts), float(t)))

    def disc(self, centre: tuple[float, float], radius: float, value: float, layer: str = "ink",
             thickness: float = -1) -> None:
        """Filled disc, or a ring of the given thickness centred on `radius`."""
        p = self._place(np.array([centre]))
        self.ops.append(("disc", layer, int(value), p, (max(radius, 0.3), thickness)))

    def ellipse(self, centre: tuple[float, float], a: float, b: float, value: float,
                layer: str = "ink", rot: float = 0.0) -> None:
        """Filled ellipse (semi-axes a along x, b along y), as a polygon."""
        self.poly(ellipse_points(centre, a, b, rot), value, layer)

    def bounds(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 of everything drawn, stroke widths included."""
        lo = np.array([np.inf, np.inf])
        hi = -lo
        for kind, _, _, pts, extra in self.ops:
            pad = extra[0] + max(extra[1], 0) / 2 if kind == "disc" else extra / 2
            lo = np.minimum(lo, pts.min(axis=0) - pad)
            hi = np.maximum(hi, pts.max(axis=0) + pad)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def rasterise(self, x0: int, y0: int, h: int, w: int) -> dict[str, np.ndarray]:
        """Draw every op into uint8 layers of a (h, w) crop whose top-left is (x0, y0)."""
        layers: dict[str, np.ndarray] = {}
        origin = np.array([x0, y0], dtype=np.float64)
        for kind, layer, value, pts, extra in self.ops:
            img = layers.get(layer)
            if img is None:
                img = layers[layer] = np.zeros((h, w), np.uint8)
            fixed = np.round((pts - origin) * _ONE).astype(np.int32)
            if kind == "poly":
                cv2.fillPoly(img, [fixed.reshape(-1, 1, 2)], value, cv2.LINE_AA, _SHIFT)
            elif kind == "line":
                cv2.polylines(img, [fixed.reshape(-1, 1, 2)], False, value, int(extra), cv2.LINE_AA, _SHIFT)
            else:
                radius, thick = extra
                t = -1 if thick < 0 else max(1, int(round(thick)))
                cv2.circle(img, (int(fixed[0, 0]), int(fixed[0, 1])), int(round(radius * _ONE)), value, t,
                           cv2.LINE_AA, _SHIFT)
        return layers


def ellipse_points(centre: tuple[float, float], a: float, b: float, rot: float = 0.0) -> np.ndarray:
    n = int(np.clip((a + b) * 1.2, 12, 160))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([centre[0] + x * c - y * s, centre[1] + x * s + y * c], axis=1)


def ribbon(centre: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Polygon around a centreline with a varying half-width (body outlines)."""
    d = np.gradient(centre, axis=0)
    n = np.stack([-d[:, 1], d[:, 0]], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    left = centre + n * half_width[:, None]
    right = centre - n * half_width[:, None]
    return np.concatenate([left, right[::-1]])


def _n_points(length: float, step: float = 6.0, lo: int = 6, hi: int = 120) -> int:
    return int(np.clip(length / step, lo, hi))


# --- builders: (sketch, rng, size, variant) -> None -----------------------------------------

def copepod(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Ovoid prosome, thin urosome with furca, two long antennules swept sideways."""
    p = size / 1.45  # prosome length; urosome adds ~45 %
    a, b = p / 2, p * rng.uniform(0.17, 0.24)
    sk.ellipse((0, 0), a, b, rng.uniform(200, 235))
    sk.ellipse((-0.05 * p, 0), a * 0.55, b * 0.5, 255)  # gut / oil sac, darker
    u_len = 0.45 * p
    bend = rng.uniform(-0.15, 0.15) * u_len
    t = np.linspace(0, 1, 6)
    uro = np.stack([-a * 0.9 - t * u_len, bend * t ** 2], axis=1)
    sk.line(uro, 235, max(p * 0.07, 0.8))
    tip = uro[-1]
    for side in (-1, 1):  # furcal rami and setae
        sk.line(np.array([tip, tip + [-0.08 * p, side * 0.04 * p]]), 200, max(p * 0.015, 0.6))
    for side in (-1, 1):  # antennules: long, from the head, swept back at random spread
        length = p * rng.uniform(0.75, 1.15)
        ang = side * math.radians(rng.uniform(60, 105))
        curl = side * rng.uniform(-0.25, 0.35)
        s = np.linspace(0, 1, 10)[:, None]
        heading = ang + curl * s[:, 0]
        steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / 9)
        pts = np.array([a * 0.8, side * b * 0.3]) + np.concatenate([[[0, 0]], np.cumsum(steps[:-1], axis=0)])
        sk.line(pts, 215, min(max(p * 0.009, 0.6), 2.0))
    for i in range(4):  # swimming legs under the prosome
        x = a * (0.35 - 0.22 * i)
        sk.line(np.array([[x, b * 0.6], [x - 0.08 * p, b * 1.25]]), 170, min(max(p * 0.008, 0.5), 2.0))


def chaetognath(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Long, thin, slightly curved translucent body: head with hooks, lateral and tail fins."""
    length = size
    w = max(length * rng.uniform(0.03, 0.055), 2.2)
    n = _n_points(length, 8, 16, 90)
    s = np.linspace(-0.5, 0.5, n)  # tail (-) to head (+)
    c2, c3 = rng.uniform(-0.12, 0.12), rng.uniform(-0.08, 0.08)
    centre = np.stack([s * length * 0.92, length * (c2 * (4 * s * s - 1) + c3 * 8 * s ** 3)], axis=1)
    u = s + 0.5
    knots_u = [0.0, 0.06, 0.3, 0.5, 0.75, 0.87, 0.91, 0.96, 1.0]
    knots_w = [0.15, 0.35, 0.9, 1.0, 0.8, 0.55, 0.75, 0.65, 0.05]
    half = np.interp(u, knots_u, knots_w) * w / 2
    for lo, hi in ((0.12, 0.3), (0.36, 0.52)):  # two pairs of lateral fins, faint
        sel = (u >= lo) & (u <= hi)
        if sel.sum() >= 3:
            fin = half[sel] + np.sin(np.linspace(0, np.pi, sel.sum())) * w * 0.7
            sk.poly(ribbon(centre[sel], fin), 70)
            sk.poly(ribbon(centre[sel], fin), 255, "sil")
    tail = centre[0]
    back = centre[0] - centre[1]
    back /= max(np.linalg.norm(back), 1e-9)
    perp = np.array([-back[1], back[0]])
    fan = np.array([tail + perp * w * 0.2, tail + back * length * 0.035 + perp * w * 0.6,
                    tail + back * length * 0.04 - perp * w * 0.6, tail - perp * w * 0.2])
    sk.poly(fan, 80)
    sk.poly(fan, 255, "sil")
    sk.poly(ribbon(centre, half), rng.uniform(110, 170))
    gut = (u > 0.1) & (u < 0.85)
    sk.line(centre[gut], 225, max(w * 0.22, 0.7))
    head = centre[-2]
    sk.disc(tuple(head), w * 0.33, 205)
    fwd = centre[-1] - centre[-2]
    fwd /= max(np.linalg.norm(fwd), 1e-9)
    side = np.array([-fwd[1], fwd[0]])
    for k in np.linspace(-1, 1, 6):  # grasping spines
        tip = centre[-1] + fwd * w * 0.25 + side * k * w * 0.45
        sk.line(np.array([head, tip]), 190, 0.7)


def appendicularian(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Compact dark trunk and a long, thin, undulating translucent tail."""
    trunk = size * rng.uniform(0.12, 0.24)
    front = size / 2
    tx = front - trunk / 2
    sk.ellipse((tx, 0), trunk / 2, trunk * 0.3, 230)
    sk.ellipse((tx - trunk * 0.2, trunk * 0.05), trunk * 0.22, trunk * 0.18, 255)  # gonad
    x_att = front - trunk * 0.75
    tail_len = x_att + size / 2
    n = _n_points(tail_len, 5, 20, 160)
    x = np.linspace(x_att, -size / 2 * 0.97, n)
    v = (x_att - x) / tail_len
    amp = tail_len * rng.uniform(0.03, 0.075)
    lam = tail_len / rng.uniform(1.0, 2.5)
    y = amp * np.sin(2 * np.pi * (x_att - x) / lam + rng.uniform(0, 2 * np.pi)) * np.minimum(v * 4, 1)
    centre = np.stack([x, y + trunk * 0.12], axis=1)
    half = np.maximum(trunk * rng.uniform(0.06, 0.1) * (1 - 0.6 * v), 0.6)
    sk.poly(ribbon(centre, half), 125)
    sk.poly(ribbon(centre, half), 255, "sil")
    sk.line(centre[: max(3, int(n * 0.9))], 210, max(half[0] * 0.5, 0.6))  # notochord


def medusa(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Translucent bell with a darker rim, gonads and manubrium, and a few wavy tentacles."""
    r = size / 2
    hb = r * rng.uniform(0.55, 1.15)
    t = np.linspace(0, np.pi, _n_points(np.pi * r, 4, 16, 120))
    flare = 1 - 0.12 * (1 - np.sin(t)) ** 2  # the margin turns slightly inwards: a bell, not a dome
    dome = np.stack([r * np.cos(t) * flare, -hb * np.sin(t) ** 0.9], axis=1)
    xs = np.linspace(dome[0, 0], dome[-1, 0], 9)
    velum = np.stack([xs, 0.08 * hb * (1 - (xs / r) ** 2)], axis=1)
    bell = np.concatenate([dome, velum[::-1]])
    sk.poly(bell, 255, "sil")
    sk.poly(bell, rng.uniform(35, 65))
    sk.poly(np.stack([0.8 * dome[:, 0], 0.8 * dome[:, 1] + 0.03 * hb], axis=1), 80)  # subumbrella
    for k in range(int(rng.integers(2, 5))):
        gx = r * (-0.45 + 0.3 * k)
        sk.ellipse((gx * 0.9, -hb * 0.35), r * 0.09, hb * 0.12, 135, rot=rng.uniform(0, np.pi))
    sk.line(np.array([[0, -hb * 0.4], [0, 0.15 * hb]]), 150, max(r * 0.08, 0.8))  # manubrium
    sk.line(dome, 255, max(r * 0.05, 1.0))  # the darker rim (exumbrella)
    sk.line(velum, 150, max(r * 0.025, 0.8))
    n_t = int(rng.integers(4, 14))
    for x0 in np.linspace(dome[-1, 0], dome[0, 0], n_t):
        length = size * rng.uniform(0.25, 1.15)
        m = _n_points(length, 4, 8, 60)
        s = np.linspace(0, 1, m)
        wave = rng.uniform(0.02, 0.06) * length * s * np.sin(2 * np.pi * s * rng.uniform(0.7, 2) + rng.uniform(0, 6.3))
        pts = np.stack([x0 * (1 + 0.15 * s) + wave, 0.05 * hb + s * length], axis=1)
        sk.line(pts, rng.uniform(150, 205), max(r * 0.012, 0.6))


def radiolarian(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Round body: spiky (0), with a translucent halo and ring (1), or a colonial sphere (2)."""
    big_r = size / 2
    if variant == 0:
        rb = big_r * rng.uniform(0.4, 0.6)
        sk.disc((0, 0), rb, 200)
        sk.disc((0, 0), rb * 0.5, 255)
        n = int(rng.integers(12, 40))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        for a, ln in zip(ang, big_r * rng.uniform(0.75, 0.97, n)):
            d = np.array([math.cos(a), math.sin(a)])
            sk.line(np.array([d * rb * 0.9, d * ln]), 185, min(max(big_r * 0.012, 0.6), 1.5))
    elif variant == 1:
        sk.disc((0, 0), big_r * 0.95, 255, "sil")
        sk.disc((0, 0), big_r * 0.95, rng.uniform(40, 75))
        sk.disc((0, 0), big_r * 0.85, 140, thickness=max(big_r * 0.05, 1.0))
        sk.disc((0, 0), big_r * rng.uniform(0.25, 0.45), 240)
    else:
        sk.disc((0, 0), big_r * 0.95, 255, "sil")
        sk.disc((0, 0), big_r * 0.95, 45)
        sk.disc((0, 0), big_r * 0.93, 100, thickness=1)
        n = int(rng.integers(10, 60))
        rad = big_r * 0.8 * np.sqrt(rng.random(n))
        ang = rng.uniform(0, 2 * np.pi, n)
        cell = big_r * rng.uniform(0.04, 0.09, n)
        for ri, ai, ci in zip(rad, ang, cell):
            sk.disc((ri * math.cos(ai), ri * math.sin(ai)), ci, 230)


def marine_snow(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Fuzzy aggregate of a few lobes (ragged edges come from texture, at rasterising)."""
    r = size / 2
    n = int(min(1 + rng.integers(1, 4) + size // 8, 14))
    rad = r * 0.5 * np.sqrt(rng.random(n))
    ang = rng.uniform(0, 2 * np.pi, n)
    lobe = r * rng.uniform(0.28, 0.5, n)
    val = rng.uniform(150, 255, n)
    for i in range(n):
        sk.disc((rad[i] * math.cos(ang[i]), rad[i] * math.sin(ang[i])), lobe[i], val[i])
    if size > 24 and rng.random() < 0.35:  # mucus stringers
        for _ in range(int(rng.integers(1, 4))):
            a = rng.uniform(0, 2 * np.pi)
            d = np.array([math.cos(a), math.sin(a)])
            sk.line(np.array([d * r * 0.3, d * r * 0.95]), 140, 1.0)


def detritus(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """Thin fibres (one, sometimes a tangle), straight to curly, fitted inside `size`."""
    fibres = []
    for _ in range(1 if rng.random() < 0.8 else int(rng.integers(2, 4))):
        n = _n_points(size, 5, 6, 80)
        turn = np.cumsum(rng.normal(0, rng.uniform(0.02, 0.25), n)) + rng.uniform(0, 2 * np.pi)
        steps = np.stack([np.cos(turn), np.sin(turn)], axis=1)
        fibres.append(np.cumsum(steps, axis=0) + rng.normal(0, 3, 2))
    allpts = np.concatenate(fibres)
    mid = (allpts.min(axis=0) + allpts.max(axis=0)) / 2
    radius = max(np.linalg.norm(allpts - mid, axis=1).max(), 1e-6)
    thick = 1.0 if rng.random() < 0.7 else float(rng.integers(2, 4))
    scale = max(size / 2 - thick / 2, 0.5) / radius
    for f in fibres:
        sk.line((f - mid) * scale, rng.uniform(170, 255), min(thick, max(size / 4, 0.6)))


def bubble(sk: Sketch, rng: np.random.Generator, size: float, variant: int) -> None:
    """A bubble (dark ring, bright centre) or, variant 1, a line-scan glitch streak."""
    if variant == 1:
        h = float(rng.integers(1, 4))
        sk.poly(np.array([[-size / 2, -h / 2], [size / 2, -h / 2], [size / 2, h / 2], [-size / 2, h / 2]]),
                rng.uniform(160, 255))
        return
    r = size / 2
    t = max(r * rng.uniform(0.18, 0.35), 1.0)
    sk.disc((0, 0), r, 255, "sil")
    sk.disc((0, 0), max(r - t / 2, 0.5), 255, thickness=t)
    sk.disc((0, 0), max((r - t) * rng.uniform(0.35, 0.7), 0.4), 255, "glint")


Builder = Callable[[Sketch, np.random.Generator, float, int], None]
BUILDERS: dict[int, Builder] = {
    COPEPOD: copepod, CHAETOGNATH: chaetognath, APPENDICULARIAN: appendicularian, MEDUSA: medusa,
    RADIOLARIAN: radiolarian, MARINE_SNOW: marine_snow, DETRITUS: detritus, BUBBLE: bubble,
}
# variants per category and their probabilities
VARIANTS: dict[int, tuple[float, ...]] = {RADIOLARIAN: (0.5, 0.3, 0.2), BUBBLE: (0.85, 0.15)}
