"""Navigation and depth records: UTC time → lat, lon, depth.

Positions are interpolated along the navigation track (CSV, or raw NMEA 0183 logs), depth
from the CTD: its depth column when it has one, otherwise its pressure converted with
TEOS-10 (``gsw.z_from_p``) at the ship's latitude. Times outside a record's coverage, or
inside a gap of it longer than ``max_gap_s``, give NaN, never a guess (the engine counts
the frames left without a position or depth from its frame tables, for the manifest).
Every time is UTC seconds since the epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .config import GeoConfig

log = logging.getLogger("segplank")
_NO_LAT_DEG = 45.0  # gsw needs a latitude; where the track has none, its effect on depth is < 0.3 %


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
        ok = np.isfinite(v)
        t, v = self.t[ok], v[ok]
        if len(t) == 0:
            return np.full(times.shape, np.nan)
        out = np.interp(times, t, v, left=np.nan, right=np.nan)
        if len(t) > 1:
            k = np.clip(np.searchsorted(t, times), 1, len(t) - 1)
            out[(t[k] - t[k - 1]) > max_gap_s] = np.nan
        return out

    def covers(self, times: np.ndarray, max_gap_s: float = 60.0) -> np.ndarray:
        """(N,) bool: times inside the record and not inside one of its gaps."""
        times = np.asarray(times, np.float64)
        if len(self.t) == 0:
            return np.zeros(times.shape, bool)
        inside = (times >= self.t[0]) & (times <= self.t[-1])
        if len(self.t) > 1:
            k = np.clip(np.searchsorted(self.t, times), 1, len(self.t) - 1)
            inside &= (self.t[k] - self.t[k - 1]) <= max_gap_s
        return inside

    @staticmethod
    def from_frame(df: pd.DataFrame, columns: dict[str, tuple[str, ...]], source: Path | None = None) -> "Track":
        """From a table with a tz-aware ``time`` column and the first present alias per column."""
        t = pd.to_datetime(df["time"], utc=True)
        secs = (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
        cols = {}
        for name, aliases in columns.items():
            hit = next((a for a in aliases if a in df.columns), None)
            if hit is not None:
                cols[name] = pd.to_numeric(df[hit], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(secs)
        order = np.argsort(secs[ok], kind="stable")
        return Track(secs[ok][order], {k: v[ok][order] for k, v in cols.items()}, source)

    @staticmethod
    def read_csv(path: Path, columns: dict[str, tuple[str, ...]]) -> "Track":
        """Read ``time`` (ISO 8601; naive times are taken as UTC) and the first present alias per column."""
        return Track.from_frame(read_time_csv(path, "(expected ISO-8601 UTC times)"), columns, Path(path))


def epoch_seconds(ts: list[datetime | None]) -> np.ndarray:
    return np.array([t.timestamp() if t is not None else np.nan for t in ts], np.float64)


@dataclass(frozen=True)
class Position:
    lat: np.ndarray
    lon: np.ndarray
    depth_m: np.ndarray


class Locator:
    """Callable stage: UTC times → ``Position``, from the cruise's navigation and CTD records."""

    NAV = {"lat": ("lat", "latitude", "Latitude", "LAT"), "lon": ("lon", "longitude", "Longitude", "LON")}
    CTD = {"depth_m": ("depth_m", "depth", "Depth"), "pressure_dbar": ("pressure_dbar", "pressure", "prdM", "Pressure"),
           "lat": ("lat",), "lon": ("lon",)}

    def __init__(self, nav: Track | None = None, ctd: Track | None = None, max_gap_s: float = 60.0) -> None:
        self.nav = nav
        self.ctd = ctd
        self.max_gap_s = max_gap_s

    @property
    def depth_source(self) -> str:
        if self.ctd is None:
            return "none"
        if "depth_m" in self.ctd.columns:
            return f"{self.ctd.source}: depth column"
        if "pressure_dbar" in self.ctd.columns:
            return f"{self.ctd.source}: pressure, TEOS-10 gsw.z_from_p at the track's latitude"
        return f"{self.ctd.source}: neither depth nor pressure"

    def describe(self) -> dict:
        return {"nav": str(self.nav.source) if self.nav else None, "ctd": str(self.ctd.source) if self.ctd else None,
                "depth_from": self.depth_source, "max_gap_s": self.max_gap_s}

    @classmethod
    def from_cruise(cls, cruise_dir: Path, cfg: GeoConfig | None = None) -> "Locator":
        """The first navigation and CTD files matching the config's patterns; a bad one is ignored with a warning."""
        cfg = cfg or GeoConfig()
        nav_path = _first(cruise_dir, cfg.nav)
        ctd_path = _first(cruise_dir, cfg.ctd)
        nav = ctd = None
        if nav_path is not None:
            try:
                nav = Track.from_frame(read_nav(nav_path), cls.NAV, nav_path)
            except Exception as e:  # a bad record must not stop the run
                log.warning("ignored navigation %s: %s (positions will be NaN)", nav_path, e)
        if ctd_path is not None:
            ctd = _ctd_track(ctd_path, cls.CTD)
        if nav is None and ctd is not None and {"lat", "lon"} <= set(ctd.columns):
            nav = ctd  # a CTD that logs its own position
        return cls(nav, ctd, cfg.max_gap_s)

    def __call__(self, times: np.ndarray) -> Position:
        times = np.asarray(times, np.float64)
        nan = np.full(times.shape, np.nan)
        lat = self.nav.at(times, "lat", self.max_gap_s) if self.nav and "lat" in self.nav.columns else nan
        lon = self.nav.at(times, "lon", self.max_gap_s) if self.nav and "lon" in self.nav.columns else nan
        depth = nan
        if self.ctd is not None:
            if "depth_m" in self.ctd.columns:
                depth = self.ctd.at(times, "depth_m", self.max_gap_s)
            elif "pressure_dbar" in self.ctd.columns:
                depth = pressure_to_depth(self.ctd.at(times, "pressure_dbar", self.max_gap_s), lat, self._mean_lat())
        return Position(lat, lon, depth)

    def _mean_lat(self) -> float:
        if self.nav is not None and "lat" in self.nav.columns and np.isfinite(self.nav.columns["lat"]).any():
            return float(np.nanmean(self.nav.columns["lat"]))
        return _NO_LAT_DEG


def _ctd_track(path: Path, columns: dict[str, tuple[str, ...]]) -> Track | None:
    """The CTD record as a track, its reader's warnings logged once each (rows it skipped are
    depths lost, and the run's manifest keeps what is logged); None, with one line, for a file
    that cannot give depths by time, so that its frames are not later called outside the record."""
    from .ctd import read_ctd

    try:
        record = read_ctd(path)
    except Exception as e:  # a bad record must not stop the run
        log.warning("ignored CTD %s: %s (depths will be NaN)", path, e)
        return None
    times = record.data["time"]
    if times.isna().all():
        what = ("no time column" if record.time_source == "none" else
                f"no readable time in its {record.time_source}" if len(times) else "no rows")
        hint = ("add timeS or timeQ in SBE Data Conversion" if path.suffix.lower() == ".cnv" else
                "add a 'time' column (ISO 8601 UTC) or 'timestamp' (epoch seconds)")
        log.warning("ignored CTD %s: %s, so no depth by time (%s); depths will be NaN", path, what, hint)
        return None
    for w in record.warnings:
        log.warning("%s: %s", path, w)
    return Track.from_frame(record.data, columns, path)


def pressure_to_depth(p_dbar: np.ndarray, lat: np.ndarray, fallback_lat: float = _NO_LAT_DEG) -> np.ndarray:
    """Depth (m, positive down) from sea pressure with TEOS-10, at each sample's latitude."""
    import gsw

    lat = np.where(np.isfinite(lat), lat, fallback_lat)
    return -gsw.z_from_p(np.asarray(p_dbar, np.float64), lat)


def read_nav(path: Path) -> pd.DataFrame:
    """Navigation as a table of UTC ``time``, ``lat``, ``lon``: CSV, or raw NMEA 0183 sentences."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"$" in head and any(k in head for k in (b"GGA,", b"RMC,", b"GLL,", b"ZDA,")):
        from .nmea import read_nmea

        return read_nmea(path)
    return read_time_csv(path, "(expected ISO-8601 UTC times), and no NMEA sentences")


def read_time_csv(path: Path, missing: str) -> pd.DataFrame:
    """A CSV table with an ISO-8601 ``time`` column (naive times are UTC). Rows whose time
    does not read are skipped with one line naming them, the rest is used: one garbage row
    must not cost the whole record. ``missing``: what the error says when there is no time column."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"time": str}, skipinitialspace=True)
    except pd.errors.ParserError:  # a row with too many fields: read again, row by row, without it
        extra: list[list[str]] = []
        df = pd.read_csv(path, dtype={"time": str}, skipinitialspace=True, engine="python",
                         on_bad_lines=lambda fields: extra.append(fields))
        log.warning("%s: %d row(s) with more fields than the header skipped (e.g. %s)", path, len(extra),
                    ",".join(extra[0])[:80])
    if "time" not in df.columns:
        raise ValueError(f"{path}: no 'time' column {missing}")
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(df["time"].isna().to_numpy())
    if len(bad):
        lines = ", ".join(str(i + 2) for i in bad[:10]) + (", …" if len(bad) > 10 else "")  # line 1: the header
        log.warning("%s: %d row(s) with an unreadable time skipped (line %s)", path, len(bad), lines)
        df = df.drop(index=df.index[bad]).reset_index(drop=True)
    return df


def _first(root: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        hits = sorted(p for p in Path(root).glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    return None
