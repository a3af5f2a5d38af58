"""CTD records (Sea-Bird .cnv or CSV) as one table, and their join to objects by UTC time.

``read_ctd`` returns a ``CtdRecord``: a table with a UTC ``time`` column, canonical columns
where the file has them (``pressure_dbar``, ``depth_m``, ``temperature_c``, ``salinity_psu``,
``conductivity``, ``fluorescence_mg_m3``, ``oxygen_umol_kg``/``oxygen_ml_l``/``oxygen_mg_l``/
``oxygen_umol_l``, ``lat``, ``lon``), every other column under a sanitised name, the units, and
what a user should know (``warnings``). A column whose stated unit contradicts a canonical name
keeps its own name. Only the primary Sea-Bird sensor set (``t090C``, ``sal00``, ``sbeox0…``) takes
canonical names; the secondary (``t190C``, ``sal11``, ``sbeox1…``) keeps its own.

Which time wins (.cnv)
----------------------
A .cnv can carry several clocks, and parsers disagree on which to use (seabird, pycnv and
ctd/python-ctd each pick differently, or none). Ours, for ``time_source="auto"``:

1. an absolute time column: ``timeQ`` (NMEA, s since 2000), ``timeN`` (NMEA, s since 1970),
   ``timeY`` (computer clock, s since 1970), ``timeK`` (instrument clock, s since 2000);
2. the header's ``NMEA UTC (Time)`` + elapsed time (``timeS``, ``timeM`` or ``timeH``);
3. the header's ``start_time`` + elapsed time;
4. ``timeJ``/``timeJV2`` (day of year, 1.0 = 1 January 00:00) with the year from ``NMEA UTC``
   or ``start_time``, rolled over at New Year.

GPS beats the computer clock, which beats the drifting instrument clock. Elapsed time counts
from the first scan of the raw file, as both header times do, so ``t = header + timeS`` (not
``- timeS[0]``: a processed file may start later). ``"nmea"`` keeps only GPS sources (timeQ,
timeN, NMEA UTC + elapsed), ``"start_time"`` only those built on ``start_time``; either raises
``CtdError`` when the file has none. ``tz`` is the zone of the clocks that are not UTC by
construction: ``timeK``, ``timeJ``/``timeJV2`` and ``start_time`` unless its note says NMEA or
UTC, and naive CSV times.

Why an own .cnv parser
----------------------
Tried on tests/data/ctd (2026): ctd (python-ctd 1.5) raises on ``NMEA UTC (Time) = none``,
shifts a row whose fields run together into the wrong columns, and keeps bad_flag values and a
stray text line as data; pycnv 0.5 stops with a locale error on the Latin-1 header and rejects
files without ``file_type``; seabird 0.12 imports on Python 3.11 where setuptools is installed
(it needs ``pkg_resources``) but refuses absolute.cnv and julian.cnv ("no rules able to parse
the input"; re-checked 2026-12-03). The
format is simple enough that a careful parser is shorter than working around them.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import pandas as pd

TimeSource = Literal["auto", "nmea", "start_time"]
_TIME_SOURCES = ("auto", "nmea", "start_time")
_FIELD_WIDTH = 11  # every value of a Sea-Bird ASCII .cnv is right-aligned in 11 characters
_MAX_LISTED = 10


class CtdError(Exception):
    """A CTD file that cannot be used; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class CtdRecord:
    """One CTD file as a table with a UTC ``time`` column (NaT where the file has no time)."""

    data: pd.DataFrame
    source: Path
    time_source: str  # e.g. 'timeS+NMEA UTC', 'timeQ', 'csv time column', 'none'
    warnings: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    position: tuple[float, float] | None = None  # (lat, lon) of the .cnv header's NMEA lines: the cast start


def read_ctd(path: Path, *, time_source: TimeSource = "auto", tz: str = "UTC") -> CtdRecord:
    """Sea-Bird .cnv, or .csv/.tsv/.txt with a time column; ``time_source`` applies to .cnv only."""
    path = Path(path)
    if time_source not in _TIME_SOURCES:
        raise ValueError(f"time_source must be one of {_TIME_SOURCES}, got {time_source!r}")
    suffix = path.suffix.lower()
    if suffix not in (".cnv", ".csv", ".tsv", ".txt"):
        raise CtdError(f"{path}: unknown CTD file type {suffix!r}; expected .cnv (Sea-Bird) or .csv/.tsv/.txt")
    if not path.is_file():
        raise CtdError(f"{path}: CTD file not found")
    warnings: list[str] = []
    text = _decode(path.read_bytes(), warnings)
    if suffix == ".cnv":
        return _read_cnv(path, text, warnings, time_source, tz)
    return _read_table(path, text, warnings, tz)


def join_ctd(objects: pd.DataFrame, ctd: CtdRecord, *, time_col: str = "time", tolerance_s: float = 5.0,
             columns: list[str] | None = None) -> pd.DataFrame:
    """A copy of ``objects`` with ``ctd_<name>`` columns interpolated linearly at each object's time.

    Objects whose nearest CTD sample with a value is further than ``tolerance_s`` get NaN (a
    gap in the record is not bridged by a guess); within it, beyond the record's ends, the end
    value holds. ``columns`` defaults to every numeric column of ``ctd.data`` but clocks and scan
    bookkeeping; then a record without a CTD variable (see ``ctd_variables``) raises ``CtdError``.
    """
    names = _join_columns(ctd, columns)
    t_ctd = ctd.data["time"]
    if t_ctd.isna().all():
        raise CtdError(_no_times(ctd))
    origin = t_ctd.min()
    xp = (t_ctd - origin).dt.total_seconds().to_numpy(np.float64)
    order = np.argsort(xp, kind="stable")
    xp = xp[order]
    x = (_utc(objects[time_col], time_col) - origin).dt.total_seconds().to_numpy(np.float64)
    out = objects.copy()
    for name in names:
        fp = pd.to_numeric(ctd.data[name], errors="coerce").to_numpy(np.float64)[order]
        out[f"ctd_{name}"] = _interp_near(x, xp, fp, tolerance_s)
    return out


def ctd_variables(ctd: CtdRecord) -> list[str]:
    """The columns that describe the water: numeric, and neither a clock, scan bookkeeping nor
    navigation (lat, lon, speed, course, heading, GPS fix). A navigation file has none, so it is
    told apart from a CTD record, which always has one (pressure or depth at least) in any unit."""
    return [c for c in _measured(ctd.data) if not _NAVIGATION.match(c)]


def check_join(ctd: CtdRecord, times: pd.Series, *, tolerance_s: float = 5.0) -> None:
    """Raise ``CtdError`` (one line) when joining ``ctd`` at ``times`` could only give wrong or empty
    columns: no CTD times, no CTD variable (a navigation file), or no time within ``tolerance_s``
    of a CTD sample (the cast of another day), each of which would replace good ``ctd_*`` columns."""
    t_ctd = ctd.data["time"]
    if t_ctd.isna().all():
        raise CtdError(_no_times(ctd))
    if not ctd_variables(ctd):
        raise CtdError(_no_variable(ctd))
    t_run = _utc(times, "time").dropna()
    if t_run.empty:
        return
    origin = t_ctd.min()
    xp = np.sort((t_ctd.dropna() - origin).dt.total_seconds().to_numpy(np.float64))
    x = (t_run - origin).dt.total_seconds().to_numpy(np.float64)
    if np.isfinite(_interp_near(x, xp, np.zeros_like(xp), tolerance_s)).any():
        return
    span = "{:%Y-%m-%d %H:%M:%S} to {:%Y-%m-%d %H:%M:%S}".format
    raise CtdError(f"{ctd.source}: no CTD sample within {tolerance_s:g} s of any of the {len(t_run)} times to join "
                   f"(CTD {span(t_ctd.min(), t_ctd.max())}, run {span(t_run.min(), t_run.max())} UTC); "
                   f"pass the cast recorded during this run")


# ---------------------------------------------------------------- shared helpers

def _decode(raw: bytes, warnings: list[str]) -> str:
    """UTF-8, else Latin-1 (a byte from an old Windows header must not stop the read)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        warnings.append("not UTF-8 (e.g. accented names in the header); decoded as Latin-1")
        return raw.decode("latin-1")


def _localize(t: pd.DatetimeIndex | pd.Timestamp, tz: str) -> pd.DatetimeIndex | pd.Timestamp:
    """Naive clock times in ``tz`` → UTC; times a DST change makes ambiguous become NaT."""
    return t.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").tz_convert("UTC")


def _sanitise(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or "column"
    return f"c{s}" if s[0].isdigit() else s


def _unique(name: str, taken: set[str]) -> str:
    k, out = 2, name
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    return out


# A stated unit that does not match keeps the column out of the canonical name.
_UNIT_OK = {
    "pressure_dbar": r"d(ecibar|bar|b)s?",
    "depth_m": r"(.*,\s*)?m(eters?|etres?)?",
    "temperature_c": r"(.*,\s*)?(deg ?c|°c|c|celsius)",
    "salinity_psu": r"psu|pss-?78",
    "fluorescence_mg_m3": r"mg/m\^?3|[uµ]g/l",
    "oxygen_umol_kg": r"[uµ]mol/kg",
    "oxygen_ml_l": r"ml/l",
    "oxygen_mg_l": r"mg/l",
    "oxygen_umol_l": r"[uµ]mol/l|[uµ]m",
    "lat": r".*", "lon": r".*", "conductivity": r".*",
}
_IMPLIED_UNIT = {"pressure_dbar": "dbar", "depth_m": "m", "temperature_c": "deg C", "salinity_psu": "PSU",
                 "fluorescence_mg_m3": "mg/m^3", "oxygen_umol_kg": "umol/kg", "oxygen_ml_l": "ml/l",
                 "oxygen_mg_l": "mg/l", "oxygen_umol_l": "umol/l", "lat": "degrees_north", "lon": "degrees_east"}
_OXYGEN = ("oxygen_umol_kg", "oxygen_ml_l", "oxygen_mg_l", "oxygen_umol_l")


def _unit_fits(canonical: str, unit: str | None) -> bool:
    return not unit or re.fullmatch(_UNIT_OK[canonical], unit.strip().lower()) is not None


def _output_names(raw: list[str], wanted: list[str | None], units: list[str | None],
                  warnings: list[str]) -> list[str]:
    """Canonical name where wanted, free and unit-consistent (first claim wins); else sanitised."""
    taken, out = {"time"}, []
    for name, want, unit in zip(raw, wanted, units, strict=True):
        if want and want not in taken and _unit_fits(want, unit):
            new = want
        else:
            new = _unique(_sanitise(name), taken)
            if want and not _unit_fits(want, unit):
                warnings.append(f"column {name!r} is in {unit!r}, not {_IMPLIED_UNIT[want]}; kept as {new!r}")
        taken.add(new)
        out.append(new)
    return out


def _units(names: list[str], units: list[str | None]) -> dict[str, str]:
    found = {n: u for n, u in zip(names, units, strict=True) if u}
    implied = {n: _IMPLIED_UNIT[n] for n in names if n in _IMPLIED_UNIT and n not in found}
    return {"time": "UTC", **found, **implied}


def _listed(items: list[str]) -> str:
    more = f", and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _no_time_warning(what: str) -> str:
    return f"no time ({what}): join_ctd cannot use this record"


# ---------------------------------------------------------------- Sea-Bird .cnv

_MONTHS = {m: k for k, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), 1)}
_HEADER_TIME = re.compile(r"([A-Za-z]{3})\s+(\d{1,2})\s+(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?)")
_HEADER_DEG = re.compile(r"(\d+)\s+(\d+(?:\.\d*)?)\s*([NSEW])", re.IGNORECASE)
_HEADER_KEY = re.compile(r"^[*#]+\s*([^=]+?)\s*=\s*(.*?)\s*$")
_NAME = re.compile(r"^(\S+?):\s*(.*?)\s*(?:\[(.*)\])?$")

_CNV_CANONICAL = {
    "prDM": "pressure_dbar", "prSM": "pressure_dbar", "prdM": "pressure_dbar", "prM": "pressure_dbar",
    "pr": "pressure_dbar", "depSM": "depth_m", "depFM": "depth_m",
    "t090C": "temperature_c", "t068C": "temperature_c", "tv290C": "temperature_c", "t4990C": "temperature_c",
    "c0S/m": "conductivity", "c0mS/cm": "conductivity", "c0uS/cm": "conductivity", "sal00": "salinity_psu",
    "flECO-AFL": "fluorescence_mg_m3", "wetStar": "fluorescence_mg_m3", "flC": "fluorescence_mg_m3",
    "sbeox0Mm/Kg": "oxygen_umol_kg", "sbeox0ML/L": "oxygen_ml_l", "sbeox0Mg/L": "oxygen_mg_l",
    "sbeox0Mm/L": "oxygen_umol_l", "latitude": "lat", "longitude": "lon",
}
# (column, epoch, GPS time?) in order of trust; the instrument clock (timeK) runs in ``tz``
_ABSOLUTE = (("timeQ", "2000-01-01", True), ("timeN", "1970-01-01", True), ("timeY", "1970-01-01", True),
             ("timeK", "2000-01-01", False))
_ELAPSED = {"timeS": 1.0, "timeM": 60.0, "timeH": 3600.0}
_JULIAN = ("timeJ", "timeJV2")


@dataclass
class _CnvHeader:
    """What the header says that the data need."""

    names: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # N → (short name, unit)
    nquan: int | None = None
    nvalues: int | None = None
    bad_flag: float | None = None
    nmea_utc: pd.Timestamp | None = None  # naive, UTC
    start_time: pd.Timestamp | None = None  # naive, UTC or ``tz`` (see ``start_tz``)
    start_note: str = ""
    lat: float | None = None
    lon: float | None = None
    file_type: str = "ascii"

    def start_tz(self, tz: str) -> str:
        """start_time is UTC when it came from the GPS or the computer's UTC clock."""
        return "UTC" if re.search(r"NMEA|UTC", self.start_note, re.IGNORECASE) else tz


def _header_time(text: str) -> pd.Timestamp | None:
    """'Jun 01 2026  12:00:03' → naive Timestamp; None for 'none' or anything unreadable."""
    m = _HEADER_TIME.search(text)
    if not m or m.group(1).lower() not in _MONTHS:
        return None
    mon, day, year, hh, mm, ss = m.groups()
    try:
        start = pd.Timestamp(int(year), _MONTHS[mon.lower()], int(day), int(hh), int(mm))
    except ValueError:
        return None
    return start + pd.Timedelta(seconds=float(ss))


def _header_degrees(text: str) -> float | None:
    """'33 01.50 S' → -33.025 (S and W negative)."""
    m = _HEADER_DEG.search(text)
    if not m:
        return None
    deg = int(m.group(1)) + float(m.group(2)) / 60.0
    return -deg if m.group(3).upper() in "SW" else deg


def _header_line(line: str, hdr: _CnvHeader, warnings: list[str]) -> None:
    m = _HEADER_KEY.match(line)
    if not m:
        return
    key, value = m.group(1).lower(), m.group(2)
    if key.startswith("name "):
        name = _NAME.match(value)
        if name and key[5:].strip().isdigit():
            hdr.names[int(key[5:])] = (name.group(1), name.group(3))
    elif key in ("nquan", "nvalues") and value.isdigit():
        setattr(hdr, key, int(value))
    elif key == "bad_flag":
        try:
            hdr.bad_flag = float(value)
        except ValueError:
            warnings.append(f"header bad_flag {value!r} is not a number; no value is treated as bad")
    elif key == "nmea utc (time)":
        hdr.nmea_utc = _header_time(value)
        if hdr.nmea_utc is None:
            warnings.append(f"header 'NMEA UTC (Time) = {value}': no GPS time for the cast start")
    elif key == "start_time":
        hdr.start_time = _header_time(value)
        note = re.search(r"\[(.*)\]", value)
        hdr.start_note = note.group(1) if note else ""
        if hdr.start_time is None:
            warnings.append(f"header start_time {value!r} is not a date and time; ignored")
    elif key == "nmea latitude":
        hdr.lat = _header_degrees(value)
    elif key == "nmea longitude":
        hdr.lon = _header_degrees(value)
    elif key == "file_type":
        hdr.file_type = value.lower()


def _parse_header(path: Path, lines: list[str], warnings: list[str]) -> tuple[_CnvHeader, int]:
    """The header and the index of the first line after ``*END*``."""
    hdr = _CnvHeader()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("*END*"):
            return hdr, i + 1
        if s and not s.startswith(("*", "#")):
            break
        _header_line(s, hdr, warnings)
    raise CtdError(f"{path}: no '*END*' line closing a '*'/'#' header; is this a Sea-Bird ASCII .cnv "
                   f"(convert .hex with SBE Data Processing, Data Conversion, ASCII output)?")


def _column_names(path: Path, hdr: _CnvHeader, warnings: list[str]) -> tuple[list[str], list[str | None]]:
    """Short names and units in column order, checked against ``nquan``."""
    if not hdr.names:
        raise CtdError(f"{path}: no '# name N = ...' header lines; cannot tell the columns apart")
    if sorted(hdr.names) != list(range(len(hdr.names))):
        raise CtdError(f"{path}: header names columns {sorted(hdr.names)}, not 0..{len(hdr.names) - 1}; "
                       f"the header is damaged")
    if hdr.nquan is not None and hdr.nquan != len(hdr.names):
        warnings.append(f"header says nquan = {hdr.nquan} but names {len(hdr.names)} columns; using the names")
    names = [hdr.names[k] for k in range(len(hdr.names))]
    return [n for n, _ in names], [u for _, u in names]


def _row_values(line: str, n: int) -> list[float] | None:
    """Whitespace-separated values, or 11-character fields where values run together."""
    fields = line.split()
    if len(fields) != n:
        s = line.rstrip()
        if len(s) != n * _FIELD_WIDTH:
            return None
        fields = [s[k:k + _FIELD_WIDTH] for k in range(0, len(s), _FIELD_WIDTH)]
    try:
        return [float(f) for f in fields]
    except ValueError:
        return None


def _parse_rows(lines: list[str], first_line_no: int, n: int, warnings: list[str]) -> np.ndarray:
    """(rows, n) float64; a line that is not a row is skipped and listed with its line number."""
    rows, skipped = [], []
    for line_no, line in enumerate(lines, first_line_no):
        if not line.strip():
            continue
        values = _row_values(line, n)
        if values is None:
            skipped.append(f"line {line_no} {line.strip()[:40]!r}")
        else:
            rows.append(values)
    if skipped:
        warnings.append(f"{len(skipped)} line(s) after *END* are not rows of {n} values and were skipped: "
                        f"{_listed(skipped)}")
    return np.array(rows, np.float64).reshape(len(rows), n)


def _mask_bad_flag(values: np.ndarray, bad_flag: float | None, names: list[str]) -> str | None:
    """Set bad_flag values to NaN in place; a warning saying how many rows and where."""
    if bad_flag is None:
        return None
    bad = np.isclose(values, bad_flag, rtol=1e-6, atol=0.0)
    if not bad.any():
        return None
    values[bad] = np.nan
    per_column = ", ".join(f"{names[j]} {c}" for j, c in enumerate(bad.sum(axis=0)) if c)
    return f"{int(bad.any(axis=1).sum())} row(s) hold bad_flag {bad_flag:g} values, now NaN ({per_column})"


def _from_epoch(seconds: np.ndarray, epoch: str, tz: str) -> pd.DatetimeIndex:
    return _localize(pd.Timestamp(epoch) + pd.to_timedelta(seconds, unit="s"), tz)


def _after(ref: pd.Timestamp, ref_tz: str, elapsed_s: np.ndarray) -> pd.DatetimeIndex:
    return _localize(ref, ref_tz) + pd.to_timedelta(elapsed_s, unit="s")


def _from_julian(days: np.ndarray, ref: pd.Timestamp, ref_tz: str, tz: str) -> pd.DatetimeIndex:
    """Day of year (1.0 = 1 January 00:00) in ``tz``; the year is the reference's, ±1 across New Year."""
    local = _localize(ref, ref_tz).tz_convert(tz)
    doy = local.day_of_year
    year = local.year + np.where(days < doy - 183, 1, 0) - np.where(days > doy + 183, 1, 0)
    jan1 = (year - 1970).astype("datetime64[Y]").astype("datetime64[ns]")
    return _localize(pd.DatetimeIndex(jan1) + pd.to_timedelta(days - 1.0, unit="D"), tz)


def _time_candidates(cols: dict[str, np.ndarray], hdr: _CnvHeader,
                     tz: str) -> Iterator[tuple[str, tuple[str, ...], Callable[[], pd.DatetimeIndex]]]:
    """(label, modes that allow it, builder) in the order of the module docstring."""
    for name, epoch, gps in _ABSOLUTE:
        if name in cols:
            modes = ("auto", "nmea") if name in ("timeQ", "timeN") else ("auto",)
            yield name, modes, partial(_from_epoch, cols[name], epoch, "UTC" if gps else tz)
    refs = [(label, ref, ref_tz, modes) for label, ref, ref_tz, modes in
            (("NMEA UTC", hdr.nmea_utc, "UTC", ("auto", "nmea")),
             ("start_time", hdr.start_time, hdr.start_tz(tz), ("auto", "start_time"))) if ref is not None]
    elapsed = next(((n, cols[n] * f) for n, f in _ELAPSED.items() if n in cols), None)
    if elapsed:
        for label, ref, ref_tz, modes in refs:
            yield f"{elapsed[0]}+{label}", modes, partial(_after, ref, ref_tz, elapsed[1])
    for name in (n for n in _JULIAN if n in cols):
        jtz = hdr.start_tz(tz) if name == "timeJ" else tz  # timeJ comes from start_time, timeJV2 from the instrument
        for label, ref, ref_tz, modes in refs:
            allowed = tuple(m for m in modes if m != "nmea")
            yield f"{name}+{label}", allowed, partial(_from_julian, cols[name], ref, ref_tz, jtz)


def _cnv_times(path: Path, cols: dict[str, np.ndarray], hdr: _CnvHeader, mode: str,
               tz: str) -> tuple[pd.DatetimeIndex | None, str]:
    for label, modes, build in _time_candidates(cols, hdr, tz):
        if mode in modes:
            return build(), label
    if mode != "auto":
        hint = "an NMEA UTC (Time) header line or a timeQ column" if mode == "nmea" else "a start_time header line"
        raise CtdError(f"{path}: time_source={mode!r} needs {hint} with timeS or timeJ; "
                       f"use time_source='auto' to take what the file has")
    return None, "none"


def _clock_check(hdr: _CnvHeader, tz: str) -> str | None:
    """Instrument or computer clocks drift: say so when the two header times disagree."""
    if hdr.nmea_utc is None or hdr.start_time is None:
        return None
    diff = (_localize(hdr.start_time, hdr.start_tz(tz)) - _localize(hdr.nmea_utc, "UTC")).total_seconds()
    if abs(diff) <= 1.0:
        return None
    return f"start_time is {diff:+.0f} s from NMEA UTC (Time) (start_time's clock: {hdr.start_note or 'unknown'})"


def _read_cnv(path: Path, text: str, warnings: list[str], mode: str, tz: str) -> CtdRecord:
    lines = [line.rstrip("\r") for line in text.split("\n")]  # not splitlines: Latin-1 \x85 is no line break
    hdr, body = _parse_header(path, lines, warnings)
    if hdr.file_type != "ascii":
        raise CtdError(f"{path}: file_type = {hdr.file_type}; re-run SBE Data Conversion with ASCII output")
    raw, units = _column_names(path, hdr, warnings)
    values = _parse_rows(lines[body:], body + 1, len(raw), warnings)
    if hdr.nvalues is not None and hdr.nvalues != len(values):
        warnings.append(f"header says nvalues = {hdr.nvalues} but {len(values)} rows were read")
    flagged = _mask_bad_flag(values, hdr.bad_flag, raw)
    if flagged:
        warnings.append(flagged)
    names = _output_names(raw, [_CNV_CANONICAL.get(r) for r in raw], units, warnings)
    times, label = _cnv_times(path, dict(zip(raw, values.T, strict=True)), hdr, mode, tz)
    if times is None:
        warnings.append(_no_time_warning("no timeQ/timeY/timeK column, nor timeS/timeJ with an NMEA UTC or "
                                         "start_time header; add timeS or timeQ in SBE Data Conversion"))
    clock = _clock_check(hdr, tz)
    if clock:
        warnings.append(clock)
    data = pd.DataFrame(values, columns=names)
    data.insert(0, "time", _time_column(times, len(data)))
    position = (hdr.lat, hdr.lon) if hdr.lat is not None and hdr.lon is not None else None
    return CtdRecord(data, path, label, warnings, _units(names, units), position)


def _time_column(times: pd.DatetimeIndex | None, n: int) -> pd.Series:
    if times is None:
        return pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]")
    return pd.Series(pd.DatetimeIndex(times).as_unit("ns"))


# ---------------------------------------------------------------- CSV / TSV / TXT

_CSV_ALIASES = {
    "pressure_dbar": ("pressure_dbar", "pressure", "pres", "press", "prdm", "prsm"),
    "depth_m": ("depth_m", "depth", "dep", "depsm"),
    "temperature_c": ("temperature_c", "temperature", "temp", "t090c"),
    "salinity_psu": ("salinity_psu", "salinity", "sal", "psal", "sal00"),
    "conductivity": ("conductivity", "cond", "c0s_m"),
    "fluorescence_mg_m3": ("fluorescence_mg_m3", "fluorescence", "fluo", "fluor", "chla", "chl_a", "chl",
                           "chlorophyll", "fleco_afl"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "long", "longitude"),
    **{name: (name,) for name in _OXYGEN},
}
_ALIAS = {alias: name for name, aliases in _CSV_ALIASES.items() for alias in aliases}
_OXYGEN_ALIASES = ("oxygen", "o2", "oxy", "doxy", "do", "dissolved_oxygen", "sbeox0")
_TIME_ALIASES = ("time", "datetime", "date_time", "time_utc", "datetime_utc", "utc")
_EPOCH_ALIASES = ("timestamp", "epoch", "unix_time", "epoch_s")
_UNIT_IN_NAME = re.compile(r"^(.*?)\s*[\(\[]\s*([^\)\]]*?)\s*[\)\]]\s*$")


def _split_unit(header: str) -> tuple[str, str | None]:
    """'Pressure (dbar)' → ('Pressure', 'dbar')."""
    m = _UNIT_IN_NAME.match(header)
    return (m.group(1), m.group(2) or None) if m and m.group(1) else (header.strip(), None)


def _csv_canonical(key: str, unit: str | None, base: str, warnings: list[str]) -> str | None:
    """Canonical name for a column; oxygen's depends on its unit, which must then be stated."""
    if key not in _OXYGEN_ALIASES:
        return _ALIAS.get(key)
    hit = next((name for name in _OXYGEN if unit and _unit_fits(name, unit)), None)
    if hit is None:
        warnings.append(f"oxygen column {base!r} has {'unit ' + repr(unit) if unit else 'no unit'}; kept under "
                        f"its own name (write e.g. '{base} (umol/kg)' or '{base} (ml/l)' in the header)")
    return hit


def _sniff_sep(text: str) -> str:
    first = next((line for line in text.split("\n") if line.strip()), "")
    counts = {sep: first.count(sep) for sep in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else r"\s+"


def _rows_listed(mask: np.ndarray) -> str:
    return _listed([str(k + 1) for k in np.flatnonzero(mask)])


def _csv_times(path: Path, col: pd.Series, epoch: bool, tz: str) -> pd.DatetimeIndex:
    """ISO 8601 (naive times in ``tz``), or epoch seconds; unreadable values become NaT."""
    if epoch:
        return pd.DatetimeIndex(pd.to_datetime(pd.to_numeric(col, errors="coerce"), unit="s", utc=True))
    if pd.api.types.is_numeric_dtype(col):
        raise CtdError(f"{path}: column {col.name!r} holds numbers, not ISO 8601 times; "
                       f"name it 'timestamp' if they are seconds since 1970")
    try:
        t = pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", errors="coerce"))
    except ValueError:  # several UTC offsets in one column
        t = pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", errors="coerce", utc=True))
    return t.tz_convert("UTC") if t.tz is not None else _localize(t, tz)


def _read_table(path: Path, text: str, warnings: list[str], tz: str) -> CtdRecord:
    sep = _sniff_sep(text)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CtdError(f"{path}: not a readable table ({str(e).splitlines()[0]})") from None
    headers = [str(c) for c in df.columns]
    split = [_split_unit(h) for h in headers]
    keys = [_sanitise(base).lower() for base, _ in split]
    time_col = next((h for h, k in zip(headers, keys, strict=True) if k in _TIME_ALIASES), None)
    epoch_col = next((h for h, k in zip(headers, keys, strict=True) if k in _EPOCH_ALIASES), None)
    kept = [j for j, h in enumerate(headers) if h not in (time_col, epoch_col)]
    wanted = [_csv_canonical(keys[j], split[j][1], split[j][0], warnings) for j in kept]
    if time_col is None and epoch_col is None and not {"pressure_dbar", "depth_m"} & set(wanted):
        raise CtdError(f"{path}: neither a time nor a pressure/depth column; add 'time' (ISO 8601 UTC) or "
                       f"'timestamp' (epoch seconds), and 'pressure' (dbar) or 'depth' (m)")
    names = _output_names([split[j][0] for j in kept], wanted, [split[j][1] for j in kept], warnings)
    data = pd.DataFrame({new: df[headers[j]] for j, new in zip(kept, names, strict=True)})
    for name in (n for n in names if n in _UNIT_OK):
        data[name] = _numbers(data[name], name, warnings)
    time_label = "none"
    times = None
    if time_col is not None or epoch_col is not None:
        col = df[time_col if time_col is not None else epoch_col]
        times = _csv_times(path, col, time_col is None, tz)
        time_label = "csv time column" if time_col is not None else "csv timestamp column"
        unread = times.isna() & col.notna().to_numpy()
        if unread.any():
            warnings.append(f"{int(unread.sum())} time(s) in {col.name!r} are not readable, left NaT "
                            f"(data rows {_rows_listed(unread)})")
    else:
        warnings.append(_no_time_warning("add a 'time' column (ISO 8601 UTC) or 'timestamp' (epoch seconds)"))
    data.insert(0, "time", _time_column(times, len(data)))
    return CtdRecord(data, path, time_label, warnings, _units(names, [split[j][1] for j in kept]))


def _numbers(col: pd.Series, name: str, warnings: list[str]) -> pd.Series:
    """Floats; text that is not a number becomes NaN and is reported with its data row."""
    out = pd.to_numeric(col, errors="coerce").astype(np.float64)
    bad = (out.isna() & col.notna()).to_numpy()
    if bad.any():
        warnings.append(f"{int(bad.sum())} value(s) of {name} are not numbers, now NaN (data rows {_rows_listed(bad)})")
    return out


# ---------------------------------------------------------------- join

_HOUSEKEEPING = re.compile(r"^(time[A-Za-z0-9]*|timestamp|scan|flag|nbin|epoch.*)$", re.IGNORECASE)
# where the ship was, not what the water was: all a navigation file holds besides its times
_NAVIGATION = re.compile(r"^(lat|lon|latitude|longitude|speed\w*|sog|cog|course\w*|heading|hdg|hdop|"
                         r"altitude|n?sat(ellite)?s?|fix\w*|quality|gps\w*)$", re.IGNORECASE)


def _measured(data: pd.DataFrame) -> list[str]:
    """Numeric columns but clocks and scan bookkeeping, which say nothing of the water."""
    return [c for c in data.columns if c != "time" and pd.api.types.is_numeric_dtype(data[c])
            and not _HOUSEKEEPING.match(c)]


def _no_times(ctd: CtdRecord) -> str:
    return (f"{ctd.source}: no usable CTD times (time source: {ctd.time_source}); give the file a time column, "
            "or for a .cnv an NMEA UTC or start_time header")


def _no_variable(ctd: CtdRecord) -> str:
    has = [c for c in ctd.data.columns if c != "time"]
    return (f"{ctd.source}: no CTD variable (it has {_listed(has) if has else 'only times'}); is it a navigation "
            f"file? pass the CTD record: a .cnv, or a table with e.g. pressure, depth or temperature")


def _join_columns(ctd: CtdRecord, columns: list[str] | None) -> list[str]:
    data = ctd.data
    if columns is None:  # lat/lon of a CTD that logs its position are joined too, never alone
        if not ctd_variables(ctd):
            raise CtdError(_no_variable(ctd))
        return _measured(data)
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(f"{ctd.source}: no CTD column {missing}; it has {[c for c in data.columns if c != 'time']}")
    return list(columns)


def _utc(col: pd.Series, name: str) -> pd.Series:
    if not isinstance(col.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"objects[{name!r}] must hold tz-aware UTC datetimes, not {col.dtype}")
    return col.dt.tz_convert("UTC")


def _interp_near(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, tolerance_s: float) -> np.ndarray:
    """np.interp over the finite samples; NaN where the nearest such sample is further than the tolerance.

    x (N,) seconds, NaN for no time; xp (M,) sorted seconds, NaN for no time; fp (M,) values.
    """
    ok = np.isfinite(xp) & np.isfinite(fp)
    xp, fp = xp[ok], fp[ok]
    out = np.full(x.shape, np.nan)
    if len(xp) == 0:
        return out
    k = np.searchsorted(xp, x)
    before = xp[np.clip(k - 1, 0, len(xp) - 1)]
    after = xp[np.clip(k, 0, len(xp) - 1)]
    near = np.minimum(np.abs(x - before), np.abs(after - x)) <= tolerance_s  # NaN x → False
    out[near] = np.interp(x[near], xp, fp)
    return out
