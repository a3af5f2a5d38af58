"""CTD readers on hand-written files holding one real-world quirk each, and the join by time."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segplank.ctd import CtdError, CtdRecord, check_join, ctd_variables, join_ctd, read_ctd

DATA = Path(__file__).parent / "data" / "ctd"


def utc(*stamps: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(s, tz="UTC") for s in stamps]


def times(record: CtdRecord) -> list[pd.Timestamp]:
    return record.data["time"].dt.round("s").tolist()


def test_cnv_with_every_quirk_keeps_every_row():
    """Latin-1 header, NMEA UTC 'none', run-together fields, bad_flag, text after *END*, truncated row."""
    r = read_ctd(DATA / "quirks.cnv")
    assert len(r.data) == 6  # 7 rows in the file (nvalues = 7), the truncated one reported below
    assert r.time_source == "timeS+start_time"  # no NMEA time, so the start_time + timeS (not - timeS[0])
    assert times(r) == utc(*(f"2026-06-01 12:00:{s}" for s in range(10, 16)))
    assert r.position == pytest.approx((-33.025, -71.6375), abs=1e-6)  # 33 01.50 S, 071 38.25 W
    # two sensor sets: the primary takes the canonical names, the secondary keeps its own
    assert list(r.data.columns) == ["time", "timeS", "timeJ", "pressure_dbar", "temperature_c", "t190C",
                                    "conductivity", "salinity_psu", "sal11", "oxygen_umol_kg", "sbeox1Mm_Kg",
                                    "fluorescence_mg_m3", "depth_m", "flag"]
    # '    13.5181-218.764914' and '   250.3456-218.764914' split by the 11-character width
    row = r.data.iloc[2]
    assert (row.temperature_c, row.t190C, row.oxygen_umol_kg, row.sbeox1Mm_Kg) == (13.5181, -218.764914, 250.3456,
                                                                                  -218.764914)
    assert row.depth_m == 3.036 and row.pressure_dbar == 3.051
    # bad_flag -9.990e-29 → NaN, nowhere else
    nan = r.data.drop(columns="time").isna()
    assert set(zip(*np.nonzero(nan.to_numpy()), strict=True)) == {
        (1, nan.columns.get_loc("t190C")), (1, nan.columns.get_loc("sal11")),
        (3, nan.columns.get_loc("temperature_c")), (3, nan.columns.get_loc("salinity_psu"))}
    w = "\n".join(r.warnings)
    assert "Latin-1" in w and "NMEA UTC (Time) = none" in w
    assert "2 line(s)" in w and "line 46 'Winch stopped" in w and "line 49" in w
    assert "nvalues = 7 but 6 rows" in w and "2 row(s) hold bad_flag" in w
    assert r.units["temperature_c"] == "ITS-90, deg C" and r.units["sbeox1Mm_Kg"] == "umol/kg"
    assert r.units["time"] == "UTC"


def test_nmea_utc_beats_start_time_and_time_source_chooses():
    """SBE 19plus, CRLF lines, lat/lon on every scan; the instrument clock is 5 s behind the GPS."""
    r = read_ctd(DATA / "nmea_time.cnv")
    assert r.time_source == "timeS+NMEA UTC"
    assert times(r) == utc(*(f"2026-06-01 12:00:0{s}" for s in range(3, 8)))
    assert r.position == pytest.approx((43 + 24.51 / 60, 7.6), abs=1e-6)
    assert r.data["lat"].tolist() == [43.4085, 43.4086, 43.4087, 43.4088, 43.4089]
    assert r.data["lon"].iloc[-1] == 7.6008
    assert r.data["oxygen_ml_l"].tolist() == [5.5, 5.4, 5.3, 5.2, 5.1] and "oxygen_umol_kg" not in r.data
    assert r.units["oxygen_ml_l"] == "ml/l" and r.units["pressure_dbar"] == "db"
    assert any("-5 s from NMEA UTC" in w for w in r.warnings)

    s = read_ctd(DATA / "nmea_time.cnv", time_source="start_time")
    assert s.time_source == "timeS+start_time" and times(s)[0] == utc("2026-06-01 11:59:58")[0]
    paris = read_ctd(DATA / "nmea_time.cnv", time_source="start_time", tz="Europe/Paris")  # instrument clock in CEST
    assert times(paris)[0] == utc("2026-06-01 09:59:58")[0]
    assert read_ctd(DATA / "nmea_time.cnv", time_source="nmea", tz="Europe/Paris").data["time"].equals(r.data["time"])


def test_absolute_time_column_wins():
    for mode in ("auto", "nmea"):
        r = read_ctd(DATA / "absolute.cnv", time_source=mode)
        assert r.time_source == "timeQ"
        assert times(r) == utc("2026-06-01 12:00:05", "2026-06-01 12:00:06", "2026-06-01 12:00:07")
    s = read_ctd(DATA / "absolute.cnv", time_source="start_time", tz="Europe/Paris")  # 'System UTC': tz not applied
    assert s.time_source == "timeS+start_time" and times(s)[0] == utc("2026-06-01 11:59:50")[0]


def test_julian_days_take_the_year_from_start_time_across_new_year():
    r = read_ctd(DATA / "julian.cnv")
    assert r.time_source == "timeJ+start_time"
    assert times(r) == utc("2025-12-31 23:59:58", "2025-12-31 23:59:59", "2026-01-01 00:00:00", "2026-01-01 00:00:01")


def test_a_time_source_the_file_lacks_is_one_line_naming_the_file():
    with pytest.raises(CtdError, match="quirks.cnv: time_source='nmea' needs") as e:
        read_ctd(DATA / "quirks.cnv", time_source="nmea")
    assert "\n" not in str(e.value)
    with pytest.raises(CtdError, match="julian.cnv: time_source='nmea'"):  # timeJ is the instrument's, not GPS
        read_ctd(DATA / "julian.cnv", time_source="nmea")
    with pytest.raises(ValueError, match="time_source must be one of"):
        read_ctd(DATA / "quirks.cnv", time_source="gps")


def test_unreadable_cnv_files(tmp_path):
    no_end = tmp_path / "no_end.cnv"
    no_end.write_text("* Sea-Bird SBE 9 Data File:\n# name 0 = prDM: Pressure [db]\n      1.000\n")
    with pytest.raises(CtdError, match="no_end.cnv: no '\\*END\\*' line"):
        read_ctd(no_end)
    binary = tmp_path / "bin.cnv"
    binary.write_text("# name 0 = prDM: Pressure [db]\n# file_type = binary\n*END*\n")
    with pytest.raises(CtdError, match="bin.cnv: file_type = binary; re-run"):
        read_ctd(binary)
    with pytest.raises(CtdError, match="absent.cnv: CTD file not found"):
        read_ctd(tmp_path / "absent.cnv")
    with pytest.raises(CtdError, match="x.xlsx: unknown CTD file type"):
        read_ctd(tmp_path / "x.xlsx")


def test_cnv_without_time_keeps_its_rows(tmp_path):
    p = tmp_path / "cast.cnv"
    p.write_text("# name 0 = prDM: Pressure [db]\n# name 1 = t090C: Temperature [ITS-90, deg C]\n*END*\n"
                 "      1.000    14.0000\n      2.000    13.0000\n")
    r = read_ctd(p)
    assert r.time_source == "none" and len(r.data) == 2 and r.data["time"].isna().all()
    assert str(r.data["time"].dtype) == "datetime64[ns, UTC]"
    assert any("join_ctd cannot use" in w for w in r.warnings)


def test_csv_aliases_units_and_bad_values_are_reported_not_dropped():
    r = read_ctd(DATA / "tow.csv")
    assert r.time_source == "csv time column"
    assert list(r.data.columns) == ["time", "pressure_dbar", "temperature_c", "salinity_psu", "fluorescence_mg_m3",
                                    "oxygen_umol_kg", "Turbidity", "station"]
    # naive = UTC, 'Z', and +02:00 all land on UTC; an unreadable time stays a row with NaT
    assert r.data["time"].tolist()[:3] == utc("2026-06-01 12:00:00", "2026-06-01 12:00:10", "2026-06-01 12:00:20")
    assert pd.isna(r.data["time"].iloc[3])
    assert r.data["pressure_dbar"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert np.isnan(r.data["temperature_c"].iloc[2]) and r.data["temperature_c"].iloc[3] == 11.0
    assert r.units == {"time": "UTC", "pressure_dbar": "dbar", "temperature_c": "deg C", "oxygen_umol_kg": "umol/kg",
                       "Turbidity": "NTU", "salinity_psu": "PSU", "fluorescence_mg_m3": "mg/m^3"}
    assert r.warnings == ["1 value(s) of temperature_c are not numbers, now NaN (data rows 3)",
                          "1 time(s) in 'time' are not readable, left NaT (data rows 4)"]


def test_tsv_epoch_seconds_and_honest_units():
    r = read_ctd(DATA / "epoch.tsv")
    assert r.time_source == "csv timestamp column"
    assert r.data["time"].tolist() == utc("2026-06-01 12:00:00", "2026-06-01 12:00:01.5")
    assert list(r.data.columns) == ["time", "depth_m", "temperature_c", "fluo", "oxygen"]  # RFU, no O2 unit
    assert any("'fluo' is in 'RFU'" in w for w in r.warnings)
    assert any("oxygen column 'oxygen' has no unit" in w for w in r.warnings)


def test_table_without_time_or_depth(tmp_path):
    r = read_ctd(DATA / "notime.txt")  # whitespace-separated, depth only: usable for profiles, not for the join
    assert r.time_source == "none" and r.data["depth_m"].tolist() == [1.0, 2.0] and r.data["time"].isna().all()
    bad = tmp_path / "ctd.csv"
    bad.write_text("station,temp\nB1,14.0\n")
    with pytest.raises(CtdError, match=r"ctd.csv: neither a time nor a pressure/depth column; add 'time'") as e:
        read_ctd(bad)
    assert "\n" not in str(e.value)


def test_naive_csv_times_in_a_local_zone(tmp_path):
    p = tmp_path / "ctd.csv"
    p.write_text("time,depth\n2026-01-15T12:00:00,5\n")
    assert read_ctd(p, tz="Europe/Paris").data["time"].tolist() == utc("2026-01-15 11:00:00")


def record(t_s: np.ndarray, **columns: np.ndarray) -> CtdRecord:
    t = pd.Timestamp("2026-06-01 12:00", tz="UTC") + pd.to_timedelta(t_s, unit="s")
    return CtdRecord(pd.DataFrame({"time": t, **columns}), Path("ctd.csv"), "csv time column")


def objects_at(t_s: list[float]) -> pd.DataFrame:
    t = pd.Timestamp("2026-06-01 12:00", tz="UTC") + pd.to_timedelta(t_s, unit="s")
    return pd.DataFrame({"object_id": np.arange(len(t_s)), "time": t})


def test_join_is_exact_on_a_linear_signal_and_nan_beyond_tolerance():
    t = np.array([0.0, 10.0, 20.0, 30.0, 100.0, 110.0])  # a 70 s gap
    ctd = record(t, temperature_c=10.0 + 0.01 * t, depth_m=2.0 * t)
    at = [0.0, 2.5, 10.0, 17.25, 29.999, 34.0, 36.0, 65.0, 104.5, -3.0, -6.0]
    out = join_ctd(objects_at(at), ctd, tolerance_s=5.0)
    x = np.array(at)
    inside = np.array([True, True, True, True, True, True, False, False, True, True, False])
    # 34 s: 4 s after a sample, so linear towards the next one 70 s on; -3 s: the first value holds
    expect = np.where(inside, 10.0 + 0.01 * np.clip(x, 0, None), np.nan)
    np.testing.assert_allclose(out["ctd_temperature_c"], expect, rtol=1e-12, equal_nan=True)
    assert out["ctd_depth_m"].iloc[3] == pytest.approx(34.5, rel=1e-12)
    assert list(out.columns) == ["object_id", "time", "ctd_temperature_c", "ctd_depth_m"]
    assert "ctd_temperature_c" not in objects_at(at)  # input untouched


def test_join_edge_cases():
    ctd = record(np.array([0.0, 10.0]), temperature_c=np.array([10.0, 20.0]), salinity_psu=np.array([38.0, 39.0]))
    objs = objects_at([5.0, 5.0])
    objs.loc[1, "time"] = pd.NaT
    out = join_ctd(objs, ctd, columns=["salinity_psu"])
    assert out["ctd_salinity_psu"].tolist()[0] == 38.5 and np.isnan(out["ctd_salinity_psu"].iloc[1])
    assert "ctd_temperature_c" not in out
    empty = join_ctd(objects_at([]), ctd)
    assert len(empty) == 0 and empty["ctd_temperature_c"].dtype == np.float64
    with pytest.raises(ValueError, match="tz-aware"):
        join_ctd(pd.DataFrame({"time": pd.to_datetime(["2026-06-01 12:00"])}), ctd)
    with pytest.raises(ValueError, match="no CTD column"):
        join_ctd(objs, ctd, columns=["oxygen_umol_kg"])
    with pytest.raises(CtdError, match="notime.txt: no usable CTD times"):
        join_ctd(objs, read_ctd(DATA / "notime.txt"))


def test_join_skips_bad_flag_samples_per_column():
    """quirks.cnv: t090C is NaN at 12:00:13, so 12:00:12.5 interpolates between 12:00:12 and 12:00:14."""
    out = join_ctd(objects_at([12.5, 11.5]), read_ctd(DATA / "quirks.cnv"), columns=["temperature_c", "pressure_dbar"])
    assert out["ctd_temperature_c"].tolist() == pytest.approx([13.5181 + (13.4700 - 13.5181) / 4,
                                                                (13.4987 + 13.5181) / 2], rel=1e-12)
    assert out["ctd_pressure_dbar"].tolist() == pytest.approx([(3.051 + 4.068) / 2, (2.034 + 3.051) / 2], rel=1e-12)


def test_a_navigation_file_is_no_ctd_record(tmp_path):
    """Joined, its lat/lon replaced the CTD columns; now it is refused unless its columns are asked for."""
    p = tmp_path / "nav.csv"
    p.write_text("time,lat,lon,speed_kn\n2026-06-01T12:00:00Z,43.0,7.0,5.1\n2026-06-01T12:00:10Z,43.1,7.1,5.2\n")
    nav = read_ctd(p)
    assert ctd_variables(nav) == []
    with pytest.raises(CtdError, match=r"nav.csv: no CTD variable \(it has lat, lon, speed_kn\); is it a navigation "
                                       r"file\? pass the CTD record") as e:
        join_ctd(objects_at([5.0]), nav)
    assert "\n" not in str(e.value)
    with pytest.raises(CtdError, match="nav.csv: no CTD variable"):
        check_join(nav, objects_at([5.0])["time"])
    assert join_ctd(objects_at([5.0]), nav, columns=["lat"])["ctd_lat"].iloc[0] == pytest.approx(43.05)
    cast = read_ctd(DATA / "nmea_time.cnv")  # a CTD that logs its position: lat/lon still joined beside it
    assert "lat" not in ctd_variables(cast) and "pressure_dbar" in ctd_variables(cast)
    assert {"ctd_lat", "ctd_pressure_dbar"} <= set(join_ctd(objects_at([5.0]), cast).columns)


def test_check_join_refuses_times_no_sample_is_near():
    ctd = record(np.array([0.0, 10.0]), temperature_c=np.array([10.0, 20.0]))
    check_join(ctd, objects_at([14.0, 86400.0])["time"], tolerance_s=5.0)  # one time 4 s after the last sample
    with pytest.raises(CtdError, match=r"ctd.csv: no CTD sample within 5 s of any of the 2 times to join "
                                       r"\(CTD 2026-06-01 12:00:00 to 2026-06-01 12:00:10, run 2026-06-01 12:00:16 "
                                       r"to 2026-06-02 12:00:00 UTC\); pass the cast recorded during this run"):
        check_join(ctd, objects_at([16.0, 86400.0])["time"], tolerance_s=5.0)
    check_join(ctd, objects_at([])["time"])  # nothing to join, nothing to refuse
    with pytest.raises(CtdError, match="notime.txt: no usable CTD times"):
        check_join(read_ctd(DATA / "notime.txt"), objects_at([0.0])["time"])
