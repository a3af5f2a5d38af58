"""From a run to oceanography: CTD join, concentrations, figures, on a cruise whose ocean is known."""
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from segplank.cli import app
from segplank.runs import read_frames, read_objects
from segplank.synth.environment import Environment

from .conftest import tiny_run

runner = CliRunner()
START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_cruise, tiny_checkpoint):
    return tiny_run(small_cruise, tmp_path_factory.mktemp("ocean") / "out", tiny_checkpoint)


def _seconds(times: pd.Series) -> np.ndarray:
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy() - START


def test_join_ctd_matches_the_synthetic_water_column(run, small_cruise):
    r = runner.invoke(app, ["join-ctd", str(run), str(small_cruise / "ctd.csv")])
    assert r.exit_code == 0, r.output
    objects, frames = read_objects(run), read_frames(run)
    assert len(objects) > 0
    env = Environment.for_seed(5)
    s = _seconds(objects["time"])
    # 1 Hz CTD samples, linear interpolation: errors of the tow-yo's curvature, well under 2 cm
    assert np.abs(objects["ctd_depth_m"] - env.depth_m(s)).max() < 0.02
    assert np.abs(objects["depth_m"] - env.depth_m(s)).max() < 0.02
    lat = np.interp(s, g := np.arange(-100, 100, 0.05), env.track(g)[0])
    truth = env.ctd(s, lat)
    # sensor noise is 0.004 °C and 0.015 mg m-3 per sample
    assert np.abs(objects["ctd_temperature_c"] - truth["temperature_c"]).max() < 0.02
    assert np.abs(objects["ctd_fluorescence_mg_m3"] - truth["fluorescence_mg_m3"]).max() < 0.06
    assert {"ctd_oxygen_umol_kg", "ctd_salinity_psu"} <= set(frames.columns)
    assert not any(c.startswith("ctd_time") for c in objects.columns)
    man = json.loads((run / "manifest.json").read_text())
    assert man["ctd_join"]["frames_without_ctd"] == 0
    # joining again replaces the columns, never duplicates them
    assert runner.invoke(app, ["join-ctd", str(run), str(small_cruise / "ctd.csv")]).exit_code == 0
    assert list(read_objects(run).columns) == list(objects.columns)


def test_profile_concentrations_by_hand(run, small_cruise):
    r = runner.invoke(app, ["profile", str(run), "--depth-bin", "1", "--distance-bin", "0.001"])
    assert r.exit_code == 0, r.output
    conc = pd.read_csv(run / "profile" / "concentrations.csv")
    objects, frames = read_objects(run), read_frames(run)
    vol = json.loads((run / "manifest.json").read_text())["config"]["instrument"]["volume_per_frame_l"]
    for (lo, taxon), row in conc.set_index(["depth_min_m", "taxon"]).iterrows():
        n = ((objects["depth_m"] >= lo) & (objects["depth_m"] < lo + 1) & (objects["label_name"] == taxon)).sum()
        f = ((frames["depth_m"] >= lo) & (frames["depth_m"] < lo + 1)).sum()
        assert row["count"] == n and row["frames"] == f
        assert np.isclose(row["concentration_ind_m3"], n / (f * vol / 1000.0))
    assert conc["count"].sum() == len(objects)
    for name in ("profile.png", "track.png"):
        assert (run / "profile" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "profile").glob("section_*.tif"))


def test_bad_inputs_give_one_line(tmp_path, run):
    r = runner.invoke(app, ["join-ctd", str(tmp_path), str(tmp_path / "ctd.csv")])
    assert r.exit_code == 2 and "manifest.json" in r.output
    r = runner.invoke(app, ["join-ctd", str(run), str(tmp_path / "none.cnv")])
    assert r.exit_code == 2 and "none.cnv" in r.output
    r = runner.invoke(app, ["profile", str(tmp_path)])
    assert r.exit_code == 2 and "manifest.json" in r.output


def _run_files(run) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_join_ctd_refuses_a_navigation_file_and_leaves_the_run_untouched(run, small_cruise):
    """nav.csv (time, lat, lon) once exited 0 and replaced the CTD columns with ctd_lat/ctd_lon."""
    assert runner.invoke(app, ["join-ctd", str(run), str(small_cruise / "ctd.csv")]).exit_code == 0
    before = _run_files(run)
    r = runner.invoke(app, ["join-ctd", str(run), str(small_cruise / "nav.csv")])
    msg = " ".join(r.output.split())
    assert r.exit_code == 2 and "nav.csv: no CTD variable" in msg and "navigation file?" in msg
    assert _run_files(run) == before
    assert "ctd_lat" not in read_objects(run).columns and "ctd_temperature_c" in read_objects(run).columns


def test_join_ctd_refuses_a_cast_of_another_year(run, small_cruise, tmp_path):
    """A cast years away once joined with exit 0 and only a count of frames without CTD."""
    ctd = pd.read_csv(small_cruise / "ctd.csv")
    ctd["time"] = (pd.to_datetime(ctd["time"], utc=True) - pd.Timedelta(days=3 * 365)).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    old = tmp_path / "ctd_2023.csv"
    ctd.to_csv(old, index=False)
    before = _run_files(run)
    r = runner.invoke(app, ["join-ctd", str(run), str(old)])
    msg = " ".join(r.output.split())
    assert r.exit_code == 2 and "ctd_2023.csv: no CTD sample within 5 s" in msg, r.output
    assert "CTD 2023-06-02" in msg and "run 2026-06-01" in msg and "pass the cast recorded during this run" in msg
    assert _run_files(run) == before


def test_export_ecotaxa_command_writes_zips_that_pass_the_checker(run, small_cruise):
    r = runner.invoke(app, ["export", "ecotaxa", str(run), "--sample-by", "all", "--no-features"])
    assert r.exit_code == 0, r.output
    assert "all pass the import rules" in " ".join(r.output.split())
    zips = list((run / "ecotaxa").glob("ecotaxa_*.zip"))
    assert len(zips) == 1
    import zipfile

    with zipfile.ZipFile(zips[0]) as z:
        pngs = [n for n in z.namelist() if n.endswith(".png")]
    assert len(pngs) == len(read_objects(run))


def test_ctd_kept_outside_the_cruise_folder_and_no_navigation(tmp_path, small_cruise, tiny_checkpoint):
    """A UVP-like cast: no nav, the CTD joined afterwards; depths come from the join, profile still works."""
    import shutil

    cruise = tmp_path / "cast"
    shutil.copytree(small_cruise / "frames", cruise / "frames")
    shutil.copy(small_cruise / "cruise.yaml", cruise / "cruise.yaml")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 256, overlap: 32}\nfilter: {score_threshold: 0.0}\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["infer", str(cruise), "-o", str(out), "--model", str(tiny_checkpoint), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert read_frames(out)["depth_m"].isna().all()
    r = runner.invoke(app, ["profile", str(out)])
    assert r.exit_code == 2 and "join-ctd" in " ".join(r.output.split())
    r = runner.invoke(app, ["join-ctd", str(out), str(small_cruise / "ctd.csv")])
    assert r.exit_code == 0, r.output
    frames = read_frames(out)
    assert frames["depth_m"].notna().all() and (frames["depth_m"] == frames["ctd_depth_m"]).all()
    r = runner.invoke(app, ["profile", str(out)])
    assert r.exit_code == 0, r.output
    assert "no track map" in r.output and (out / "profile" / "profile.png").exists()
