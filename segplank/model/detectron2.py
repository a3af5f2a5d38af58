"""detectron2 Mask R-CNN checkpoints (``model_final.pth``, the model zoo's ``.pkl``) as segplank checkpoints.

The seed pipeline and many plankton groups train detectron2's ``mask_rcnn_R_50_FPN``;
segplank runs torchvision's Mask R-CNN. The two differ in names and in maths, and each
difference is carried over, not ignored:

- class order: detectron2 keeps background last in ``cls_score`` and has no background
  rows in its class-specific box and mask predictors; torchvision has background first
  (with one class the shapes match, so a plain copy would swap plankton and background);
- the MSRA ResNet puts each stage's stride in the 1x1 convolution (``STRIDE_IN_1X1``),
  torchvision's in the 3x3: the ``detectron2_r50`` backbone moves it;
- input: BGR 0-255 less ``PIXEL_MEAN``, over ``PIXEL_STD``: the model config's image mean
  and std (tiles are grey, so the three channels are equal and only the order of the means
  matters);
- ROIAlignV2 (``aligned=True``, adaptive sampling) and anchors not rounded to whole pixels:
  model config options, chosen by the checkpoint.

Every tensor of the file is either used or named as ignored; nothing loads with
``strict=False``. A file is someone else's: ``.pth`` loads with ``weights_only=True`` and a
``.pkl`` through an unpickler that admits numpy arrays and plain containers only.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import ModelConfig
from .build import build_model
from .checkpoint import Checkpoint, CheckpointError, ClassMap

# the depths of the ResNets by blocks per stage (res2..res5): the converter knows R50
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
# in a detectron2 state dict, and not weights of the network
_NOT_WEIGHTS = ("pixel_mean", "pixel_std")
_D2_PIXEL_MEAN = (103.53, 116.28, 123.675)  # detectron2's defaults for its MSRA ResNets, BGR
_D2_PIXEL_STD = (1.0, 1.0, 1.0)


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; anything else (code) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "set")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network's tensors by detectron2 name, from a ``.pth`` or a model-zoo ``.pkl``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; pass detectron2's model_final.pth (or a model zoo .pkl)")
    if path.suffix.lower() == ".pkl":
        try:
            data = _NumpyOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: refused: this pickle needs {e}, and only numpy arrays are read from a "
                                  ".pkl (nothing in it is run)") from None
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable detectron2 .pkl ({type(e).__name__})") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable detectron2 checkpoint with weights only "
                                  f"({type(e).__name__}); pass model_final.pth") from None
    weights = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: no state dict in it (expected a 'model' dict of tensors)")
    out = {}
    for k, v in weights.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
    return out


def _stage_depths(weights: dict[str, torch.Tensor]) -> tuple[int, ...]:
    blocks = {}
    for k in weights:
        m = re.match(r"backbone\.bottom_up\.res(\d)\.(\d+)\.", k)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    return tuple(blocks.get(s, 0) for s in (2, 3, 4, 5))


def check_architecture(weights: dict[str, torch.Tensor], path: Path) -> int:
    """The number of classes of a detectron2 R50-FPN Mask R-CNN; CheckpointError (naming what it is) otherwise."""
    need = ("backbone.bottom_up.stem.conv1.weight", "backbone.fpn_lateral2.weight",
            "proposal_generator.rpn_head.objectness_logits.weight", "roi_heads.box_predictor.cls_score.weight")
    missing = [k for k in need if k not in weights]
    if missing:
        raise CheckpointError(f"{path}: not a detectron2 FPN R-CNN (no {missing[0]}); the converter reads "
                              "mask_rcnn_R_50_FPN models")
    if "roi_heads.mask_head.predictor.weight" not in weights:
        raise CheckpointError(f"{path}: a detectron2 detector without a mask head (Faster R-CNN?); segplank needs "
                              "Mask R-CNN (mask_rcnn_R_50_FPN)")
    depths = _stage_depths(weights)
    depth = _DEPTHS.get(depths)
    if depth != 50:
        what = f"ResNet-{depth}" if depth else f"a backbone with {depths} blocks per stage"
        raise CheckpointError(f"{path}: {what}; the converter knows ResNet-50-FPN only")
    if "backbone.bottom_up.res2.0.conv1.norm.running_mean" not in weights:
        raise CheckpointError(f"{path}: the backbone has no frozen batch norm (GN or SyncBN?); the converter "
                              "knows detectron2's default FrozenBN ResNet-50")
    return int(weights["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1


def _resnet_name(stage: int, rest: str) -> str:
    """``res{stage}.{block}.conv1.norm.weight`` → ``layer{stage-1}.{block}.bn1.weight``."""
    block, part = rest.split(".", 1)
    m = re.match(r"conv(\d)\.(norm\.)?(.+)", part)
    if m:
        return f"layer{stage - 1}.{block}." + (f"bn{m[1]}.{m[3]}" if m[2] else f"conv{m[1]}.{m[3]}")
    m = re.match(r"shortcut\.(norm\.)?(.+)", part)
    if m:
        return f"layer{stage - 1}.{block}.downsample." + (f"1.{m[2]}" if m[1] else f"0.{m[2]}")
    raise KeyError(part)


def _name(k: str) -> str:
    """A detectron2 weight's name in segplank's (torchvision's) network; KeyError for one it does not have."""
    m = re.fullmatch(r"backbone\.bottom_up\.stem\.conv1\.(norm\.)?(\w+)", k)
    if m:
        return f"backbone.body.{'bn1' if m[1] else 'conv1'}.{m[2]}"
    m = re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(.+)", k)
    if m:
        return "backbone.body." + _resnet_name(int(m[1]), m[2])
    m = re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)\.(\w+)", k)
    if m:
        blocks = "inner_blocks" if m[1] == "lateral" else "layer_blocks"
        return f"backbone.fpn.{blocks}.{int(m[2]) - 2}.0.{m[3]}"
    simple = {"proposal_generator.rpn_head.conv": "rpn.head.conv.0.0",
              "proposal_generator.rpn_head.objectness_logits": "rpn.head.cls_logits",
              "proposal_generator.rpn_head.anchor_deltas": "rpn.head.bbox_pred",
              "roi_heads.box_head.fc1": "roi_heads.box_head.fc6",
              "roi_heads.box_head.fc2": "roi_heads.box_head.fc7",
              "roi_heads.mask_head.deconv": "roi_heads.mask_predictor.conv5_mask"}
    m = re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)", k)
    if m:
        return f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"
    head, _, leaf = k.rpartition(".")
    if head in simple:
        return f"{simple[head]}.{leaf}"
    raise KeyError(k)


def convert(weights: dict[str, torch.Tensor], n_classes: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """detectron2 weights → segplank's state dict (classes reordered), and the names left unused."""
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    k1 = n_classes
    for k, v in weights.items():
        v = v.float()
        if k == "roi_heads.box_predictor.cls_score.weight" or k == "roi_heads.box_predictor.cls_score.bias":
            out[k] = torch.cat([v[k1:], v[:k1]])  # background: last there, first here
        elif k.startswith("roi_heads.box_predictor.bbox_pred."):  # no background box there: zeros here
            per = v.reshape(k1, 4, *v.shape[1:])
            out[k] = torch.cat([torch.zeros_like(per[:1]), per]).reshape(4 * (k1 + 1), *v.shape[1:])
        elif k.startswith("roi_heads.mask_head.predictor."):
            out[f"roi_heads.mask_predictor.mask_fcn_logits.{k.rsplit('.', 1)[1]}"] = torch.cat(
                [torch.zeros_like(v[:1]), v])
        elif k in _NOT_WEIGHTS or k.endswith("num_batches_tracked") or "cell_anchors" in k:
            ignored.append(k)
        else:
            try:
                out[_name(k)] = v
            except KeyError:
                ignored.append(k)
    return out, ignored


def model_config(weights: dict[str, torch.Tensor], d2_config: dict | None, tile_size: int) -> ModelConfig:
    """segplank's ModelConfig computing what detectron2's does, from its config (its defaults else)."""
    model = (d2_config or {}).get("MODEL", {})
    mean = model.get("PIXEL_MEAN") or (weights["pixel_mean"].flatten().tolist() if "pixel_mean" in weights
                                       else _D2_PIXEL_MEAN)
    std = model.get("PIXEL_STD") or (weights["pixel_std"].flatten().tolist() if "pixel_std" in weights
                                     else _D2_PIXEL_STD)
    fmt = (d2_config or {}).get("INPUT", {}).get("FORMAT", "BGR")
    if fmt not in ("BGR", "RGB"):
        raise CheckpointError(f"INPUT.FORMAT {fmt}: the converter reads BGR or RGB models")
    anchors = model.get("ANCHOR_GENERATOR", {})
    sizes = anchors.get("SIZES", [[32], [64], [128], [256], [512]])
    ratios = anchors.get("ASPECT_RATIOS", [[0.5, 1.0, 2.0]])[0]
    if anchors.get("OFFSET", 0.0) != 0.0:
        raise CheckpointError(f"ANCHOR_GENERATOR.OFFSET {anchors['OFFSET']}: the converter knows offset 0 only")
    if not model.get("RESNETS", {}).get("STRIDE_IN_1X1", True):
        raise CheckpointError("RESNETS.STRIDE_IN_1X1 false (torchvision-style weights): not supported yet")
    rpn, roi = model.get("RPN", {}), model.get("ROI_HEADS", {})
    return ModelConfig(
        name="detectron2-mask_rcnn_R_50_FPN", backbone="detectron2_r50", fpn_channels=256,
        box_head_dim=int(weights["roi_heads.box_head.fc1.weight"].shape[0]),
        mask_head_channels=int(weights["roi_heads.mask_head.mask_fcn1.weight"].shape[0]),
        anchor_sizes=tuple(tuple(int(s) for s in level) for level in sizes), aspect_ratios=tuple(ratios),
        tile_size=tile_size,
        score_thresh=float(roi.get("SCORE_THRESH_TEST", 0.05)), nms_thresh=float(roi.get("NMS_THRESH_TEST", 0.5)),
        detections_per_tile=int((d2_config or {}).get("TEST", {}).get("DETECTIONS_PER_IMAGE", 100)),
        rpn_pre_nms_top_n=int(rpn.get("PRE_NMS_TOPK_TEST", 1000)),
        rpn_post_nms_top_n=int(rpn.get("POST_NMS_TOPK_TEST", 1000)),
        # tiles are [0, 1]: x·255 − mean over std is (x − mean/255) / (std/255)
        image_mean=tuple(float(m) / 255 for m in mean), image_std=tuple(float(s) / 255 for s in std),
        anchors_rounded=False, roi_aligned=True, roi_sampling_ratio=0)


def _read_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: not a readable detectron2 config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a detectron2 config (expected a YAML mapping)")
    if data.get("_BASE_"):
        raise CheckpointError(f"{path}: has _BASE_ {data['_BASE_']}; pass the merged config detectron2 wrote "
                              "beside the model (output/config.yaml)")
    return data


def _class_names(n: int, d2_config: dict | None, names: list[str] | None, path: Path) -> list[str]:
    found = names or ((d2_config or {}).get("METADATA") or {}).get("thing_classes")
    if found:
        if len(found) != n:
            raise CheckpointError(f"{path}: the model predicts {n} classes but {len(found)} names were given")
        return [str(x) for x in found]
    if n == 1:
        return ["plankton"]
    raise CheckpointError(f"{path}: {n} classes and no names for them; pass --classes name1,name2,... in the "
                          "model's order (detectron2's thing_classes)")


def import_detectron2(path: Path, config: Path | None = None, classes: list[str] | None = None,
                      non_plankton: list[str] | None = None, tile_size: int = 512) -> tuple[Checkpoint, list[str]]:
    """A segplank checkpoint of a detectron2 Mask R-CNN, and the file's tensors it did not use."""
    path = Path(path)
    weights = read_weights(path)
    n = check_architecture(weights, path)
    d2_config = _read_config(config)
    n_cfg = ((d2_config or {}).get("MODEL", {}).get("ROI_HEADS", {}) or {}).get("NUM_CLASSES")
    if n_cfg is not None and int(n_cfg) != n:
        raise CheckpointError(f"{config}: NUM_CLASSES {n_cfg}, but {path} predicts {n} classes; pass the model's "
                              "own config")
    names = _class_names(n, d2_config, classes, path)
    unknown = sorted(set(non_plankton or ()) - set(names))
    if unknown:
        raise CheckpointError(f"--non-plankton {unknown[0]}: not one of the model's classes {names}")
    cfg = model_config(weights, d2_config, tile_size)
    state, ignored = convert(weights, n)
    net = build_model(cfg, n, pretrained=False)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: no weights for {missing[0]} (and {len(missing) - 1} more); not a "
                              "mask_rcnn_R_50_FPN checkpoint the converter knows")
    for k, v in state.items():
        if k not in expected:
            raise CheckpointError(f"{path}: {k} has no place in the network")  # a name rule gone wrong
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the network {tuple(expected[k].shape)}")
    net.load_state_dict(state, strict=True)
    flags = tuple(name not in set(non_plankton or ()) for name in names)
    ckpt = Checkpoint(model_config=cfg, classes=ClassMap(tuple(names), flags), state_dict=net.state_dict(),
                      trained_on={"imported_from": "detectron2", "file": str(path),
                                  "config": str(config) if config else None, "ignored_tensors": ignored})
    return ckpt, ignored
