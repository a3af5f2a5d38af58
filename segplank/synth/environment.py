"""The ocean the synthetic instrument is towed through: ship track, tow-yo depth, CTD.

Everything is a smooth function of time (seconds since the cruise start) drawn once from
the seed, so the frame renderer can ask the depth of any frame (plankton is commoner
near the chlorophyll maximum) and the CSV writers can sample the very same curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .params import STREAM_ENV, STREAM_ENV_NOISE, rng_for

DEPTH_MIN_M, DEPTH_MAX_M = 2.0, 120.0
_M_PER_DEG_LAT = 111_320.0


def saunders_pressure_dbar(depth_m: np.ndarray, lat_deg: np.ndarray | float) -> np.ndarray:
    """Pressure from depth, Saunders (1981) / UNESCO: within ~0.1 % of TEOS-10 (no gsw here)."""
    c1 = (5.92 + 5.25 * np.sin(np.radians(lat_deg)) ** 2) * 1e-3
    return ((1 - c1) - np.sqrt((1 - c1) ** 2 - 8.84e-6 * np.asarray(depth_m))) / 4.42e-6


def _triangle(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with rounded turns (its first three harmonics, rescaled)."""
    s = np.cos(x) + np.cos(3 * x) / 9 + np.cos(5 * x) / 25
    top = 1 + 1 / 9 + 1 / 25
    return (top - s) / (2 * top)


@dataclass(frozen=True)
class Environment:
    """Track, tow-yo and water-column parameters of one cruise (all drawn from the seed)."""

    seed: int
    lat0: float
    lon0: float
    heading0: float  # degrees
    speed: float  # m/s through the water, ~2.5 (5 knots)
    yo_period: float  # s, one down-and-up cycle
    yo_phase: float
    t_surf: float
    t_deep: float
    z_tc: float  # thermocline depth, m
    w_tc: float
    s_surf: float
    s_deep: float
    f_max: float
    z_dcm_offset: float
    o_surf: float

    @classmethod
    def for_seed(cls, seed: int) -> "Environment":
        r = rng_for(seed, STREAM_ENV)
        return cls(
            seed=seed, lat0=43.4 + r.uniform(-0.3, 0.3), lon0=7.6 + r.uniform(-0.3, 0.3),
            heading0=r.uniform(0, 360), speed=r.uniform(2.3, 2.7), yo_period=r.uniform(240, 420),
            yo_phase=r.uniform(0, 2 * np.pi), t_surf=r.uniform(19, 23), t_deep=r.uniform(13, 14.5),
            z_tc=r.uniform(20, 35), w_tc=r.uniform(5, 10), s_surf=r.uniform(37.6, 38.0),
            s_deep=r.uniform(38.4, 38.6), f_max=r.uniform(0.6, 1.5), z_dcm_offset=r.uniform(15, 30),
            o_surf=r.uniform(228, 245),
        )

    # --- depth -------------------------------------------------------------------------
    def depth_m(self, seconds: np.ndarray | float) -> np.ndarray:
        """Tow-yo between 2 and 120 m, near-constant vertical speed, period of a few minutes."""
        x = 2 * np.pi * np.asarray(seconds, dtype=np.float64) / self.yo_period + self.yo_phase
        return DEPTH_MIN_M + (DEPTH_MAX_M - DEPTH_MIN_M) * _triangle(x)

    def dcm_depth(self, seconds: np.ndarray | float) -> np.ndarray:
        return self.thermocline(seconds) + self.z_dcm_offset

    def thermocline(self, seconds: np.ndarray | float) -> np.ndarray:
        """Thermocline depth, heaved by a slow internal wave."""
        return self.z_tc + 4.0 * np.sin(2 * np.pi * np.asarray(seconds, dtype=np.float64) / 1500.0 + self.yo_phase)

    # --- ship track --------------------------------------------------------------------
    def track(self, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """lat, lon at regularly spaced times, dead-reckoned from the first of them."""
        t = np.asarray(seconds, dtype=np.float64)
        if t.size == 0:
            return t.copy(), t.copy()
        heading = np.radians(self.heading0 + 12 * np.sin(2 * np.pi * t / 1800 + self.yo_phase))
        speed = self.speed + 0.15 * np.sin(2 * np.pi * t / 600 + 1.3 * self.yo_phase)
        dt = np.diff(t, prepend=t[0])
        north = np.cumsum(speed * np.cos(heading) * dt)
        east = np.cumsum(speed * np.sin(heading) * dt)
        # the track passes (lat0, lon0) at the cruise start (t = 0)
        north -= np.interp(0.0, t, north)
        east -= np.interp(0.0, t, east)
        lat = self.lat0 + north / _M_PER_DEG_LAT
        lon = self.lon0 + east / (_M_PER_DEG_LAT * math.cos(math.radians(self.lat0)))
        return lat, lon

    # --- CTD ---------------------------------------------------------------------------
    def ctd(self, seconds: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
        """Mixed layer over a thermocline, deep chlorophyll maximum, O2 falling with depth."""
        t = np.asarray(seconds, dtype=np.float64)
        z = self.depth_m(t)
        noise = rng_for(self.seed, STREAM_ENV_NOISE).standard_normal((4, t.size))
        tc = self.thermocline(t)
        temp = self.t_deep + (self.t_surf - self.t_deep) * 0.5 * (1 - np.tanh((z - tc) / self.w_tc))
        sal = self.s_surf + (self.s_deep - self.s_surf) * 0.5 * (1 + np.tanh((z - tc - 15) / 12))
        fluo = 0.04 + self.f_max * np.exp(-(((z - tc - self.z_dcm_offset) / 12) ** 2)) + 0.1 * np.exp(-z / 15)
        oxy = self.o_surf * (1 - 0.0015 * z)
        return {
            "pressure_dbar": saunders_pressure_dbar(z, lat),
            "depth_m": z,
            "temperature_c": temp + 0.004 * noise[0],
            "salinity_psu": sal + 0.002 * noise[1],
            "fluorescence_mg_m3": np.maximum(fluo + 0.015 * noise[2], 0.0),
            "oxygen_umol_kg": oxy + 0.4 * noise[3],
        }

    def plankton_weight(self, seconds: float) -> float:
        """0..1, highest near the chlorophyll maximum: scales the plankton share with depth."""
        z = float(self.depth_m(seconds))
        return math.exp(-(((z - float(self.dcm_depth(seconds))) / 30.0) ** 2))
