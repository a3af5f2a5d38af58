"""Navigation and depth records: UTC time → lat, lon, depth.

A first, CSV-only version (the georeferencing issue adds NMEA, Sea-Bird .cnv and TEOS-10
pressure-to-depth). Times outside a record's coverage give NaN, never a guess.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("segplank")


@dataclass(frozen=True)
class Track:
    """Columns sampled at increasing UTC times (seconds since the epoch)."""

    t: np.ndarray
    columns: dict[str, np.ndarray]
    source: Path | None = None

    def at(self, times: np.ndarray, name: str, max_gap_s: float = 60.0) -> np.ndarray:
        """Linear interpolation; NaN outside the record or across gaps longer than ``max_gap_s``."""
        times = np.asarray(times, np.float64)
        v = self.columns[name]
        out = np.interp(times, self.t, v, left=np.nan, right=np.nan)
        k = np.clip(np.searchsorted(self.t, times), 1, max(1, len(self.t) - 1))
        if len(self.t) > 1:
            gap = self.t[k] - self.t[k - 1]
            out[gap > max_gap_s] = np.nan
        return out

    @staticmethod
    def read_csv(path: Path, columns: dict[str, tuple[str, ...]]) -> "Track":
        """Read ``time`` (ISO 8601; naive times are taken as UTC) and the first present alias per column."""
        df = pd.read_csv(path)
        if "time" not in df.columns:
            raise ValueError(f"{path}: no 'time' column (expected ISO-8601 UTC times)")
        t = pd.to_datetime(df["time"], utc=True, format="ISO8601")
        secs = (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
        cols = {}
        for name, aliases in columns.items():
            hit = next((a for a in aliases if a in df.columns), None)
            if hit is not None:
                cols[name] = df[hit].to_numpy(np.float64)
        order = np.argsort(secs, kind="stable")
        return Track(secs[order], {k: v[order] for k, v in cols.items()}, Path(path))


def epoch_seconds(ts: list[datetime | None]) -> np.ndarray:
    return np.array([t.timestamp() if t is not None else np.nan for t in ts], np.float64)


class Locator:
    """Callable stage: times → (lat, lon, depth_m), from the cruise's nav and CTD CSVs if present."""

    NAV = {"lat": ("lat", "latitude"), "lon": ("lon", "longitude")}
    CTD = {"depth_m": ("depth_m", "depth"), "pressure_dbar": ("pressure_dbar", "pressure")}

    def __init__(self, nav: Track | None = None, ctd: Track | None = None) -> None:
        self.nav = nav
        self.ctd = ctd

    @classmethod
    def from_cruise(cls, cruise_dir: Path) -> "Locator":
        def first(pattern: str) -> Path | None:
            hits = sorted(Path(cruise_dir).glob(pattern))
            return hits[0] if hits else None

        nav_path, ctd_path = first("nav*.csv"), first("ctd*.csv")
        nav = ctd = None
        try:
            nav = Track.read_csv(nav_path, cls.NAV) if nav_path else None
        except Exception as e:  # a bad nav file must not stop the run
            log.warning("ignored navigation %s: %s (positions will be NaN)", nav_path, e)
        try:
            ctd = Track.read_csv(ctd_path, cls.CTD) if ctd_path else None
        except Exception as e:
            log.warning("ignored CTD %s: %s (depths will be NaN)", ctd_path, e)
        return cls(nav, ctd)

    def __call__(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nan = np.full(len(times), np.nan)
        lat = self.nav.at(times, "lat") if self.nav and "lat" in self.nav.columns else nan
        lon = self.nav.at(times, "lon") if self.nav and "lon" in self.nav.columns else nan
        depth = nan
        if self.ctd is not None:
            if "depth_m" in self.ctd.columns:
                depth = self.ctd.at(times, "depth_m")
            elif "pressure_dbar" in self.ctd.columns:  # ~1 dbar per metre near the surface
                depth = self.ctd.at(times, "pressure_dbar")
        return lat, lon, depth
