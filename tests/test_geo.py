from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from segplank.config import load_config
from segplank.frames import find_frames
from segplank.geo import Locator, Track, epoch_seconds, pressure_to_depth
from segplank.synth.environment import Environment, saunders_pressure_dbar

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()  # make_cruise's default start


def test_track_interpolates_and_refuses_to_extrapolate(tmp_path):
    p = tmp_path / "nav.csv"
    pd.DataFrame({"time": ["2026-06-01T12:00:00Z", "2026-06-01T12:00:10Z", "2026-06-01T12:10:00Z"],
                  "lat": [43.0, 43.1, 44.0], "lon": [-7.0, -7.2, -8.0]}).to_csv(p, index=False)
    t = Track.read_csv(p, Locator.NAV)
    t0 = pd.Timestamp("2026-06-01T12:00:00Z").timestamp()
    times = np.array([t0 + 5, t0 - 1, t0 + 20, t0 + 10])
    lat = t.at(times, "lat")
    assert np.isclose(lat[0], 43.05) and np.isclose(lat[3], 43.1)
    assert np.isnan(lat[1])  # before the record
    assert np.isnan(lat[2])  # inside a 590 s gap in the record
    assert t.covers(times).tolist() == [True, False, False, True]


def _truth(seed: int, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic ocean's own lat, lon, depth at UTC times (track dead-reckoned on a fine grid)."""
    env = Environment.for_seed(seed)
    grid = np.arange(-120.0, 200.0, 0.05)
    lat, lon = env.track(grid)
    s = times - START
    return np.interp(s, grid, lat), np.interp(s, grid, lon), env.depth_m(s)


def test_positions_and_depths_follow_the_synthetic_ocean(small_cruise):
    frames = find_frames(small_cruise, load_config(None, small_cruise).instrument)
    times = epoch_seconds([f.timestamp for f in frames]) + np.array([0.0, 0.37, 0.81])  # between nav samples too
    loc = Locator.from_cruise(small_cruise)
    pos = loc(times)
    lat, lon, depth = _truth(5, times)
    # 1 Hz records written to 1e-6 degree and 1 mm; a ship moves ~2.5 m/s, the tow-yo < 1 m/s
    assert np.abs(pos.lat - lat).max() < 2e-6 and np.abs(pos.lon - lon).max() < 3e-6
    assert np.abs(pos.depth_m - depth).max() < 0.02
    assert loc.depth_source.endswith("depth column")


def test_depth_from_pressure_with_teos10(small_cruise, tmp_path):
    """Without a depth column, depth comes from pressure with gsw at the track's latitude."""
    ctd = pd.read_csv(small_cruise / "ctd.csv").drop(columns=["depth_m"])
    (tmp_path / "ctd.csv").write_text(ctd.to_csv(index=False))
    (tmp_path / "nav.csv").write_text((small_cruise / "nav.csv").read_text())
    times = START + np.array([0.0, 0.5, 1.25])
    loc = Locator.from_cruise(tmp_path)
    assert "TEOS-10" in loc.depth_source
    _, _, depth = _truth(5, times)
    # the synthetic CTD's pressure is Saunders (1981), within ~0.1 % of TEOS-10
    assert np.allclose(loc(times).depth_m, depth, rtol=2e-3, atol=0.02)
    p = saunders_pressure_dbar(np.array([10.0, 100.0, 1000.0]), 43.5)
    assert np.allclose(pressure_to_depth(p, np.full(3, 43.5)), [10.0, 100.0, 1000.0], rtol=2e-3)


def test_southern_western_nmea_track(tmp_path):
    """Raw NMEA logs are a navigation source; S and W positions are negative."""
    def sentence(body: str) -> str:
        ck = 0
        for ch in body:
            ck ^= ord(ch)
        return f"${body}*{ck:02X}"

    lines = [sentence("GPRMC,120000.00,A,3330.000,S,07015.000,W,5.0,90.0,010626,,,A"),
             sentence("GPGGA,120010.00,3330.600,S,07015.600,W,1,08,1.0,5.0,M,0.0,M,,")]
    (tmp_path / "nav.nmea").write_text("\n".join(lines) + "\n")
    pytest.importorskip("segplank.nmea")
    loc = Locator.from_cruise(tmp_path)
    t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
    pos = loc(np.array([t0, t0 + 5, t0 + 10]))
    assert np.allclose(pos.lat, [-33.5, -33.505, -33.51]) and np.allclose(pos.lon, [-70.25, -70.255, -70.26])


def test_missing_or_bad_records_give_nan(tmp_path, caplog):
    (tmp_path / "nav.csv").write_text("when,lat,lon\n1,2,3\n")
    loc = Locator.from_cruise(tmp_path)
    pos = loc(np.array([0.0, 1.0]))
    assert np.isnan(pos.lat).all() and np.isnan(pos.depth_m).all()
    assert "ignored navigation" in caplog.text


def test_a_garbage_row_in_nav_is_skipped_with_its_line_and_the_rest_used(tmp_path, caplog):
    (tmp_path / "nav.csv").write_text("time,lat,lon\n2026-06-01T12:00:00Z,40.0,-70.0\nGARBAGE,x,y\n"
                                      "2026-06-01T12:00:10Z,40.1,-70.1\n")
    loc = Locator.from_cruise(tmp_path)
    t0 = epoch_seconds([datetime(2026, 6, 1, 12, 0, 5, tzinfo=UTC)])
    pos = loc(t0)
    assert pos.lat[0] == pytest.approx(40.05) and pos.lon[0] == pytest.approx(-70.05)
    assert "line 3" in caplog.text and "ignored navigation" not in caplog.text


def test_a_row_with_too_many_fields_is_skipped_too(tmp_path, caplog):
    (tmp_path / "nav.csv").write_text("time,lat,lon\n2026-06-01T12:00:00Z,40.0,-70.0\n1,2,3,4,5\n"
                                      "2026-06-01T12:00:10Z,40.1,-70.1\n")
    pos = Locator.from_cruise(tmp_path)(epoch_seconds([datetime(2026, 6, 1, 12, 0, 5, tzinfo=UTC)]))
    assert pos.lat[0] == pytest.approx(40.05)
    assert "more fields than the header" in caplog.text and "ignored navigation" not in caplog.text


CNV = ("* Sea-Bird SBE 9 Data File:\n* NMEA UTC (Time) = Jun 01 2026  12:00:00\n# nquan = 3\n# nvalues = 4\n"
       "# name 0 = timeS: Time, Elapsed [seconds]\n# name 1 = prDM: Pressure, Digiquartz [db]\n"
       "# name 2 = depSM: Depth [salt water, m]\n*END*\n")


def _warnings_naming(caplog, path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "segplank" and r.levelname == "WARNING"
            and str(path) in r.getMessage()]


@pytest.mark.parametrize("rows, lost", [
    ("      0.000      1.000      0.990\n      1.000      2.000      1.980\n      2.000      3.000      2.970\n"
     "      3.000      4.0", "line 12 '3.000      4.0'"),  # the cast ends mid-row
    ("      0.000      1.000      0.990\n      1.000      1.980\n      2.000      3.000      2.970\n"
     "      3.000      4.000      3.960\n", "line 10 '1.000      1.980'"),  # a field missing
])
def test_locator_logs_the_ctd_readers_warnings_once(tmp_path, caplog, rows, lost):
    """`infer` once dropped CtdRecord.warnings: rows a damaged .cnv lost went unsaid."""
    p = tmp_path / "cast.cnv"
    p.write_text(CNV + rows)
    with caplog.at_level("WARNING", logger="segplank"):
        loc = Locator.from_cruise(tmp_path)
    said = _warnings_naming(caplog, p)
    skipped = [m for m in said if "not rows of 3 values and were skipped" in m]
    assert len(skipped) == 1 and skipped[0].startswith(f"{p}: 1 line(s)") and lost in skipped[0]
    assert [m for m in said if "nvalues = 4 but 3 rows" in m] == [f"{p}: header says nvalues = 4 but 3 rows were read"]
    assert len(said) == 2
    t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
    assert loc(np.array([t0 + 2.0])).depth_m[0] == pytest.approx(2.97)  # the rows that read are used


@pytest.mark.parametrize("name, text", [("ctd.csv", "depth,temperature\n1.0,14.0\n2.0,13.0\n"),
                                        ("cast.cnv", "# name 0 = depSM: Depth [salt water, m]\n*END*\n      1.000\n")])
def test_a_ctd_without_times_is_ignored_with_one_line_saying_so(tmp_path, caplog, name, text):
    """It was used, then its frames were reported 'outside the CTD record' instead of the missing time column."""
    p = tmp_path / name
    p.write_text(text)
    with caplog.at_level("WARNING", logger="segplank"):
        loc = Locator.from_cruise(tmp_path)
    assert loc.ctd is None and loc.depth_source == "none"
    said = _warnings_naming(caplog, p)
    assert len(said) == 1 and said[0].startswith(f"ignored CTD {p}: no time column") and said[0].endswith(
        "depths will be NaN") and "\n" not in said[0]
    assert np.isnan(loc(np.array([START])).depth_m).all()
