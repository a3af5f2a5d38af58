"""Run the Mask R-CNN on a batch of tiles and keep masks as box-relative soft masks.

torchvision's ``MaskRCNN.forward`` pastes every mask into a full tile, and runs the mask
head on every detection. Here the parts are called directly: masks stay (N, 28, 28) in box
coordinates (the stitcher works on them), and the mask head runs only on detections that
need a mask (plankton, unless non-plankton rows are kept): on dense frames most
detections are marine snow that is only counted, and the mask head is most of the time.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.roi_heads import maskrcnn_inference

from ..structures import Detections, RoiMasks
from .checkpoint import ClassMap


class TilePredictor:
    """Callable stage: ``(T, H, W)`` float tiles in [0, 1] → one ``Detections`` per tile.

    Boxes are in tile pixels; detections without a computed mask get a full-box mask.
    Detections under their class's score threshold are dropped here, before the mask head,
    since no later stage would keep or count them.
    """

    def __init__(self, model: nn.Module, classes: ClassMap, device: torch.device,
                 score_thresholds: np.ndarray | None = None, masks_for_non_plankton: bool = False,
                 batch_size: int = 4, amp: bool | None = None) -> None:
        self.model = model.to(device).eval()
        self.classes = classes
        thr = classes.threshold_array(0.5) if score_thresholds is None else score_thresholds
        self.thresholds = torch.as_tensor(thr, dtype=torch.float32, device=device)
        self.device = device
        self.masks_for_non_plankton = masks_for_non_plankton
        self.batch_size = batch_size
        self.amp = (device.type == "cuda") if amp is None else amp
        self.capacity = model.roi_heads.detections_per_img
        self.mask_size = 28
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, tiles: np.ndarray | torch.Tensor,
                 proposals: list[np.ndarray] | None = None) -> list[Detections]:
        """Each tile's detections; ``proposals``: optional extra boxes per tile (tile pixels)
        scored beside the RPN's."""
        return self.predict(tiles, proposals)[0]

    @torch.inference_mode()
    def predict(self, tiles: np.ndarray | torch.Tensor,
                proposals: list[np.ndarray] | None = None) -> tuple[list[Detections], int]:
        """Each tile's detections, and how many tiles filled ``detections_per_tile`` (objects
        may be missing there: reported, never silent)."""
        out: list[Detections] = []
        capped = 0
        for start in range(0, len(tiles), self.batch_size):
            batch = torch.as_tensor(tiles[start:start + self.batch_size])
            batch = batch.to(self.device, non_blocking=True).float()
            extra = None
            if proposals is not None:
                extra = [torch.as_tensor(p, dtype=torch.float32).reshape(-1, 4).to(self.device)
                         for p in proposals[start:start + self.batch_size]]
            dets, full = self._run(batch, extra)
            out.extend(dets)
            capped += full
        return out, capped

    def _run(self, batch: torch.Tensor, extra: list[torch.Tensor] | None = None) -> tuple[list[Detections], int]:
        m = self.model
        images = [t[None].expand(3, -1, -1) for t in batch]
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            images_t, _ = m.transform(images)
            features = m.backbone(images_t.tensors)
            proposals, _ = m.rpn(images_t, features)
            if extra is not None:
                proposals = [torch.cat([p, e.to(p.dtype)]) for p, e in zip(proposals, extra)]
            rh = m.roi_heads
            feats = rh.box_head(rh.box_roi_pool(features, proposals, images_t.image_sizes))
            logits, deltas = rh.box_predictor(feats)
            boxes, scores, labels = rh.postprocess_detections(logits.float(), deltas.float(), proposals,
                                                              images_t.image_sizes)
            capped = sum(int(len(b) >= self.capacity) for b in boxes)
            keep = [s >= self.thresholds[lb] for s, lb in zip(scores, labels)]
            boxes = [b[k] for b, k in zip(boxes, keep)]
            scores = [s[k] for s, k in zip(scores, keep)]
            labels = [lb[k] for lb, k in zip(labels, keep)]
            need = [self._needs_mask(lb) for lb in labels]
            mask_boxes = [b[n] for b, n in zip(boxes, need)]
            n_masks = sum(len(b) for b in mask_boxes)
            probs_sel: list[torch.Tensor] = []
            if n_masks:
                mf = rh.mask_head(rh.mask_roi_pool(features, mask_boxes, images_t.image_sizes))
                mask_logits = rh.mask_predictor(mf).float()
                probs_sel = maskrcnn_inference(mask_logits, [lb[n] for lb, n in zip(labels, need)])
            else:
                probs_sel = [torch.zeros(0, 1, self.mask_size, self.mask_size, device=batch.device)] * len(boxes)
        # the transform does not resize (min_size = max_size = tile), so boxes are tile pixels
        scale = [torch.tensor([w / ws, h / hs] * 2, device=batch.device)
                 for (h, w), (hs, ws) in zip([t.shape[-2:] for t in images], images_t.image_sizes)]
        result = []
        for b, s, lb, n, p, sc in zip(boxes, scores, labels, need, probs_sel, scale):
            probs = torch.ones(len(b), self.mask_size, self.mask_size, device=b.device)
            probs[n] = p[:, 0].float()
            result.append(Detections(boxes=b.float() * sc, scores=s.float(), labels=lb,
                                     masks=RoiMasks(probs), extra={"has_mask": n}))
        return result, capped

    def _needs_mask(self, labels: torch.Tensor) -> torch.Tensor:
        if self.masks_for_non_plankton:
            return torch.ones_like(labels, dtype=torch.bool)
        return self.classes.plankton_mask(labels)
