"""NMEA 0183 logs: exact fixes from a hand-written log with every quirk, and the errors."""
from functools import reduce
from operator import xor
from pathlib import Path

import pandas as pd
import pytest

from segplank.nmea import NavError, read_nmea

DATA = Path(__file__).parent / "data" / "nmea"


def sentence(body: str) -> str:
    return f"${body}*{reduce(xor, body.encode(), 0):02X}"


def test_log_with_every_quirk():
    """Logger prefixes, GGA before any date (and across midnight), bad checksum, no fix, duplicates, disorder."""
    df = read_nmea(DATA / "track.nmea")
    assert list(df.columns) == ["time", "lat", "lon"] and str(df["time"].dtype) == "datetime64[ns, UTC]"
    assert df["time"].tolist() == [pd.Timestamp(s, tz="UTC") for s in (
        "2026-06-01 23:59:58", "2026-06-01 23:59:59",  # dated by the RMC after them, on the other side of midnight
        "2026-06-02 00:00:00", "2026-06-02 00:00:05", "2026-06-02 00:00:06", "2026-06-02 00:00:07")]
    minutes = [1.5, 1.506, 1.512, 1.530, 1.536, 1.542]
    assert df["lat"].tolist() == pytest.approx([-(33 + m / 60) for m in minutes], abs=1e-6)
    assert df["lon"].tolist() == pytest.approx([-(71 + (m + 36.75) / 60) for m in minutes], abs=1e-6)
    assert (df["lat"].iloc[0], df["lon"].iloc[0]) == pytest.approx((-33.025, -71.6375), abs=1e-9)
    assert df.attrs["skipped"] == {"not_nmea": 1, "bad_checksum": 1, "no_fix": 3, "empty": 1, "malformed": 1,
                                   "no_date": 0, "duplicate_time": 1, "other_sentence": 2}  # GSV, VTG


def test_north_east_rmc_only_and_other_prefixes(tmp_path):
    p = tmp_path / "nav.log"
    p.write_text("\n".join([
        "[12:00:00.1] " + sentence("GPRMC,120000.00,A,4324.5100,N,00736.0000,E,0.1,0.0,010626,,,A"),
        "\t" + sentence("GNRMC,120001.50,A,4324.5160,N,00736.0060,E,0.1,0.0,010626,,,A") + "\r",
        sentence("GPRMC,120002.00,A,4324.5220,N,00736.0120,E,0.1,0.0,010699,,,A"),  # 1999: GPS years 80-99
    ]) + "\n")
    df = read_nmea(p)
    assert df["time"].tolist() == [pd.Timestamp(s, tz="UTC") for s in
                                   ("1999-06-01 12:00:02", "2026-06-01 12:00:00", "2026-06-01 12:00:01.5")]
    assert df["lat"].tolist() == pytest.approx([43 + 24.522 / 60, 43 + 24.51 / 60, 43 + 24.516 / 60], abs=1e-6)
    assert df["lon"].tolist() == pytest.approx([7 + 36.012 / 60, 7.6, 7 + 36.006 / 60], abs=1e-6)
    assert sum(df.attrs["skipped"].values()) == 0


def test_zda_dates_the_gga_before_it(tmp_path):
    p = tmp_path / "nav.nmea"
    p.write_text(sentence("GPGGA,101010.00,1000.0000,N,02000.0000,W,1,08,0.9,1.0,M,0.0,M,,") + "\n"
                 + sentence("GPZDA,101011.00,31,12,2025,00,00") + "\n")
    df = read_nmea(p)
    assert df["time"].tolist() == [pd.Timestamp("2025-12-31 10:10:10", tz="UTC")]
    assert (df["lat"].iloc[0], df["lon"].iloc[0]) == (10.0, -20.0)


def test_nothing_usable_is_one_line_naming_the_file(tmp_path):
    gga_only = tmp_path / "gga.nmea"
    gga_only.write_text(sentence("GPGGA,101010.00,1000.0000,N,02000.0000,E,1,08,0.9,1.0,M,0.0,M,,") + "\n")
    with pytest.raises(NavError, match="gga.nmea: GGA or GLL fixes but no RMC or ZDA sentence"):
        read_nmea(gga_only)
    junk = tmp_path / "junk.nmea"
    bad_checksum = "$GPRMC,120000.00,A,4324.51,N,00736.00,E,,,010626,,,A*00"
    junk.write_text("\n".join(["hello", sentence("GPGSV,1,1,00"), bad_checksum]) + "\n")
    with pytest.raises(NavError, match=r"junk.nmea: no usable GGA, GLL or RMC fix \(skipped: not_nmea 1, bad_checksum 1, "
                                     r"other_sentence 1\)"):
        read_nmea(junk)


def test_gll_positions_dated_by_zda_or_by_the_loggers_own_time(tmp_path):
    """$GPGLL has a time of day only: a ZDA, or an ISO date-time the logger wrote before the $, dates it."""
    by_zda = tmp_path / "zda.nmea"
    by_zda.write_text(sentence("GPZDA,101009.00,31,12,2025,00,00") + "\n"
                      + sentence("GPGLL,1000.0000,N,02000.0000,W,101010.00,A,A") + "\n"
                      + sentence("GPGLL,1000.0060,N,02000.0060,W,101011.00,V,N") + "\n")  # no fix
    df = read_nmea(by_zda)
    assert df["time"].tolist() == [pd.Timestamp("2025-12-31 10:10:10", tz="UTC")]
    assert (df["lat"].iloc[0], df["lon"].iloc[0]) == (10.0, -20.0)
    assert df.attrs["skipped"]["no_fix"] == 1
    by_logger = tmp_path / "logger.nmea"
    by_logger.write_text("2026-06-01T23:59:59.900Z " + sentence("GPGLL,4324.5100,N,00736.0000,E,000000.10,A,A") + "\n")
    assert read_nmea(by_logger)["time"].tolist() == [pd.Timestamp("2026-06-02 00:00:00.1", tz="UTC")]  # past midnight
