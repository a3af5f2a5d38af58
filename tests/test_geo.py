import numpy as np
import pandas as pd

from segplank.geo import Locator, Track


def test_track_interpolates_and_refuses_to_extrapolate(tmp_path):
    p = tmp_path / "nav.csv"
    pd.DataFrame({"time": ["2026-06-01T12:00:00Z", "2026-06-01T12:00:10Z", "2026-06-01T12:10:00Z"],
                  "lat": [43.0, 43.1, 44.0], "lon": [-7.0, -7.2, -8.0]}).to_csv(p, index=False)
    t = Track.read_csv(p, Locator.NAV)
    t0 = pd.Timestamp("2026-06-01T12:00:00Z").timestamp()
    lat = t.at(np.array([t0 + 5, t0 - 1, t0 + 20, t0 + 10]), "lat")
    assert np.isclose(lat[0], 43.05) and np.isclose(lat[3], 43.1)
    assert np.isnan(lat[1])  # before the record
    assert np.isnan(lat[2])  # inside a 590 s gap in the record


def test_locator_from_synthetic_cruise(small_cruise):
    from segplank.config import load_config
    from segplank.frames import find_frames
    from segplank.geo import epoch_seconds

    frames = find_frames(small_cruise, load_config(None, small_cruise).instrument)
    lat, lon, depth = Locator.from_cruise(small_cruise)(epoch_seconds([f.timestamp for f in frames]))
    assert np.isfinite(lat).all() and np.isfinite(lon).all() and np.isfinite(depth).all()
    assert (depth > 0).all()


def test_missing_or_bad_records_give_nan(tmp_path, caplog):
    (tmp_path / "nav.csv").write_text("when,lat,lon\n1,2,3\n")
    loc = Locator.from_cruise(tmp_path)
    lat, lon, depth = loc(np.array([0.0, 1.0]))
    assert np.isnan(lat).all() and np.isnan(depth).all()
    assert "ignored navigation" in caplog.text
