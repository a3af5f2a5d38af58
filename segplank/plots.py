"""Figures and rasters from concentration tables: vertical profile, track map, section GeoTIFF.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot, so no
global figure state leaks between calls or threads and no display is needed (Ray workers,
servers).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import Affine
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segplank.concentration import track_concentrations

CONC_LABEL = "Concentration (ind. m⁻³)"
# unit suffixes of ctd_<name>_<unit> columns, as written on an axis
UNITS = {"c": "°C", "degc": "°C", "psu": "PSU", "mg_m3": "mg m⁻³", "ug_l": "µg L⁻¹", "umol_kg": "µmol kg⁻¹",
         "umol_l": "µmol L⁻¹", "ml_l": "mL L⁻¹", "mg_l": "mg L⁻¹", "m": "m", "dbar": "dbar"}


def _save(fig: Figure, path: Path) -> Path:
    """Write a figure through its own Agg canvas (no pyplot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_figure(str(path), dpi=150)
    return path


def _ctd_columns(conc: pd.DataFrame, names: Sequence[str]) -> list[tuple[str, str]]:
    """(column, axis label) of every ``mean_ctd_<name>…`` column, in the order of ``names``."""
    found = []
    for name in names:
        for col in conc.columns:
            if col.startswith(f"mean_ctd_{name}"):
                suffix = col.removeprefix(f"mean_ctd_{name}").strip("_")
                unit = UNITS.get(suffix.lower(), suffix)
                found.append((col, f"{name.capitalize()} ({unit})" if unit else name.capitalize()))
    return found


def _depth_grid(conc: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous depth-bin edges covering the table, and each row's bin index on them (gaps stay gaps)."""
    dz = float((conc["depth_max_m"] - conc["depth_min_m"]).iloc[0])
    z0 = float(conc["depth_min_m"].min())
    pos = np.rint((conc["depth_min_m"].to_numpy() - z0) / dz).astype(int)
    return z0 + dz * np.arange(pos.max() + 2), pos


def _on_grid(values: pd.Series, pos: np.ndarray, n: int) -> np.ndarray:
    grid = np.full(n, np.nan)
    grid[pos] = values.to_numpy(np.float64)
    return grid


def profile_figure(conc: pd.DataFrame, path: Path, *, ctd: Sequence[str] = ("fluorescence", "oxygen"),
                   log_x: bool = False, title: str = "Plankton concentration per depth bin",
                   most_taxa: int = 8) -> Path:
    """Vertical profile PNG: one panel per taxon (concentration as steps over depth bins, so no
    taxon hides another), the sampling effort per bin (frames, litres), and the bin means of
    the CTD variables named in ``ctd`` (those with a ``mean_ctd_<name>…`` column).

    Depth increases downwards; depth bins without frames are drawn as gaps, not zeros (with
    ``log_x`` zeros cannot be drawn either). The ``most_taxa`` most abundant taxa get panels;
    the figure says how many others the table holds. Takes a depth-only table from
    ``concentrations`` (no distance bins: pool them first).
    """
    if conc.empty:
        raise ValueError("no concentration rows to plot")
    if "distance_min_km" in conc.columns:
        raise ValueError("profile_figure takes a depth-only table (concentrations without distance_bin_m)")
    conc = conc.reset_index(drop=True)  # row labels = positions in ``pos``
    edges, pos = _depth_grid(conc)
    columns = _ctd_columns(conc, ctd)
    ranked = conc.groupby("taxon")["count"].sum().sort_values(ascending=False, kind="stable")
    taxa = list(ranked.index[:most_taxa])
    n = len(taxa) + 1 + len(columns)
    fig = Figure(figsize=(1.2 + 2.1 * n, 6.2), layout="constrained")
    axes: list[Axes] = list(fig.subplots(1, n, sharey=True, squeeze=False)[0])

    for ax, taxon in zip(axes, taxa):
        rows = conc[conc["taxon"] == taxon]
        values = _on_grid(rows["concentration_ind_m3"], pos[rows.index], len(edges) - 1)
        ax.stairs(values, edges, orientation="horizontal", linewidth=1.5, baseline=None)
        if log_x:
            ax.set_xscale("log")
        else:
            ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(3))  # a narrow panel: large concentrations must not run together
        ax.set_title(f"{taxon}\n(n = {int(ranked[taxon])})", fontsize="medium")
        ax.set_xlabel(CONC_LABEL, fontsize="small")
    axes[0].set_ylabel("Depth (m)")

    per_bin = conc.drop_duplicates("depth_min_m")
    mids = (edges[:-1] + edges[1:]) / 2
    effort = axes[len(taxa)]
    effort.barh(mids[pos[per_bin.index]], per_bin["frames"], height=0.9 * (edges[1] - edges[0]), color="0.75")
    effort.set_xlabel("Frames per bin", fontsize="small")
    effort.set_title("Sampling effort", fontsize="medium")
    if "volume_per_frame_l" in per_bin.columns:  # the same bars in litres imaged
        v = float(per_bin["volume_per_frame_l"].iloc[0])
        litres = effort.secondary_xaxis("top", functions=(lambda f: f * v, lambda l: l / v))
        litres.set_xlabel("Litres imaged", fontsize="small")
    for ax, (col, label) in zip(axes[len(taxa) + 1:], columns):
        ax.plot(_on_grid(per_bin[col], pos[per_bin.index], len(mids)), mids, marker="o", markersize=3)
        ax.set_xlabel(label, fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_ylim(edges[-1], edges[0])  # depth downwards
    dz = edges[1] - edges[0]
    others = len(ranked) - len(taxa)
    fig.suptitle(f"{title}\n{dz:g} m depth bins, {int(per_bin['frames'].sum())} frames"
                 + (f"; {others} less abundant taxa in the table, not drawn" if others > 0 else ""))
    return _save(fig, path)


def track_map(frames: pd.DataFrame, objects: pd.DataFrame, path: Path, *, volume_per_frame_l: float,
              distance_bin_km: float = 1.0, title: str = "Plankton concentration along the track") -> Path:
    """Map PNG of the frames' track (lon, lat), each distance bin coloured by its plankton concentration.

    Plain axes (no map projection), with the aspect set to 1/cos(mean latitude) so that a km
    east looks as long as a km north near the track.
    """
    bins = track_concentrations(objects, frames, volume_per_frame_l, distance_bin_km=distance_bin_km)
    if bins.empty:
        raise ValueError("no frame with a position inside the track: nothing to map")
    track = frames.sort_values("time")
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(track["lon"], track["lat"], color="0.7", linewidth=1, zorder=1)
    dots = ax.scatter(bins["lon"], bins["lat"], c=bins["concentration_ind_m3"], cmap="viridis", s=30, zorder=2)
    fig.colorbar(dots, ax=ax, label=f"Plankton (ind. m⁻³), {distance_bin_km:g} km bins")
    ax.set_aspect(1 / np.cos(np.radians(np.nanmean(bins["lat"]))), adjustable="datalim")
    ax.ticklabel_format(useOffset=False, style="plain")  # degrees as degrees, not "+4.312e1"
    ax.xaxis.set_major_locator(MaxNLocator(4))  # long labels of a short track must not overlap
    ax.set_xlabel("Longitude (°E)")
    ax.set_ylabel("Latitude (°N)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def section_geotiff(conc_2d: pd.DataFrame, path: Path, *, taxon: str) -> Path:
    """Write one taxon's distance × depth concentration section as a single-band float32 GeoTIFF.

    A section is not a geographic raster, so it has NO CRS: the affine transform maps pixel
    (col, row) to x = along-track distance (km) and y = depth (m), with the origin at the
    top-left corner (the shallowest bin of the first distance bin), pixel width = distance
    bin (km), pixel height = depth bin (m), positive because depth increases downwards (rows
    run down the water column). Bins without frames are NaN (the nodata value); bins with
    frames and no object are 0. Tags on the dataset (``units``, ``taxon``,
    ``distance_bin_km``, ``depth_bin_m``, ``x_axis``, ``y_axis``, ``crs``) say all this to
    whoever opens the file; GIS tools will show it on an arbitrary, ungeoreferenced plane.
    """
    if not {"distance_min_km", "depth_min_m"} <= set(conc_2d.columns):
        raise ValueError("section_geotiff needs distance and depth bins (concentrations with distance_bin_m)")
    rows = conc_2d[conc_2d["taxon"] == taxon]
    if rows.empty:
        raise ValueError(f"no rows for taxon {taxon!r}; taxa here: {sorted(conc_2d['taxon'].unique())}")
    dx = float((rows["distance_max_km"] - rows["distance_min_km"]).iloc[0])
    dz = float((rows["depth_max_m"] - rows["depth_min_m"]).iloc[0])
    x0, z0 = float(rows["distance_min_km"].min()), float(rows["depth_min_m"].min())
    col = np.rint((rows["distance_min_km"].to_numpy() - x0) / dx).astype(int)
    row = np.rint((rows["depth_min_m"].to_numpy() - z0) / dz).astype(int)
    grid = np.full((row.max() + 1, col.max() + 1), np.nan, np.float32)
    grid[row, col] = rows["concentration_ind_m3"].to_numpy(np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=grid.shape[1], height=grid.shape[0], count=1, dtype="float32",
                   nodata=np.nan, transform=Affine(dx, 0.0, x0, 0.0, dz, z0), compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(grid, 1)
        dst.update_tags(units="ind m-3", taxon=taxon, distance_bin_km=f"{dx:g}", depth_bin_m=f"{dz:g}",
                        x_axis="along-track distance (km) from the track's first frame",
                        y_axis="depth (m), increasing downwards (positive pixel height)",
                        crs="none: a distance x depth section, not a map")
        dst.set_band_description(1, f"{taxon} concentration (ind m-3)")
        dst.update_tags(1, units="ind m-3")
    return path
