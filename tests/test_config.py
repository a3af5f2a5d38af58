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
