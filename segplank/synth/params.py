"""The settings of one synthetic cruise, frame timing and naming, and seeded random streams.

Every random number comes from a stream keyed by (seed, purpose, index), so any frame can
be rendered alone, in any process, and come out byte-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np

# isiis: a line-scan shadowgraph; uvp: lit snapshots; cfe: an area-camera shadowgraph such as
# MBARI's CFE ISIIS (snapshots, strong radial vignetting, gain drift, JPEG frames)
Preset = Literal["isiis", "uvp", "cfe"]
Density = Literal["sparse", "mixed", "dense"]

REFERENCE_AREA = 2048 * 2048  # densities are quoted per 2048 x 2048 frame
TIMESTAMP_REGEX = r"(?P<ts>\d{8}_\d{6}_\d{3})"
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S_%f"

# purposes of the random streams
STREAM_OBJECTS, STREAM_NOISE, STREAM_SENSOR, STREAM_SHADING, STREAM_ENV, STREAM_ENV_NOISE, STREAM_BACKGROUND = range(1, 8)
_INDEX_OFFSET = 1 << 20  # lets line-scan frames before the first (k < 0) have streams too


def rng_for(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """Independent generator for (seed, purpose, index): the basis of determinism."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(stream, index + _INDEX_OFFSET))))


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides a cruise's content (not where it is written, nor how fast)."""

    seed: int = 0
    n_frames: int = 10
    preset: Preset = "isiis"
    density: Density = "mixed"
    plankton_share: float | None = None
    size: tuple[int, int] = (2048, 2048)  # (height, width)
    start_time: datetime = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    frame_rate_hz: float = 2.0
    pixel_size_um: float = 10.0
    # a vignette library (synth/organisms.py) whose organisms replace the drawn plankton and
    # detritus; which split of it (the same split as `train-classifier --library`)
    organisms: str | None = None
    organisms_split: Literal["all", "train", "held_out"] = "all"
    organisms_held_out: float = 0.2
    organisms_seed: int = 0
    library_pixel_size_um: float | None = None
    # a folder of the user's own frames drawn behind the objects (synth/backgrounds.py)
    backgrounds: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.n_frames < 0:
            raise ValueError(f"n_frames must be >= 0, got {self.n_frames}")
        if self.preset not in ("isiis", "uvp", "cfe"):
            raise ValueError(f"preset must be 'isiis', 'uvp' or 'cfe', got {self.preset!r}")
        if self.density not in ("sparse", "mixed", "dense"):
            raise ValueError(f"density must be 'sparse', 'mixed' or 'dense', got {self.density!r}")
        if self.plankton_share is not None and not 0.0 <= self.plankton_share <= 1.0:
            raise ValueError(f"plankton_share must be within [0, 1], got {self.plankton_share}")
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"size must be (height, width), each >= 16 px, got {self.size}")
        if self.organisms_split not in ("all", "train", "held_out"):
            raise ValueError(f"organisms_split must be all, train or held_out, got {self.organisms_split!r}")
        if self.frame_rate_hz <= 0 or self.pixel_size_um <= 0:
            raise ValueError("frame_rate_hz and pixel_size_um must be > 0")
        start = self.start_time if self.start_time.tzinfo else self.start_time.replace(tzinfo=UTC)
        start = start.astimezone(UTC)
        # names carry milliseconds: keep the clock on whole milliseconds
        object.__setattr__(self, "start_time", start.replace(microsecond=start.microsecond // 1000 * 1000))
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def pool(self):
        """The organism pool of ``organisms`` (read once per process), or None."""
        if self.organisms is None:
            return None
        from .organisms import load_pool

        return load_pool(self.organisms, self.organisms_split, self.organisms_seed, self.organisms_held_out,
                         self.pixel_size_um, self.library_pixel_size_um)

    def categories(self) -> list[dict]:
        """The COCO categories of the cruise's ground truth."""
        from .categories import CATEGORIES, NON_PLANKTON_IDS

        pool = self.pool()
        if pool is None:
            return [dict(c) for c in CATEGORIES]
        from .organisms import composed_categories

        return composed_categories(pool, [c for c in CATEGORIES if c["id"] in NON_PLANKTON_IDS])

    def truth_category(self, spec) -> int:
        """The ground-truth category id of a drawn object (ObjectSpec)."""
        pool = self.pool()
        if pool is None:
            return spec.category_id
        if spec.vignette >= 0:
            return int(pool.taxon[spec.vignette]) + 1
        from .categories import NAMES

        return _category_ids(self)[NAMES[spec.category_id]]

    def truth_category_by_name(self, name: str) -> int:
        return _category_ids(self)[name]

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    @property
    def area_factor(self) -> float:
        return self.height * self.width / REFERENCE_AREA

    @property
    def instrument_name(self) -> str:
        return {"isiis": "ISIIS", "uvp": "UVP", "cfe": "CFE_ISIIS"}[self.preset]

    @property
    def polarity(self) -> str:
        return "bright_on_dark" if self.preset == "uvp" else "dark_on_bright"

    @property
    def area_camera(self) -> bool:
        """An area-camera shadowgraph: radial vignetting, gain drift, JPEG frames."""
        return self.preset == "cfe"

    @property
    def frame_suffix(self) -> str:
        return ".jpg" if self.area_camera else ".png"

    @property
    def line_scan(self) -> bool:
        """ISIIS frames are consecutive cuts of one stream of lines; UVP frames are snapshots."""
        return self.preset == "isiis"

    def frame_offset_ms(self, k: int) -> int:
        return int(round(k * 1000.0 / self.frame_rate_hz))

    def frame_time(self, k: int) -> datetime:
        return self.start_time + timedelta(milliseconds=self.frame_offset_ms(k))

    def frame_seconds(self, k: int) -> float:
        """Seconds since start_time (what the environment model is a function of)."""
        return self.frame_offset_ms(k) / 1000.0

    def frame_name(self, k: int) -> str:
        t = self.frame_time(k)
        return f"{self.instrument_name}_{t:%Y%m%d_%H%M%S}_{t.microsecond // 1000:03d}{self.frame_suffix}"


@lru_cache(maxsize=8)
def _category_ids(cfg: SynthConfig) -> dict[str, int]:
    return {c["name"]: c["id"] for c in cfg.categories()}


def iso_z(t: datetime, ms: bool = True) -> str:
    """ISO-8601 UTC with a trailing Z (what every file of the cruise uses)."""
    t = t.astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z" if ms else f"{t:%Y-%m-%dT%H:%M:%S}Z"
