"""A second look at every object: a small CNN on its vignette names what the detector found.

Why a second classifier beside the box head: the box head judges a 7 × 7 pooled window of
one tile, so a chaetognath cut into three tiles is three guesses about three pieces, and a
detector trained from scratch confuses slender organisms with each other and with detritus.
After stitching and full-resolution refinement each object is whole, so it can be looked at
once, at its own scale, as a plankton taxonomist (or EcoTaxa) looks at a vignette. This is
the decoupled classification refinement of Cheng et al. (ECCV 2018, "Revisiting RCNN"),
and plankton classifiers need no depth for it: a 5 M parameter MobileNet matches a 208 M
EfficientNet on plankton images.

A vignette is two channels of ``size × size``: the object's contrast (grey levels relative to
the local background, so vignetting and camera gain cancel) and its mask, in a square window
around its box; plus three numbers the resizing hides: ESD and box length in µm (log) and the
share of the box the mask fills.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch import nn

from ..config import Polarity
from ..structures import CroppedMasks
from .fuse import fused_for_inference

N_SCALARS = 3
_MARGIN = 0.15  # share of the object's longer side added around it on each side
_MIN_SIDE = 16  # px: a speck is seen with some background around it
_BACKGROUND_SAMPLES = 4096  # background pixels the local median is taken from, at most


@dataclass(frozen=True)
class ClassifierConfig:
    """What builds the network and its input; stored in the checkpoint beside the weights."""

    size: int = 48
    width: int = 24
    # flat: an object is its most probable class; plankton_first: first whether it is an
    # object, plankton or not (each the sum of its classes' probabilities), then which of
    # that side's classes. With a hundred taxa, the probability of plankton is spread over
    # many of them: no one taxon's would pass a threshold, their sum does.
    decision: Literal["flat", "plankton_first"] = "flat"

    def to_dict(self) -> dict:
        return {"size": self.size, "width": self.width, "decision": self.decision}

    @staticmethod
    def from_dict(d: dict) -> "ClassifierConfig":
        return ClassifierConfig(int(d["size"]), int(d["width"]), d.get("decision", "flat"))


def decide(probs: np.ndarray, plankton: np.ndarray, decision: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) from (N, K + 1) probabilities (0: not an object); ``plankton``: (K + 1,) flags."""
    if decision == "flat" or not len(probs):
        labels = probs.argmax(1).astype(np.int64)
        return labels, probs[np.arange(len(probs)), labels].astype(np.float32)
    sides = np.stack([probs[:, 0], probs[:, plankton].sum(1), probs[:, 1:][:, ~plankton[1:]].sum(1)], 1)
    side = sides.argmax(1)
    within = np.where(plankton[None, :], probs, -1.0)
    within_non = np.where(~plankton[None, :], probs, -1.0)
    within_non[:, 0] = -1.0
    labels = np.where(side == 1, within.argmax(1), np.where(side == 2, within_non.argmax(1), 0)).astype(np.int64)
    return labels, sides[np.arange(len(probs)), side].astype(np.float32)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VignetteNet(nn.Module):
    """(N, 2, S, S) vignettes + (N, 3) scalars → (N, K + 1) logits; 0 is "not an object".

    "Not an object" is what the detector's candidates hold beside whole objects: a part of an
    organism boxed on its own, two objects fused by refinement, a patch of background.
    """

    def __init__(self, n_outputs: int, width: int = 24) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 4 * width]
        self.features = nn.Sequential(
            *_block(2, w[0]), *_block(w[0], w[0]), nn.MaxPool2d(2),
            *_block(w[0], w[1]), *_block(w[1], w[1]), nn.MaxPool2d(2),
            *_block(w[1], w[2]), *_block(w[2], w[2]), nn.MaxPool2d(2),
            *_block(w[2], w[3]),
        )
        self.head = nn.Sequential(nn.Linear(2 * w[3] + N_SCALARS, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                  nn.Linear(128, n_outputs))

    def forward(self, x: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3)), scalars], 1)
        return self.head(pooled)


def windows(boxes: np.ndarray) -> np.ndarray:
    """(N, 3) int64 x0, y0, side of the square window each vignette is cut from."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    side = np.maximum(np.ceil(side * (1 + 2 * _MARGIN)), _MIN_SIDE)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([np.floor(cx - side / 2), np.floor(cy - side / 2), side], 1).astype(np.int64)


def _crop(img: np.ndarray, x0: int, y0: int, side: int, fill: float | None) -> np.ndarray:
    """``img[y0:y0+side, x0:x0+side]`` with parts outside the image replicated (or set to ``fill``)."""
    h, w = img.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    part = img[cy0:cy1, cx0:cx1]
    if part.size == 0:
        return np.full((side, side), 0 if fill is None else fill, img.dtype)
    pads = (cy0 - y0, y0 + side - cy1, cx0 - x0, x0 + side - cx1)
    if not any(pads):
        return part
    if fill is None:
        return cv2.copyMakeBorder(part, *pads, cv2.BORDER_REPLICATE)
    return cv2.copyMakeBorder(part, *pads, cv2.BORDER_CONSTANT, value=fill)


def vignettes(image: np.ndarray, masks: CroppedMasks, polarity: Polarity, pixel_size_um: float,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, size, size) float32 vignettes and (N, 3) float32 scalars of full-resolution objects.

    Per object and cropped: the cost follows the objects' areas, never the frame's.
    """
    n = len(masks)
    x = np.zeros((n, 2, size, size), np.float32)
    scalars = np.zeros((n, N_SCALARS), np.float32)
    if not n:
        return x, scalars
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    boxes = np.array([(ox, oy, ox + b.shape[1], oy + b.shape[0]) for b, (ox, oy) in zip(masks.bitmaps, masks.origins)],
                     np.int64)
    for i, ((x0, y0, side), bitmap, (ox, oy)) in enumerate(zip(windows(boxes), masks.bitmaps, masks.origins)):
        grey = _crop(image, x0, y0, side, None).astype(np.float32) * (1.0 / scale)
        if polarity == "bright_on_dark":
            grey = 1.0 - grey
        m = np.zeros((side, side), np.uint8)
        bh, bw = bitmap.shape
        mx0, my0 = ox - x0, oy - y0
        m[max(my0, 0):my0 + bh, max(mx0, 0):mx0 + bw] = bitmap[max(-my0, 0):side - my0, max(-mx0, 0):side - mx0]
        outside = grey[m == 0]
        outside = outside[::max(1, outside.size // _BACKGROUND_SAMPLES)]  # a median needs no million pixels
        background = float(np.median(outside)) if outside.size else float(grey.max())
        contrast = 1.0 - grey / max(background, 1e-3)  # 0 on the background, > 0 on (dark) objects
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        x[i, 0] = cv2.resize(contrast, (size, size), interpolation=interp)
        x[i, 1] = cv2.resize(m.astype(np.float32), (size, size), interpolation=interp)
        area = max(float(bitmap.sum()), 1.0)
        scalars[i] = (math.log(2.0 * math.sqrt(area / math.pi) * pixel_size_um),
                      math.log(max(bh, bw) * pixel_size_um), area / (bh * bw))
    scalars[:, :2] -= math.log(100.0)  # centred near a 100 µm object
    return x, scalars


def organism_vignette(image: np.ndarray, mask: np.ndarray, polarity: Polarity, pixel_size_um: float,
                      size: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, 2, size, size) vignette and (1, 3) scalars of a library's organism (its mask over the
    whole of its own vignette image): cut as a frame's object is."""
    return vignettes(image, CroppedMasks(np.zeros((1, 2), np.int64), (mask,)), polarity, pixel_size_um, size)


class VignetteClassifier:
    """Callable stage: full-resolution objects of one frame → (N, K + 1) probabilities (0: not an object)."""

    def __init__(self, net: VignetteNet, cfg: ClassifierConfig, device: torch.device, batch_size: int = 512,
                 amp: bool = False) -> None:
        # a copy, norms folded: the network given may go on being trained or be saved
        self.net = fused_for_inference(net).to(device, memory_format=torch.channels_last)
        self.cfg = cfg
        self.device = device
        self.batch_size = batch_size
        # bfloat16 autocast, as the detector runs (detector.precision): on a GPU the
        # classifier's thousands of vignettes a dense frame would otherwise run in float32
        self.amp = amp

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, masks: CroppedMasks, polarity: Polarity,
                 pixel_size_um: float) -> np.ndarray:
        x, s = vignettes(image, masks, polarity, pixel_size_um, self.cfg.size)
        return self.predict(x, s)

    @torch.inference_mode()
    def predict(self, x: np.ndarray, scalars: np.ndarray, views: int = 1) -> np.ndarray:
        """(N, K + 1) probabilities; ``views`` 8: averaged over the vignette's flips and quarter
        turns (organisms have no up in the water; 8 times the work for about a point of top-1)."""
        out = []
        for i in range(0, len(x), self.batch_size):
            xb = torch.from_numpy(x[i:i + self.batch_size]).to(self.device)
            sb = torch.from_numpy(scalars[i:i + self.batch_size]).to(self.device)
            p = 0
            for k in range(views):
                v = torch.rot90(xb.flip(3) if k % 2 else xb, k // 2, (2, 3)) if k else xb
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    logits = self.net(v.contiguous(memory_format=torch.channels_last), sb)
                p = p + torch.softmax(logits.float(), 1)
            out.append((p / views).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.net.head[-1].out_features), np.float32)
