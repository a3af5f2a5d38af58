"""Raw NMEA 0183 navigation logs → a table of UTC ``time``, ``lat``, ``lon``.

Fixes come from GGA and GLL (time of day only) and RMC (date and time) sentences of any
talker (``$GP``, ``$GN``, ``$IN``…); ZDA sentences, and an ISO-8601 date-time a logger writes
before the ``$``, only date the time-of-day fixes. Each takes the date of the latest RMC, ZDA
or logger time before it (before the first one, of the first after it), moved by a day when
the two lie on opposite sides of midnight. A sentence whose checksum is present and wrong, that
has no fix (GGA quality 0, RMC or GLL status V), has empty or unreadable fields, or has no date
anywhere in the log is skipped and counted in ``df.attrs["skipped"]``, as are lines that hold no
sentence, sentences of other types (VTG, GSV…) and fixes repeating an earlier fix's time: every
line is either used or counted.

Plain parsing, not pynmea2: GGA, RMC and ZDA are three fixed comma layouts, and what needs care
here (the logger prefix, dating GGA from other sentences, counting what was skipped) would be
ours either way; pynmea2 1.19 rejects lines with a logger prefix.
"""
from __future__ import annotations

from functools import reduce
from operator import xor
from pathlib import Path

import numpy as np
import pandas as pd

SKIP_REASONS = ("not_nmea", "bad_checksum", "no_fix", "empty", "malformed", "no_date", "duplicate_time",
                "other_sentence")
_DAY_S = 86400.0


class NavError(Exception):
    """A navigation log with no usable fix; the message is one line naming the file."""


class _Skip(Exception):
    """A line that gives no fix; ``args[0]`` is its reason, one of ``SKIP_REASONS``."""


def read_nmea(path: Path) -> pd.DataFrame:
    """Fixes sorted by time, one per time; ``attrs["skipped"]`` counts what was left out, per reason."""
    path = Path(path)
    text = path.read_bytes().decode("latin-1")  # NMEA is ASCII: a stray byte fails its checksum, not the read
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    fixes: list[tuple[int, float, float, float, float]] = []  # line, GGA time of day, RMC datetime, lat, lon
    dates: list[tuple[int, float]] = []  # line, datetime (s since 1970) of each RMC/ZDA
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            _read_line(i, line, fixes, dates)
        except _Skip as e:
            skipped[e.args[0]] += 1
    if not fixes:
        raise NavError(f"{path}: no usable GGA, GLL or RMC fix (skipped: {_counts(skipped)})")
    t, lat, lon = _dated(np.array(fixes, np.float64).reshape(-1, 5), np.array(dates, np.float64).reshape(-1, 2))
    skipped["no_date"] = int(np.isnan(t).sum())
    if skipped["no_date"] == len(t):
        raise NavError(f"{path}: GGA or GLL fixes but no RMC or ZDA sentence (nor a logger date) to date them; "
                       "log RMC or ZDA as well")
    df = _table(t, lat, lon)
    skipped["duplicate_time"] = int(df["time"].duplicated().sum())
    df = df.drop_duplicates("time", keep="first").reset_index(drop=True)
    df.attrs["skipped"] = skipped
    return df


def _counts(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in skipped.items() if v) or "nothing"


def _read_line(i: int, line: str, fixes: list, dates: list) -> None:
    """Append line ``i``'s fix and/or date; other sentence types are ignored."""
    kind, f = _sentence(line)
    prefix = _prefix_time(line)
    if prefix is not None:  # the logger's own clock: dates the time-of-day fixes near it
        dates.append((i, prefix))
    if kind == "GLL":  # lat, N/S, lon, E/W, time of day, status
        if len(f) < 6:
            raise _Skip("malformed")
        if f[5] != "A":
            raise _Skip("no_fix")
        fixes.append((i, _time_of_day(f[4]), np.nan, *_position(f[0:4])))
    elif kind == "GGA":
        if len(f) < 6:
            raise _Skip("malformed")
        if f[5] in ("", "0"):
            raise _Skip("no_fix")
        fixes.append((i, _time_of_day(f[0]), np.nan, *_position(f[1:5])))
    elif kind == "RMC":
        if len(f) < 9:
            raise _Skip("malformed")
        if f[1] != "A":
            raise _Skip("no_fix")
        t = _date(*_rmc_date(f[8])) + _time_of_day(f[0])
        fixes.append((i, np.nan, t, *_position(f[2:6])))
        dates.append((i, t))
    elif kind == "ZDA":
        if len(f) < 4:
            raise _Skip("malformed")
        dates.append((i, _date(_number(f[1], int), _number(f[2], int), _number(f[3], int)) + _time_of_day(f[0])))
    elif prefix is None:
        raise _Skip("other_sentence")  # VTG, GSV...: read, not used (a prefix date is a use)


def _prefix_time(line: str) -> float | None:
    """Seconds since 1970 of an ISO-8601 date-time the logger wrote before the ``$``, else None."""
    head = line[:max(line.find("$"), 0)].strip().strip(",;")
    if len(head) < 10:
        return None
    try:
        t = pd.Timestamp(head)
    except (ValueError, TypeError):
        return None
    if pd.isna(t):
        return None
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.value / 1e9


def _sentence(line: str) -> tuple[str, list[str]]:
    """(sentence type without talker, fields after the address) of a sentence with a valid or no checksum."""
    start = line.find("$")
    if start < 0:
        raise _Skip("not_nmea")
    body, star, checksum = line[start + 1:].strip().partition("*")
    if star and checksum[:2].upper() != f"{reduce(xor, body.encode('latin-1'), 0):02X}":
        raise _Skip("bad_checksum")
    address, *fields = body.split(",")
    return (address[2:] if len(address) == 5 else address), fields


def _number(s: str, cast: type = float) -> float:
    if not s:
        raise _Skip("empty")
    try:
        return cast(s)
    except ValueError:
        raise _Skip("malformed") from None


def _time_of_day(s: str) -> float:
    """'hhmmss.ss' → seconds since midnight."""
    if len(s) < 6:
        raise _Skip("empty" if not s else "malformed")
    h, m, sec = _number(s[0:2], int), _number(s[2:4], int), _number(s[4:])
    if h > 23 or m > 59 or not 0 <= sec < 61:
        raise _Skip("malformed")
    return h * 3600.0 + m * 60.0 + sec


def _degrees(value: str, hemisphere: str, max_deg: int, negative: str) -> float:
    """'3301.5000', 'S' → -33.025: degrees, then two digits of whole minutes."""
    if not value or not hemisphere:
        raise _Skip("empty")
    cut = (value.find(".") if "." in value else len(value)) - 2
    if cut < 0:
        raise _Skip("malformed")
    deg, minutes = _number(value[:cut] or "0", int), _number(value[cut:])
    if deg > max_deg or not 0 <= minutes < 60 or hemisphere not in ("NS" if max_deg == 90 else "EW"):
        raise _Skip("malformed")
    out = deg + minutes / 60.0
    return -out if hemisphere == negative else out


def _position(f: list[str]) -> tuple[float, float]:
    """lat, N/S, lon, E/W fields → decimal degrees."""
    return _degrees(f[0], f[1], 90, "S"), _degrees(f[2], f[3], 180, "W")


def _rmc_date(ddmmyy: str) -> tuple[int, int, int]:
    """'020626' → (2, 6, 2026); two-digit years 80-99 are 19xx (GPS began in 1980)."""
    if len(ddmmyy) != 6:
        raise _Skip("empty" if not ddmmyy else "malformed")
    d, m, y = (_number(ddmmyy[k:k + 2], int) for k in (0, 2, 4))
    return d, m, y + (1900 if y >= 80 else 2000)


def _date(day: int, month: int, year: int) -> float:
    """Midnight of a date, seconds since 1970."""
    try:
        midnight = np.datetime64(f"{year:04d}-{month:02d}-{day:02d}", "D")
    except ValueError:
        raise _Skip("malformed") from None
    return float(midnight.astype(np.int64)) * _DAY_S


def _dated(fixes: np.ndarray, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds since 1970 per fix: RMC's own, GGA's from the latest (else first) date, ±1 day at midnight.

    fixes (N, 5): line, time of day, own datetime or NaN, lat, lon; dates (M, 2): line, datetime.
    """
    line, tod, t = fixes[:, 0], fixes[:, 1], fixes[:, 2].copy()
    need = np.isnan(t)
    if need.any() and len(dates):
        k = np.maximum(np.searchsorted(dates[:, 0], line[need], side="right") - 1, 0)
        ref = dates[k, 1]
        guess = np.floor(ref / _DAY_S) * _DAY_S + tod[need]
        t[need] = guess + _DAY_S * np.round((ref - guess) / _DAY_S)  # the day that puts it nearest the date's time
    return t, fixes[:, 3], fixes[:, 4]


def _table(t: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> pd.DataFrame:
    """Dated fixes sorted by time (stable: the first of equal times stays first)."""
    ok = np.isfinite(t)
    order = np.argsort(t[ok], kind="stable")
    us = np.round(t[ok][order] * 1e6).astype(np.int64)
    time = pd.to_datetime(us, unit="us", utc=True).as_unit("ns")
    return pd.DataFrame({"time": time, "lat": lat[ok][order], "lon": lon[ok][order]})
