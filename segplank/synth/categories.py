"""The eight synthetic categories, how often each occurs and how big each draws.

Ids and names are fixed: the bundled model's class map is built from them. Sizes are
drawn in pixels at the 10 µm reference pixel and rescaled to the cruise's pixel size, so a
cruise imaged at coarser resolution shows the same organisms smaller.
"""
from __future__ import annotations

import numpy as np

CATEGORIES: list[dict] = [
    {"id": 1, "name": "copepod", "supercategory": "plankton"},
    {"id": 2, "name": "chaetognath", "supercategory": "plankton"},
    {"id": 3, "name": "appendicularian", "supercategory": "plankton"},
    {"id": 4, "name": "medusa", "supercategory": "plankton"},
    {"id": 5, "name": "radiolarian", "supercategory": "plankton"},
    {"id": 6, "name": "marine_snow", "supercategory": "non-plankton"},
    {"id": 7, "name": "detritus", "supercategory": "non-plankton"},
    {"id": 8, "name": "bubble", "supercategory": "non-plankton"},
]
NAMES: dict[int, str] = {c["id"]: c["name"] for c in CATEGORIES}
COPEPOD, CHAETOGNATH, APPENDICULARIAN, MEDUSA, RADIOLARIAN, MARINE_SNOW, DETRITUS, BUBBLE = range(1, 9)
PLANKTON_IDS = (COPEPOD, CHAETOGNATH, APPENDICULARIAN, MEDUSA, RADIOLARIAN)
NON_PLANKTON_IDS = (MARINE_SNOW, DETRITUS, BUBBLE)

# Relative abundance inside each group (a typical epipelagic tow).
PLANKTON_MIX = np.array([0.45, 0.12, 0.15, 0.10, 0.18])
NON_PLANKTON_MIX = np.array([0.86, 0.09, 0.05])

REFERENCE_PIXEL_UM = 10.0
MIN_SIZE_PX = 2.0

# "size" is the category's natural length: diameter for round things, body length
# (prosome + urosome) for copepods, trunk + tail for appendicularians, bell diameter for
# medusae. REACH bounds how far (in sizes) anything drawn lies from the object's centre,
# which tells a line-scan frame which neighbours' objects can reach into it.
LIBRARY = 0  # a library organism (synth/organisms.py): its size is its box's diagonal
REACH: dict[int, float] = {
    LIBRARY: 0.5, COPEPOD: 1.25, CHAETOGNATH: 0.62, APPENDICULARIAN: 0.6, MEDUSA: 1.4,
    RADIOLARIAN: 0.52, MARINE_SNOW: 0.52, DETRITUS: 0.52, BUBBLE: 0.52,
}

# (kind, a, b, lo, hi) at the reference pixel: lognormal(median a, sigma b) or
# loguniform(a, b), clipped to [lo, hi].
_SIZE_LAWS: dict[int, tuple[str, float, float, float, float]] = {
    COPEPOD: ("lognormal", 140.0, 0.45, 40.0, 700.0),
    CHAETOGNATH: ("loguniform", 150.0, 1400.0, 150.0, 1400.0),
    APPENDICULARIAN: ("loguniform", 80.0, 1100.0, 80.0, 1100.0),
    MEDUSA: ("lognormal", 110.0, 0.5, 30.0, 600.0),
    RADIOLARIAN: ("lognormal", 60.0, 0.55, 12.0, 400.0),
    MARINE_SNOW: ("lognormal", 11.0, 0.65, 3.0, 250.0),
    DETRITUS: ("lognormal", 40.0, 0.7, 8.0, 500.0),
    BUBBLE: ("lognormal", 14.0, 0.6, 5.0, 120.0),
}
MAX_SIZE_REF_PX = max(law[4] for law in _SIZE_LAWS.values())
MAX_REACH_REF_PX = max(REACH[c] * _SIZE_LAWS[c][4] for c in _SIZE_LAWS)

# Contrast (peak opacity) ranges: marine snow is faint, organisms stand out.
CONTRAST: dict[int, tuple[float, float]] = {
    COPEPOD: (0.55, 0.9), CHAETOGNATH: (0.5, 0.85), APPENDICULARIAN: (0.5, 0.85),
    MEDUSA: (0.5, 0.8), RADIOLARIAN: (0.5, 0.85), MARINE_SNOW: (0.18, 0.5),
    DETRITUS: (0.35, 0.75), BUBBLE: (0.55, 0.9),
}


def size_scale(pixel_size_um: float) -> float:
    """Pixels per reference pixel: organisms keep their physical size."""
    return REFERENCE_PIXEL_UM / pixel_size_um


def sample_sizes(category_ids: np.ndarray, rng: np.random.Generator, pixel_size_um: float = REFERENCE_PIXEL_UM) -> np.ndarray:
    """Draw one size (px) per object, category by category, vectorised."""
    category_ids = np.asarray(category_ids)
    out = np.empty(category_ids.shape, dtype=np.float64)
    u = rng.random(category_ids.shape)  # one draw per object, whatever its category
    z = rng.standard_normal(category_ids.shape)
    for cid, (kind, a, b, lo, hi) in _SIZE_LAWS.items():
        sel = category_ids == cid
        if kind == "lognormal":
            vals = a * np.exp(b * z[sel])
        else:
            vals = np.exp(np.log(a) + u[sel] * (np.log(b) - np.log(a)))
        out[sel] = np.clip(vals, lo, hi)
    return np.maximum(out * size_scale(pixel_size_um), MIN_SIZE_PX)


def reach_px(category_id: int, size: float, blur: float) -> float:
    """Radius around the centre that holds every drawn pixel (geometry + blur margin)."""
    return REACH[category_id] * size + 3.0 * blur + 4.0
