import pytest

from segplank.config import ConfigError, TrainConfig, build_config, load_config


def test_defaults_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  tile_size: 512\n  overlap: 32\n")
    cfg = load_config(p)
    assert cfg.tiling.tile_size == 512 and cfg.tiling.overlap == 32
    assert cfg.instrument.polarity == "dark_on_bright"


def test_repo_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("default.yaml", "uvp.yaml"):
        load_config(root / name)
    for name in ("train_fast.yaml", "train_accurate.yaml", "train_demo.yaml"):
        from segplank.config import read_yaml

        build_config(read_yaml(root / name), name, TrainConfig)


@pytest.mark.parametrize("text, words", [
    ("tiling:\n  tile_sise: 512\n", ["unknown key", "tiling.tile_sise"]),
    ("tiling:\n  overlap: -3\n", ["tiling.overlap", "-3", "greater than or equal to 8"]),
    ("instrument:\n  polarity: dark\n", ["instrument.polarity", "'dark'", "dark_on_bright", "bright_on_dark"]),
    ("tiling:\n  tile_size: 100\n  overlap: 60\n", ["overlap (60) must be less than half"]),
    ("instrument:\n  timestamp_regex: '\\\\d+'\n", ["(?P<ts>"]),
    ("version: 7\n", ["version 7"]),
    ("- a\n- b\n", ["must be a mapping"]),
    ("tiling: [\n", ["not valid YAML"]),
])
def test_errors_name_file_key_value_and_remedy(tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cruise_yaml_sets_instrument(tmp_path):
    (tmp_path / "cruise.yaml").write_text("instrument:\n  polarity: bright_on_dark\n  pixel_size_um: 73\nsynth: {seed: 1}\n")
    cfg = load_config(None, tmp_path)
    assert cfg.instrument.polarity == "bright_on_dark" and cfg.instrument.pixel_size_um == 73


def test_volume_per_frame_has_no_default():
    """Issue 18, item 10: every concentration scales with it, so it is unknown until stated (not 1 L)."""
    from pathlib import Path

    from segplank.config import InstrumentConfig

    assert InstrumentConfig().volume_per_frame_l is None
    assert load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml").instrument.volume_per_frame_l is None
    with pytest.raises(ConfigError, match="instrument.volume_per_frame_l"):
        build_config({"instrument": {"volume_per_frame_l": 0}})


def test_cruise_yaml_overriding_the_config_is_logged(tmp_path, caplog):
    """Defaults < --config < cruise.yaml < overrides; each value cruise.yaml changes is one warning line."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("instrument: {pixel_size_um: 10, volume_per_frame_l: 0.5, name: UVP, frame_rate_hz: 1}\n"
                   "tiling: {tile_size: 512, overlap: 32}\n")
    cruise = tmp_path / "cruise"
    cruise.mkdir()
    (cruise / "cruise.yaml").write_text("instrument: {pixel_size_um: 73, volume_per_frame_l: 0.5, name: UVP, "
                                        "frame_rate_hz: 4, polarity: bright_on_dark}\n")
    with caplog.at_level("WARNING", logger="segplank"):
        got = load_config(cfg, cruise, {"instrument": {"frame_rate_hz": 3}})
    assert (got.instrument.pixel_size_um, got.instrument.volume_per_frame_l, got.instrument.frame_rate_hz) == (73, 0.5, 3)
    assert got.instrument.polarity == "bright_on_dark" and got.tiling.tile_size == 512
    lines = [r.getMessage() for r in caplog.records if r.name == "segplank"]
    # equal values, values the config left unset and values the command line replaces again are not warned
    assert len(lines) == 1, lines
    assert "instrument.pixel_size_um" in lines[0] and str(cfg) in lines[0] and str(cruise / "cruise.yaml") in lines[0]
    assert "10" in lines[0] and "73" in lines[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="segplank"):
        load_config(None, cruise)  # no --config: the cruise only overrides defaults
    assert not caplog.records


def test_cruise_yaml_sets_geo(tmp_path):
    (tmp_path / "cruise.yaml").write_text("geo: {nav: [track*.csv], max_gap_s: 5}\n")
    cfg = load_config(None, tmp_path)
    assert cfg.geo.nav == ("track*.csv",) and cfg.geo.max_gap_s == 5 and cfg.geo.ctd == ("ctd*.csv", "*.cnv")


@pytest.mark.parametrize("text, words", [
    ("instrumnet: {pixel_size_um: 73}\n", ["unknown section 'instrumnet'", "did you mean 'instrument'", "instrument, geo"]),
    ("bogus: 1\n", ["unknown section 'bogus'", "instrument, geo"]),
    ("tiling: {tile_size: 512}\n", ["'tiling'", "--config"]),
    ("detector: {batch_tiles: 2}\n", ["'detector'", "--config"]),
])
def test_cruise_yaml_refuses_what_it_cannot_set(tmp_path, text, words):
    """Issue 18, item 9: a section of cruise.yaml the pipeline does not take is one error line, never dropped."""
    (tmp_path / "cruise.yaml").write_text("instrument: {pixel_size_um: 73}\n" + text)
    with pytest.raises(ConfigError) as e:
        load_config(None, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cruise.yaml") in msg
    for w in words:
        assert w in msg
