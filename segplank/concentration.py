"""Concentrations of plankton per taxon and depth (and along-track distance) bin.

The water sampled is counted from the frames actually processed (skipped frames imaged no
water we looked at), so a bin's concentration is the objects found in it divided by the
volume imaged in it. A bin with frames but no object of a taxon is a measured zero and is
kept as a row: an absence is data.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius: 1° of latitude ≈ 111.195 km

Taxa = Literal["plankton", "all"] | Sequence[str]


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance (km) between points given in degrees, element-wise."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def epoch_s(times: pd.Series) -> np.ndarray:
    """UTC times as float seconds since the epoch (NaT → NaN), for interpolation."""
    t = pd.to_datetime(times, utc=True)
    return (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)


def along_track_km(track: pd.DataFrame, times: pd.Series) -> np.ndarray:
    """Distance (km) run along ``track`` (``time``, ``lat``, ``lon``) at ``times``.

    The track is ordered by time and summed leg by leg (haversine); track points without a
    position are left out of it. Times outside the track's span get NaN, never a guess.
    """
    t = epoch_s(track["time"])
    lat, lon = track["lat"].to_numpy(np.float64), track["lon"].to_numpy(np.float64)
    ok = np.isfinite(t) & np.isfinite(lat) & np.isfinite(lon)
    if not ok.any():
        return np.full(len(times), np.nan)
    order = np.argsort(t[ok], kind="stable")
    t, lat, lon = t[ok][order], lat[ok][order], lon[ok][order]
    run = np.concatenate([[0.0], np.cumsum(haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:]))])
    return np.interp(epoch_s(times), t, run, left=np.nan, right=np.nan)


def _bin_min(values: np.ndarray, size: float) -> np.ndarray:
    """Lower edge of the bin of width ``size`` (aligned on 0) holding each value; NaN stays NaN."""
    return np.round(np.floor(values / size) * size, 9)


def _with_bins(table: pd.DataFrame, track: pd.DataFrame, depth_bin_m: float,
               distance_bin_m: float | None) -> tuple[pd.DataFrame, int]:
    """``table`` with its bins' lower edges added, rows that fall in no bin dropped, and their number."""
    out = table.assign(depth_min_m=_bin_min(table["depth_m"].to_numpy(np.float64), depth_bin_m))
    keys = ["depth_min_m"]
    if distance_bin_m is not None:
        out["distance_min_km"] = _bin_min(along_track_km(track, table["time"]), distance_bin_m / 1000)
        keys.append("distance_min_km")
    kept = out.dropna(subset=keys)
    return kept, len(out) - len(kept)


def _select_taxa(objects: pd.DataFrame, taxa: Taxa) -> tuple[pd.DataFrame, list[str]]:
    """The objects to count and the taxon names that get a row in every bin."""
    if not isinstance(taxa, str):
        return objects[objects["label_name"].isin(list(taxa))], sorted(set(taxa))
    if taxa == "all":
        chosen = objects
    elif taxa == "plankton":
        chosen = objects[objects["is_plankton"].astype(bool)]
    else:
        raise ValueError(f"taxa must be 'plankton', 'all' or a list of names, not {taxa!r}")
    return chosen, sorted(chosen["label_name"].dropna().unique())


def _require_volume(volume_per_frame_l: float | None) -> None:
    """Every concentration scales with the volume: an unstated one is refused, never assumed."""
    if volume_per_frame_l is None:
        raise ValueError("no volume per frame stated: set instrument.volume_per_frame_l in the config or "
                         "cruise.yaml, or pass --volume-per-frame L")


def _require(table: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} table lacks column(s) {missing}")


def concentrations(objects: pd.DataFrame, frames: pd.DataFrame, volume_per_frame_l: float | None, *,
                   depth_bin_m: float = 5.0, distance_bin_m: float | None = None,
                   taxa: Taxa = "plankton") -> pd.DataFrame:
    """Objects per m³ per taxon and depth bin (and along-track distance bin if ``distance_bin_m``).

    Bins are aligned on 0 (depth [0, 5), [5, 10) … m; distance from the first frame's
    position), lower edge included. Objects fall in the bin of their own depth and time; a
    bin's volume is (processed frames in it) × ``volume_per_frame_l`` / 1000 (None, not stated:
    ValueError; the value is a column of the table). Only bins that
    hold frames get rows, each with every taxon (count 0 where none was seen). ``taxa`` is
    "plankton" (``is_plankton`` objects), "all", or explicit names (so that a taxon absent from
    this cruise still gets its zeros). Frames and objects with NaN depth (or outside the track,
    for distance bins) are left out and counted in ``attrs["excluded_frames"]`` and
    ``attrs["excluded_objects"]``; objects in a bin without frames (no volume to divide by) in
    ``attrs["unbinned_objects"]``.
    """
    _require_volume(volume_per_frame_l)
    if volume_per_frame_l <= 0 or depth_bin_m <= 0 or (distance_bin_m is not None and distance_bin_m <= 0):
        raise ValueError("volume_per_frame_l, depth_bin_m and distance_bin_m must be positive")
    _require(frames, "frames", ["time", "lat", "lon", "depth_m"])
    _require(objects, "objects", ["time", "depth_m", "label_name", "is_plankton"])
    keys = ["distance_min_km", "depth_min_m"] if distance_bin_m is not None else ["depth_min_m"]
    ctd = [c for c in frames.columns if c.startswith("ctd_")]

    f, excluded_frames = _with_bins(frames, frames, depth_bin_m, distance_bin_m)
    chosen, names = _select_taxa(objects, taxa)
    o, excluded_objects = _with_bins(chosen, frames, depth_bin_m, distance_bin_m)

    bins = f.groupby(keys)[ctd].mean().add_prefix("mean_").assign(frames=f.groupby(keys).size()).reset_index()
    counts = o.groupby(keys + ["label_name"], observed=True).size().rename("count").reset_index()
    counts = counts.rename(columns={"label_name": "taxon"})
    inside = counts.merge(bins[keys], on=keys, how="inner")["count"].sum()

    out = bins.merge(pd.DataFrame({"taxon": pd.Series(names, dtype=object)}), how="cross")
    out = out.merge(counts, on=keys + ["taxon"], how="left")
    out["count"] = out["count"].fillna(0).astype(np.int64)
    out["depth_max_m"] = np.round(out["depth_min_m"] + depth_bin_m, 9)
    edges = ["depth_min_m", "depth_max_m"]
    if distance_bin_m is not None:
        out["distance_max_km"] = np.round(out["distance_min_km"] + distance_bin_m / 1000, 9)
        edges += ["distance_min_km", "distance_max_km"]
    out["volume_per_frame_l"] = float(volume_per_frame_l)  # in the table: a CSV read alone says what it assumed
    out["volume_m3"] = out["frames"] * volume_per_frame_l / 1000
    out["concentration_ind_m3"] = out["count"] / out["volume_m3"]
    out = out[edges + ["taxon", "count", "frames", "volume_per_frame_l", "volume_m3", "concentration_ind_m3"]
              + [f"mean_{c}" for c in ctd]]
    out = out.sort_values(keys + ["taxon"], ignore_index=True)
    out.attrs.update(excluded_frames=int(excluded_frames), excluded_objects=int(excluded_objects),
                     unbinned_objects=int(len(o) - inside), depth_bin_m=float(depth_bin_m),
                     distance_bin_m=None if distance_bin_m is None else float(distance_bin_m),
                     volume_per_frame_l=float(volume_per_frame_l))
    return out


def track_concentrations(objects: pd.DataFrame, frames: pd.DataFrame, volume_per_frame_l: float | None, *,
                         distance_bin_km: float = 1.0) -> pd.DataFrame:
    """Plankton per m³ (all depths, all plankton taxa) per along-track distance bin, for a map.

    One row per bin holding frames: ``distance_min_km``, ``distance_max_km``, ``lat``, ``lon``
    (mean of its frames' positions), ``count``, ``frames``, ``volume_m3``,
    ``concentration_ind_m3``. Depth plays no part, so frames without depth still count.
    """
    _require_volume(volume_per_frame_l)
    if volume_per_frame_l <= 0 or distance_bin_km <= 0:
        raise ValueError("volume_per_frame_l and distance_bin_km must be positive")
    plankton = objects[objects["is_plankton"].astype(bool)]
    f = frames.assign(distance_min_km=_bin_min(along_track_km(frames, frames["time"]), distance_bin_km))
    o_bin = _bin_min(along_track_km(frames, plankton["time"]), distance_bin_km)
    g = f.dropna(subset=["distance_min_km"]).groupby("distance_min_km")
    out = g[["lat", "lon"]].mean().assign(frames=g.size())
    out["count"] = pd.Series(o_bin).value_counts().reindex(out.index, fill_value=0).astype(np.int64)
    out = out.reset_index()
    out.insert(1, "distance_max_km", np.round(out["distance_min_km"] + distance_bin_km, 9))
    out["volume_m3"] = out["frames"] * volume_per_frame_l / 1000
    out["concentration_ind_m3"] = out["count"] / out["volume_m3"]
    return out[["distance_min_km", "distance_max_km", "lat", "lon", "count", "frames", "volume_m3",
                "concentration_ind_m3"]]
