"""Deterministic detectron2 Mask R-CNN weights, rebuilt without detectron2.

``tools/make_detectron2_goldens.py`` fills detectron2's own state-dict layout
(``tests/data/detectron2/layout_<n>.json``: names and shapes, in order) with these values,
runs detectron2 on the golden frame and stores its detections; the test rebuilds the same
file here and checks that segplank's import gives detectron2's detections. Purely random
weights make a useless golden (every RPN delta throws proposals onto the frame, every class
score saturates): the regression layers are damped, the residual branches kept small, and
the class logits spread, so that the goldens test the maths.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

LAYOUTS = Path(__file__).parent / "data" / "detectron2"


def layout(n_classes: int) -> list[tuple[str, list[int]]]:
    return [(k, s) for k, s in json.loads((LAYOUTS / f"layout_{n_classes}.json").read_text())]


def weights(n_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict, in detectron2's names, the same on every machine."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in layout(n_classes):
        out[name] = _value(name, shape, g)
    return out


def _normal(shape: list[int], std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64).float() * std


def _value(name: str, shape: list[int], g: torch.Generator) -> torch.Tensor:
    if name == "pixel_mean":
        return torch.tensor([103.53, 116.28, 123.675]).reshape(shape)
    if name == "pixel_std":
        return torch.ones(shape)
    if ".norm." in name:  # FrozenBN: near identity, the last of each residual branch small
        last = ".conv3.norm." in name
        if name.endswith("weight"):
            return (0.2 if last else 1.0) * (1 + _normal(shape, 0.05, g))
        if name.endswith("bias"):
            return _normal(shape, 0.02, g)
        if name.endswith("running_mean"):
            return _normal(shape, 0.02, g)
        return 1 + _normal(shape, 0.02, g).abs()  # running_var
    if name.endswith("bias"):
        if "objectness_logits" in name:
            return _normal(shape, 0.5, g) - 1.0  # a few anchors clearly ahead of the rest
        if "cls_score" in name:  # background (last) less likely, so that objects are found
            b = _normal(shape, 0.01, g)
            b[-1] -= 2.0
            return b
        return _normal(shape, 0.01, g)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    if "ConvTranspose" in name or name.endswith("deconv.weight"):
        fan_in = shape[0] * math.prod(shape[2:])
    std = math.sqrt(2.0 / fan_in)  # He: activations keep their scale through the network
    if name == "backbone.bottom_up.stem.conv1.weight":
        std /= 100  # the input is 0-255 less its mean: features of order 1 from the start
    elif "anchor_deltas" in name or "bbox_pred" in name:
        std *= 0.02  # proposals stay near their anchors
    elif "objectness_logits" in name:
        std *= 2.0
    elif "cls_score" in name:
        std *= 0.3  # class scores spread, not saturated, not tied
    elif "mask_head.predictor" in name:
        std *= 1.0
    w = _normal(shape, std, g)
    if "cls_score" in name:  # features after ReLU are all positive: rows of zero mean, so no class wins everywhere
        w -= w.mean(dim=1, keepdim=True)
    return w
