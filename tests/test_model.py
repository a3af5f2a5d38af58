import numpy as np
import pytest
import torch

from segplank.model.checkpoint import Checkpoint, CheckpointError, ClassMap, load_checkpoint
from segplank.model.predict import TilePredictor

from .conftest import TINY


def test_checkpoint_round_trip_is_self_describing(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    assert ck.model_config == TINY
    assert ck.classes.names[0] == "copepod" and ck.classes.is_plankton[:5] == (True,) * 5
    assert ck.classes.is_plankton[5:] == (False,) * 3
    assert ck.segplank_version and ck.trained_on == {"note": "random"}
    model = ck.build("cpu", tile_size=128)
    assert model.transform.min_size == (128,)


@pytest.mark.parametrize("content, words", [
    (b"", "not a readable segplank checkpoint"),
    (b"hello, not a model", "not a readable segplank checkpoint"),
])
def test_bad_model_files_fail_with_one_line(tmp_path, content, words):
    p = tmp_path / "m.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_foreign_and_mismatched_checkpoints(tmp_path, tiny_checkpoint):
    p = tmp_path / "foreign.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(CheckpointError, match="not a segplank checkpoint"):
        load_checkpoint(p)
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["classes"] = payload["classes"][:3]
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="predict 8 classes but the checkpoint lists 3"):
        load_checkpoint(tmp_path / "mixed.pt")
    raw = tmp_path / "cut.pt"
    raw.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_predictor_empty_tile_and_box_relative_masks(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    model = ck.build("cpu", tile_size=128)
    thr = np.zeros(len(ck.classes) + 1, np.float32)
    pred = TilePredictor(model, ck.classes, torch.device("cpu"), thr, batch_size=2)
    tiles = np.ones((3, 128, 128), np.float32)
    tiles[1, 40:60, 50:90] = 0.2
    out = pred(tiles)
    assert len(out) == 3
    for d in out:
        assert d.masks.probs.shape[1:] == (28, 28)
        assert d.boxes.shape[1] == 4 and len(d) <= 50
        assert (d.boxes[:, 2] <= 128).all() and (d.boxes[:, 0] >= 0).all()
        # plankton detections got a mask from the head; others a full box
        plank = ClassMap.plankton_mask(ck.classes, d.labels)
        assert torch.equal(d.extra["has_mask"], plank)
    # extra proposals (connected pieces of the foreground map) are scored beside the RPN's
    extra = [np.zeros((0, 4), np.float32), np.array([[50, 40, 90, 60]], np.float32), np.zeros((0, 4), np.float32)]
    assert len(pred(tiles, extra)) == 3


def test_checkpoint_of_a_pretrained_model_builds_offline(tmp_path, monkeypatch):
    """A model trained from ImageNet weights loads from its checkpoint alone: no download at inference."""
    import socket

    from segplank.config import ModelConfig
    from segplank.model.build import build_model
    from segplank.synth import CATEGORIES

    cfg = ModelConfig(name="r18", backbone="resnet18", init="imagenet", fpn_channels=16, box_head_dim=32,
                      mask_head_channels=16, tile_size=128)
    classes = ClassMap.from_coco_categories(CATEGORIES)
    path = Checkpoint(cfg, classes, build_model(cfg, len(classes), pretrained=False).state_dict(),
                      trained_on={}).save(tmp_path / "r18.pt")

    def no_network(*args, **kwargs):
        raise AssertionError("loading a checkpoint tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = load_checkpoint(path).build("cpu")
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"  # the ImageNet recipe's layers


def _random_norms(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch norms with statistics and scales far from their initial ones (what training leaves)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return net.eval()


def test_folded_norms_give_the_same_outputs_and_leave_the_network_as_it_was():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from segplank.config import ModelConfig
    from segplank.model.build import build_model
    from segplank.model.classifier import ClassifierConfig, VignetteClassifier, VignetteNet
    from segplank.model.fuse import fused_for_inference

    def norms(m):
        return sum(isinstance(x, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)) for x in m.modules())

    det = _random_norms(build_model(ModelConfig(backbone="mobilenet_v3_large", width_mult=0.5, fpn_channels=32,
                                                tile_size=128), 3, pretrained=False))
    keys = set(det.state_dict())
    fused = fused_for_inference(det)
    assert norms(det) > 20 and norms(fused) == 0 and set(det.state_dict()) == keys  # the original is untouched
    x = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        for name, f in det.backbone(x).items():
            torch.testing.assert_close(fused.backbone(x)[name], f, rtol=1e-4, atol=1e-4)

    net = _random_norms(VignetteNet(5, width=8), seed=1)
    keys = set(net.state_dict())
    clf = VignetteClassifier(net, ClassifierConfig(width=8), torch.device("cpu"))
    assert norms(clf.net) == 0 and set(net.state_dict()) == keys  # a network being trained is saved whole
    v, s = torch.rand(6, 2, 48, 48), torch.randn(6, 3)
    with torch.inference_mode():
        want = torch.softmax(net(v, s), 1).numpy()
    np.testing.assert_allclose(clf.predict(v.numpy(), s.numpy()), want, rtol=1e-4, atol=1e-5)
