"""Train a Mask R-CNN on chips cut from annotated full frames.

Annotators label whole frames, the model sees tiles: training chips are cut around
annotated objects (with random placement, so objects cut by a chip border are learnt too:
that is what a tile border shows the model) plus background chips. A small loop: SGD,
warm-up then cosine decay, a validation loss every ``val_every`` iterations, and a
self-describing checkpoint at the end.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .config import Polarity, TrainConfig
from .export.rle import to_rle
from .frames import read_frame
from .model.build import build_model
from .model.checkpoint import Checkpoint, ClassMap, load_checkpoint
from .tiling import to_model_input

log = logging.getLogger("segplank")


@dataclass(frozen=True)
class Annotation:
    label: int  # 1-based model label
    origin: tuple[int, int]  # x0, y0 of the bitmap in frame px
    bitmap: np.ndarray  # bool, cropped to the object's box


@dataclass(frozen=True)
class TrainFrame:
    image: np.ndarray  # float32 [0, 1], dark objects on bright
    annotations: tuple[Annotation, ...]


def load_coco_frames(coco_path: Path, image_root: Path | None, polarity: Polarity) -> tuple[list[TrainFrame], ClassMap, list[dict]]:
    """Frames with cropped masks; model labels follow the COCO category ids in sorted order."""
    coco = json.loads(Path(coco_path).read_text())
    root = Path(image_root) if image_root else Path(coco_path).parent
    classes = ClassMap.from_coco_categories(coco["categories"])
    label_of = {c["id"]: k + 1 for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    frames = []
    for img in coco["images"]:
        image = read_frame(root / img["file_name"])
        anns = []
        for a in by_image.get(img["id"], []):
            if a.get("iscrowd", 0):
                continue
            full = _decode(a["segmentation"], img["height"], img["width"])
            ys, xs = np.nonzero(full.any(1))[0], np.nonzero(full.any(0))[0]
            if len(ys) == 0:
                continue
            y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
            anns.append(Annotation(label_of[a["category_id"]], (int(x0), int(y0)), full[y0:y1, x0:x1].copy()))
        frames.append(TrainFrame(to_model_input(image, polarity), tuple(anns)))
    return frames, classes, coco["categories"]


def _decode(seg, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(to_rle(seg, h, w)).astype(bool)


class ChipSampler:
    """Endless stream of (chip, target) pairs: chips around objects, some of background.

    Chips centre on an annotated object, shifted randomly so that objects also appear cut
    by the border. With ``balanced`` the class is drawn first, uniformly, then an object of
    it: the long tail (a few organisms among thousands of marine-snow flakes) is seen as
    often as the head.
    """

    def __init__(self, frames: list[TrainFrame], chip: int, background_share: float, seed: int,
                 balanced: bool = True) -> None:
        self.frames = frames
        self.chip = chip
        self.background_share = background_share
        self.rng = np.random.default_rng(seed)
        self.index = [(f, a) for f, fr in enumerate(frames) for a in range(len(fr.annotations))]
        if not self.index:
            raise ValueError("the training set holds no annotated object")
        labels = np.array([frames[f].annotations[a].label for f, a in self.index])
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)] if balanced else [np.arange(len(labels))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        while True:
            yield self.sample()

    def sample(self) -> tuple[torch.Tensor, dict]:
        rng, c = self.rng, self.chip
        if rng.random() < self.background_share:
            f = int(rng.integers(len(self.frames)))
            fr = self.frames[f]
            h, w = fr.image.shape
            x0, y0 = int(rng.integers(0, max(1, w - c + 1))), int(rng.integers(0, max(1, h - c + 1)))
        else:
            members = self.by_class[int(rng.integers(len(self.by_class)))]
            f, a = self.index[int(members[int(rng.integers(len(members)))])]
            fr = self.frames[f]
            h, w = fr.image.shape
            ann = fr.annotations[a]
            bh, bw = ann.bitmap.shape
            cx = ann.origin[0] + bw / 2 + rng.uniform(-0.4, 0.4) * c
            cy = ann.origin[1] + bh / 2 + rng.uniform(-0.4, 0.4) * c
            x0 = int(np.clip(cx - c / 2, 0, max(0, w - c)))
            y0 = int(np.clip(cy - c / 2, 0, max(0, h - c)))
        return self._cut(fr, x0, y0)

    def _cut(self, fr: TrainFrame, x0: int, y0: int) -> tuple[torch.Tensor, dict]:
        c = self.chip
        img = fr.image[y0:y0 + c, x0:x0 + c]
        ph, pw = c - img.shape[0], c - img.shape[1]
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)), mode="edge")
        masks, labels = [], []
        for ann in fr.annotations:
            ox, oy = ann.origin
            bh, bw = ann.bitmap.shape
            ix0, iy0 = max(ox, x0), max(oy, y0)
            ix1, iy1 = min(ox + bw, x0 + c), min(oy + bh, y0 + c)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            part = ann.bitmap[iy0 - oy:iy1 - oy, ix0 - ox:ix1 - ox]
            if part.sum() < 2:
                continue
            m = np.zeros((c, c), np.uint8)
            m[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = part
            masks.append(m)
            labels.append(ann.label)
        img, masks = self._augment(img, masks)
        return _to_target(img, masks, labels)

    def _augment(self, img: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        rng = self.rng
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))

        def geo(a: np.ndarray) -> np.ndarray:
            a = np.rot90(a, k)
            return np.ascontiguousarray(a[:, ::-1] if flip else a)

        img = geo(img)
        gain, bias, gamma = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06), rng.uniform(0.8, 1.25)
        img = np.clip((np.clip(img, 0, 1) ** gamma) * gain + bias, 0, 1).astype(np.float32)
        if rng.random() < 0.5:
            img = np.clip(img + rng.normal(0, rng.uniform(0.005, 0.03), img.shape).astype(np.float32), 0, 1)
        return img, [geo(m) for m in masks]


def _to_target(img: np.ndarray, masks: list[np.ndarray], labels: list[int]) -> tuple[torch.Tensor, dict]:
    c = img.shape[0]
    if masks:
        m = np.stack(masks)
        rows, cols = m.any(2), m.any(1)
        y0 = rows.argmax(1)
        y1 = c - rows[:, ::-1].argmax(1)
        x0 = cols.argmax(1)
        x1 = c - cols[:, ::-1].argmax(1)
        boxes = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
    else:
        m = np.zeros((0, c, c), np.uint8)
        boxes = np.zeros((0, 4), np.float32)
    target = {"boxes": torch.from_numpy(boxes), "labels": torch.tensor(labels, dtype=torch.int64),
              "masks": torch.from_numpy(m)}
    return torch.from_numpy(img)[None].expand(3, -1, -1), target


def lr_at(it: int, cfg: TrainConfig) -> float:
    if it < cfg.warmup_iters:
        return cfg.lr * (0.1 + 0.9 * it / max(1, cfg.warmup_iters))
    t = (it - cfg.warmup_iters) / max(1, cfg.iterations - cfg.warmup_iters)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def train(cfg: TrainConfig, train_coco: Path, out: Path, image_root: Path | None = None,
          val_coco: Path | None = None, polarity: Polarity = "dark_on_bright",
          progress: Callable[[int, dict], None] | None = None, demo: bool = False,
          init: Path | None = None) -> Checkpoint:
    """Train and save a checkpoint at ``out``; returns it. ``init``: start from a checkpoint's weights."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    frames, classes, categories = load_coco_frames(train_coco, image_root, polarity)
    sampler = ChipSampler(frames, cfg.chip_size, cfg.background_chip_share, cfg.seed, cfg.balanced)
    val_batches = []
    if val_coco is not None:
        vframes, _, _ = load_coco_frames(val_coco, None, polarity)
        vs = ChipSampler(vframes, cfg.chip_size, cfg.background_chip_share, cfg.seed + 1)
        val_batches = [[vs.sample() for _ in range(cfg.batch_size)] for _ in range(4)]
    model = build_model(cfg.model.model_copy(update={"tile_size": cfg.chip_size}), len(classes))
    if init is not None:
        start = load_checkpoint(init)
        if start.classes.names != classes.names:
            raise ValueError(f"{init}: its classes {list(start.classes.names)} differ from the training set's "
                             f"{list(classes.names)}")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in start.state_dict.items()})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    stream = iter(sampler)
    history = []
    t0 = time.time()
    for it in range(cfg.iterations):
        for g in opt.param_groups:
            g["lr"] = lr_at(it, cfg)
        batch = [next(stream) for _ in range(cfg.batch_size)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        row = {"iter": it + 1, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}, "lr": lr_at(it, cfg)}
        at_end = it + 1 == cfg.iterations
        if (it + 1) % cfg.val_every == 0 or at_end:
            if val_batches:
                row["val_loss"] = validation_loss(model, val_batches)
            history.append(row)
            _checkpoint(cfg, model, classes, categories, train_coco, val_coco, frames, sampler, history, t0, demo).save(out)
        else:
            history.append(row)
        if progress:
            progress(it + 1, row)
    return _checkpoint(cfg, model, classes, categories, train_coco, val_coco, frames, sampler, history, t0, demo)


def _checkpoint(cfg, model, classes, categories, train_coco, val_coco, frames, sampler, history, t0, demo) -> Checkpoint:
    """The checkpoint as of now (saved periodically, so a long run always leaves a usable model)."""
    ckpt = Checkpoint(
        model_config=cfg.model,
        classes=classes,
        state_dict=model.state_dict(),
        trained_on={"train": str(train_coco), "val": str(val_coco) if val_coco else None, "frames": len(frames),
                    "objects": len(sampler.index), "categories": categories, "train_config": cfg.model_dump(mode="json"),
                    "seconds": round(time.time() - t0, 1)},
        metrics={"final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
                 "val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
                 "iterations": len(history)},
        demo=demo,
    )
    return ckpt


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: list) -> float:
    """Mean detection loss on fixed validation chips (train-mode losses, frozen weights)."""
    was_training = model.training
    model.train()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bn:
        m.eval()
    total = [float(sum(model([b[0] for b in batch], [b[1] for b in batch]).values())) for batch in batches]
    model.train(was_training)
    return float(np.mean(total))
