import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image

from segplank.concentration import along_track_km, concentrations, haversine_km, track_concentrations
from segplank.plots import profile_figure, section_geotiff, track_map

T0 = pd.Timestamp("2026-06-01T12:00:00Z")
KM_PER_DEG = 111.195  # 2π × 6371.0088 km / 360


def _times(seconds) -> pd.Series:
    return pd.Series(T0 + pd.to_timedelta(np.asarray(seconds, float), unit="s"))


@pytest.fixture
def cast():
    """(objects, frames) of a vertical cast: 7 processed frames (one without depth), 2 L each; 7 objects."""
    frames = pd.DataFrame({
        "frame_path": [f"f{i}.png" for i in range(7)], "time": _times(range(7)), "lat": 43.0, "lon": 7.0,
        "depth_m": [1.0, 3.0, 4.0, 6.0, 9.0, np.nan, 12.0],
        "ctd_temperature_c": [10.0, 11.0, 12.0, 20.0, 22.0, 99.0, 30.0],
        "ctd_fluorescence_mg_m3": [1.0, 2.0, np.nan, 4.0, 6.0, 0.0, 8.0],
    })
    objects = pd.DataFrame({
        "time": _times([0, 1, 2, 3, 5, 0, 6]), "lat": 43.0, "lon": 7.0,
        "depth_m": [0.5, 2.0, 4.9, 7.0, np.nan, 1.0, 20.0],
        "label_name": ["copepod", "copepod", "copepod", "appendicularian", "copepod", "detritus", "copepod"],
        "is_plankton": [True, True, True, True, True, False, True],
    })
    return objects, frames


def _row(conc: pd.DataFrame, depth_min: float, taxon: str) -> pd.Series:
    hit = conc[(conc["depth_min_m"] == depth_min) & (conc["taxon"] == taxon)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_concentration_is_count_over_imaged_volume(cast):
    conc = concentrations(*cast, volume_per_frame_l=2.0)
    assert list(conc.columns[:8]) == ["depth_min_m", "depth_max_m", "taxon", "count", "frames", "volume_per_frame_l",
                                      "volume_m3", "concentration_ind_m3"]
    assert (conc["volume_per_frame_l"] == 2.0).all()  # the table says which volume it divided by
    # bins with frames only (0-5, 5-10, 10-15; none at 15-20 or 20-25), each with both plankton taxa
    assert conc[["depth_min_m", "depth_max_m"]].drop_duplicates().values.tolist() == [[0, 5], [5, 10], [10, 15]]
    assert sorted(conc["taxon"].unique()) == ["appendicularian", "copepod"]  # detritus is not plankton
    cop0 = _row(conc, 0.0, "copepod")
    assert (cop0["count"], cop0["frames"]) == (3, 3)
    assert cop0["volume_m3"] == pytest.approx(3 * 2.0 / 1000)
    assert cop0["concentration_ind_m3"] == pytest.approx(3 / (3 * 0.002))  # 500
    assert _row(conc, 5.0, "appendicularian")["concentration_ind_m3"] == pytest.approx(1 / (2 * 0.002))  # 250


def test_absences_are_rows_with_zero_count(cast):
    conc = concentrations(*cast, volume_per_frame_l=2.0)
    assert len(conc) == 3 * 2
    zero = _row(conc, 10.0, "copepod")
    assert (zero["count"], zero["frames"], zero["concentration_ind_m3"]) == (0, 1, 0.0)
    assert _row(conc, 0.0, "appendicularian")["count"] == 0
    assert conc["count"].dtype == np.int64


def test_nan_depths_and_bins_without_frames_are_left_out_and_counted(cast):
    conc = concentrations(*cast, volume_per_frame_l=2.0)
    assert conc.attrs["excluded_frames"] == 1
    assert conc.attrs["excluded_objects"] == 1  # the copepod without depth
    assert conc.attrs["unbinned_objects"] == 1  # the copepod at 20 m, where no frame was
    assert conc["frames"].groupby(conc["depth_min_m"]).first().sum() == 6
    assert conc["count"].sum() == 4


def test_ctd_means_per_bin_skip_missing_values(cast):
    conc = concentrations(*cast, volume_per_frame_l=2.0)
    per_bin = conc.groupby("depth_min_m")[["mean_ctd_temperature_c", "mean_ctd_fluorescence_mg_m3"]].first()
    assert per_bin["mean_ctd_temperature_c"].tolist() == pytest.approx([11.0, 21.0, 30.0])  # 99 had no depth
    assert per_bin["mean_ctd_fluorescence_mg_m3"].tolist() == pytest.approx([1.5, 5.0, 8.0])


def test_taxa_all_and_named(cast):
    every = concentrations(*cast, volume_per_frame_l=2.0, taxa="all")
    assert _row(every, 0.0, "detritus")["count"] == 1
    named = concentrations(*cast, volume_per_frame_l=2.0, taxa=["copepod", "chaetognath"])
    assert sorted(named["taxon"].unique()) == ["chaetognath", "copepod"]
    assert named.loc[named["taxon"] == "chaetognath", "count"].tolist() == [0, 0, 0]  # absent, measured
    with pytest.raises(ValueError, match="taxa"):
        concentrations(*cast, volume_per_frame_l=2.0, taxa="fish")
    with pytest.raises(ValueError, match="positive"):
        concentrations(*cast, volume_per_frame_l=0.0)


def test_depth_bin_size(cast):
    conc = concentrations(*cast, volume_per_frame_l=2.0, depth_bin_m=2.5)
    assert sorted(conc["depth_min_m"].unique()) == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert _row(conc, 2.5, "copepod")[["count", "frames"]].tolist() == [1, 2]  # 4.9 m; frames at 3 and 4 m


def test_haversine_along_a_meridian():
    assert haversine_km(np.array([0.0]), np.array([10.0]), np.array([1.0]), np.array([10.0]))[0] == \
        pytest.approx(KM_PER_DEG, abs=0.01)
    track = pd.DataFrame({"time": _times([0, 60, 120]), "lat": [45.0, 46.0, 45.0], "lon": 3.0})
    km = along_track_km(track, _times([0, 30, 120, 121, -1]))
    assert km[:3] == pytest.approx([0.0, KM_PER_DEG / 2, 2 * KM_PER_DEG], abs=0.01)  # back and forth adds up
    assert np.isnan(km[3:]).all()  # outside the track: no guess


@pytest.fixture
def transect():
    """(objects, frames): 5 frames down a meridian every 0.5° (≈ 55.6 km), 1 L each, at two depth bins; 5 copepods."""
    frames = pd.DataFrame({
        "frame_path": [f"f{i}.png" for i in range(5)], "time": _times([0, 60, 120, 180, 240]),
        "lat": [0.0, 0.5, 1.0, 1.5, 2.0], "lon": 10.0, "depth_m": [12.0, 13.0, 22.0, 11.0, 14.0],
    })
    objects = pd.DataFrame({  # position from time along the track, not from these lat/lon
        "time": _times([30, 120, 180, 180, 300]), "lat": np.nan, "lon": np.nan,
        "depth_m": [12.0, 21.0, 11.0, 11.0, 12.0], "label_name": "copepod", "is_plankton": True,
    })
    return objects, frames


def test_distance_bins_along_a_meridian(transect):
    conc = concentrations(*transect, volume_per_frame_l=1.0, depth_bin_m=5.0, distance_bin_m=100_000)
    assert list(conc.columns[:4]) == ["depth_min_m", "depth_max_m", "distance_min_km", "distance_max_km"]
    got = {(r.distance_min_km, r.depth_min_m): (r.count, r.frames, r.concentration_ind_m3) for r in conc.itertuples()}
    assert got == {  # 0, 55.6 km | 111.2, 166.8 km | 222.4 km
        (0.0, 10.0): (1, 2, pytest.approx(500.0)),
        (100.0, 10.0): (2, 1, pytest.approx(2000.0)),
        (100.0, 20.0): (1, 1, pytest.approx(1000.0)),
        (200.0, 10.0): (0, 1, 0.0),
    }
    assert (conc["distance_max_km"] - conc["distance_min_km"] == 100.0).all()
    assert conc.attrs["excluded_objects"] == 1  # after the last frame: no distance


def test_track_concentrations_ignore_depth(transect):
    objects, frames = transect
    frames = frames.assign(depth_m=[np.nan, 13.0, 22.0, 11.0, 14.0])
    bins = track_concentrations(objects, frames, 1.0, distance_bin_km=100.0)
    assert bins["distance_min_km"].tolist() == [0.0, 100.0, 200.0]
    assert bins["frames"].tolist() == [2, 2, 1]
    assert bins["count"].tolist() == [1, 3, 0]
    assert bins["concentration_ind_m3"].tolist() == pytest.approx([500.0, 1500.0, 0.0])
    assert bins["lat"].tolist() == pytest.approx([0.25, 1.25, 2.0])


def _assert_png(path, min_size=(400, 300)):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        im.load()
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas


def test_profile_figure(cast, tmp_path):
    conc = concentrations(*cast, volume_per_frame_l=2.0)
    _assert_png(profile_figure(conc, tmp_path / "fig" / "profile.png"))
    _assert_png(profile_figure(conc, tmp_path / "profile_log.png", log_x=True, ctd=("temperature",)))
    with pytest.raises(ValueError, match="depth-only"):
        profile_figure(concentrations(*cast, volume_per_frame_l=2.0, distance_bin_m=1000), tmp_path / "x.png")


def test_track_map(transect, tmp_path):
    objects, frames = transect
    _assert_png(track_map(frames, objects, tmp_path / "map.png", volume_per_frame_l=1.0, distance_bin_km=50.0))


def test_section_geotiff(transect, tmp_path):
    conc = concentrations(*transect, volume_per_frame_l=1.0, depth_bin_m=5.0, distance_bin_m=100_000)
    path = section_geotiff(conc, tmp_path / "section.tif", taxon="copepod")
    with rasterio.open(path) as src:
        assert (src.count, src.height, src.width) == (1, 3, 3)  # depth 10-25 m × distance 0-300 km
        assert src.dtypes[0] == "float32" and src.crs is None and np.isnan(src.nodata)
        assert tuple(src.transform)[:6] == (100.0, 0.0, 0.0, 0.0, 5.0, 10.0)
        grid = src.read(1)
        tags = src.tags()
    expected = np.array([[500, 2000, 0], [np.nan, np.nan, np.nan], [np.nan, 1000, np.nan]], np.float32)
    np.testing.assert_array_equal(grid, expected)  # NaN where no frame imaged that bin, 0 where none was seen
    assert tags["taxon"] == "copepod" and tags["units"] == "ind m-3"
    assert (tags["distance_bin_km"], tags["depth_bin_m"]) == ("100", "5")
    assert "distance" in tags["x_axis"] and "depth" in tags["y_axis"]
    with pytest.raises(ValueError, match="taxon"):
        section_geotiff(conc, tmp_path / "none.tif", taxon="fish")


def test_an_unstated_volume_is_refused_not_assumed(cast):
    """Issue 18, item 10: every concentration scales with the volume, so None is an error, never 1 L."""
    with pytest.raises(ValueError, match="no volume per frame stated"):
        concentrations(*cast, volume_per_frame_l=None)
    with pytest.raises(ValueError, match="no volume per frame stated"):
        track_concentrations(*cast, volume_per_frame_l=None)


def _fake_run(folder, cast, volume):
    """A finished run's folder (manifest + one shard of each table), whose config states ``volume``."""
    import json

    from segplank.config import InstrumentConfig

    objects, frames = cast
    for kind, table in (("objects", objects), ("frames", frames)):
        (folder / kind).mkdir(parents=True)
        table.to_parquet(folder / kind / "part-00000.parquet", index=False)
    instrument = InstrumentConfig(volume_per_frame_l=volume).model_dump(mode="json")
    (folder / "manifest.json").write_text(json.dumps({"complete": True, "config": {"instrument": instrument}}))
    return folder


def test_profile_refuses_without_a_stated_volume(cast, tmp_path):
    from typer.testing import CliRunner

    from segplank.cli import app

    run = _fake_run(tmp_path / "run", cast, None)
    r = CliRunner().invoke(app, ["profile", str(run)])
    assert r.exit_code == 2
    said = " ".join(r.output.split())
    assert "no volume per frame stated" in said and "--volume-per-frame" in said and str(run) in said
    assert not (run / "profile").exists()
    r = CliRunner().invoke(app, ["profile", str(run), "--volume-per-frame", "2"])
    assert r.exit_code == 0, r.output
    assert "2 L imaged per frame (--volume-per-frame)" in " ".join(r.output.split())
    conc = pd.read_csv(run / "profile" / "concentrations.csv")
    assert (conc["volume_per_frame_l"] == 2.0).all()
    assert _row(conc, 0.0, "copepod")["concentration_ind_m3"] == pytest.approx(500.0)
    r = CliRunner().invoke(app, ["profile", str(run), "--volume-per-frame", "0"])
    assert r.exit_code == 2 and "positive" in r.output


def test_profile_uses_and_reports_the_runs_stated_volume(cast, tmp_path):
    from typer.testing import CliRunner

    from segplank.cli import app

    run = _fake_run(tmp_path / "run", cast, 0.5)
    r = CliRunner().invoke(app, ["profile", str(run)])
    assert r.exit_code == 0, r.output
    assert "0.5 L imaged per frame (instrument.volume_per_frame_l of the run)" in " ".join(r.output.split())
    conc = pd.read_csv(run / "profile" / "concentrations.csv")
    assert (conc["volume_per_frame_l"] == 0.5).all()
    assert _row(conc, 0.0, "copepod")["concentration_ind_m3"] == pytest.approx(3 / (3 * 0.0005))
    r = CliRunner().invoke(app, ["profile", str(run), "--volume-per-frame", "2"])
    assert r.exit_code == 0 and "replaces the 0.5 L" in " ".join(r.output.split())
