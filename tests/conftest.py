import json
import os

import pytest
import torch

from segplank.config import ModelConfig
from segplank.model.build import build_model
from segplank.model.checkpoint import Checkpoint, ClassMap
from segplank.synth import CATEGORIES, make_cruise

def pytest_configure(config):
    """Under xdist each worker has a core: one torch thread each (and in the CLI processes the
    tests start), or two workers' threads fight over two cores and a test takes ten times longer."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Commands that set torch's thread count for their process (train, bench) must not set it for later tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


TINY = ModelConfig(name="tiny-test", width_mult=0.25, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                   tile_size=256, detections_per_tile=50, rpn_pre_nms_top_n=200, rpn_post_nms_top_n=100)


def make_tiny(path, favour: int = 1):
    """Random weights, the synthetic classes, class ``favour`` scoring highest: every code path in seconds."""
    import torch

    torch.manual_seed(0)
    classes = ClassMap.from_coco_categories(CATEGORIES)
    model = build_model(TINY, len(classes))
    with torch.no_grad():  # near-uniform class scores, so every proposal yields detections
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.01)
        model.roi_heads.box_predictor.cls_score.bias.zero_()
        model.roi_heads.box_predictor.cls_score.bias[favour] = 3.0
    Checkpoint(TINY, classes, model.state_dict(), trained_on={"note": "random"}).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("model") / "tiny.pt", favour=1)


@pytest.fixture(scope="session")
def tiny_snow_checkpoint(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("model") / "tiny_snow.pt", favour=6)


@pytest.fixture(scope="session")
def small_cruise(tmp_path_factory):
    d = tmp_path_factory.mktemp("cruise") / "c"
    make_cruise(d, 3, seed=5, size=(384, 384))
    return d


def coco(path):
    return json.loads(path.read_text())


def tiny_run(cruise, out, checkpoint, *options: str):
    """``segplank infer`` of a test cruise with the tiny model, every object written (score
    threshold 0) on 256-px tiles; ``out``'s folder also holds the config. Returns ``out``."""
    from typer.testing import CliRunner

    from segplank.cli import app

    cfg = out.parent / f"{out.name}_cfg.yaml"
    cfg.write_text("tiling:\n  tile_size: 256\n  overlap: 32\nfilter:\n  score_threshold: 0.0\n")
    r = CliRunner().invoke(app, ["infer", str(cruise), "-o", str(out), "--model", str(checkpoint),
                                 "--config", str(cfg), *options])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def kept_run(tmp_path_factory, small_cruise, tiny_checkpoint):
    """A real run of the tiny model: non-plankton kept, frame by frame (each object inside its
    frame; stream runs are tested in test_stream.py)."""
    return tiny_run(small_cruise, tmp_path_factory.mktemp("kept_run") / "run", tiny_checkpoint,
                    "--keep-non-plankton", "--no-stream")
