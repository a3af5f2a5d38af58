"""Build a torchvision Mask R-CNN for plankton tiles from a ``ModelConfig``.

Differences from torchvision's defaults, and why:
- the transform never resizes (``min_size = max_size = tile``): upsampling a 512 tile to
  800 px costs 2.4x the pixels and gains nothing on objects drawn at native scale;
- FPN levels from stride 4 (MobileNetV3 taps earlier stages than torchvision's 2-level
  default), anchors from 8 px with elongated ratios: specks and slender organisms;
- heads narrower than COCO's, so the CPU model stays small and fast;
- candidate counts high enough for a dense tile (hundreds of objects).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import misc as misc_ops
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..config import ModelConfig


def _backbone(cfg: ModelConfig, pretrained: bool) -> BackboneWithFPN:
    imagenet = cfg.init == "imagenet"
    if cfg.backbone == "mobilenet_v3_large":
        weights = "IMAGENET1K_V1" if imagenet and pretrained else None
        net = mobilenet_v3_large(weights=weights, width_mult=cfg.width_mult, norm_layer=nn.BatchNorm2d)
        feats = net.features
        stages = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
        # stride 4, 8, 16, 32 taps: the last layer of each resolution
        returned = [1, 2, 3, len(stages) - 1]
        return _mobilenet_fpn(net, stages, returned, cfg.fpn_channels)
    if cfg.backbone == "resnet18":
        # the ImageNet recipe freezes batch norm: the layer type is part of the architecture
        norm = misc_ops.FrozenBatchNorm2d if imagenet else nn.BatchNorm2d
        net = resnet18(weights="IMAGENET1K_V1" if imagenet and pretrained else None, norm_layer=norm)
        return _resnet_fpn_extractor(net, 3 if imagenet else 5, returned_layers=[1, 2, 3, 4])
    if cfg.backbone == "detectron2_r50":
        return _msra_resnet50_fpn(cfg)
    # resnet50_v2: torchvision's maskrcnn_resnet50_fpn_v2 recipe
    net = resnet50(weights="IMAGENET1K_V1" if imagenet and pretrained else None, norm_layer=nn.BatchNorm2d)
    return _resnet_fpn_extractor(net, 3 if imagenet else 5, norm_layer=nn.BatchNorm2d)


def _msra_resnet50_fpn(cfg: ModelConfig) -> BackboneWithFPN:
    """detectron2's R50-FPN: the MSRA ResNet-50 puts each stage's stride in its first block's 1x1
    convolution where torchvision's puts it in the 3x3; batch norm frozen, stem and res2 too
    (detectron2's FREEZE_AT 2)."""
    net = resnet50(weights=None, norm_layer=misc_ops.FrozenBatchNorm2d)
    for layer in (net.layer2, net.layer3, net.layer4):
        first = layer[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    if cfg.fpn_channels != 256:
        raise ValueError("detectron2_r50 has 256 FPN channels (torchvision's FPN builder fixes them)")
    return _resnet_fpn_extractor(net, 3, returned_layers=[1, 2, 3, 4])


class _UnroundedAnchors(AnchorGenerator):
    """detectron2's cell anchors: not rounded to whole pixels (torchvision rounds them)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        w = torch.sqrt(scales[None, :] ** 2 / ratios[:, None]).reshape(-1)  # area kept, h / w = ratio
        h = (ratios[:, None] * torch.sqrt(scales[None, :] ** 2 / ratios[:, None])).reshape(-1)
        return torch.stack([-w, -h, w, h], dim=1) / 2


class _AlignedRoIAlign(MultiScaleRoIAlign):
    """Multi-scale ROIAlign with the half-pixel shift (``aligned=True``, detectron2's ROIAlignV2)."""

    def forward(self, x, boxes, image_shapes):
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio,
                                 aligned=True).to(out.dtype)
        return out


def _poolers(cfg: ModelConfig) -> dict:
    """The box and mask ROI poolers as the config computes them (torchvision's by default)."""
    kind = _AlignedRoIAlign if cfg.roi_aligned else MultiScaleRoIAlign
    names = ["0", "1", "2", "3"]
    return {"box_roi_pool": kind(names, 7, cfg.roi_sampling_ratio),
            "mask_roi_pool": kind(names, 14, cfg.roi_sampling_ratio)}


def _mobilenet_fpn(net: nn.Module, stages: list[int], returned: list[int], out_channels: int) -> BackboneWithFPN:
    feats = net.features
    return_layers = {f"{stages[k]}": str(v) for v, k in enumerate(returned)}
    in_channels = [feats[stages[k]].out_channels for k in returned]
    return BackboneWithFPN(feats, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool())


def build_model(cfg: ModelConfig, num_classes: int, pretrained: bool = True) -> MaskRCNN:
    """Mask R-CNN with ``num_classes`` foreground classes (background is added here).

    ``pretrained=False`` builds the same architecture without fetching torchvision's weights:
    loading a checkpoint must never need the internet.
    """
    if cfg.backbone == "resnet50_v2":
        return _build_resnet50_v2(cfg, num_classes, pretrained)
    backbone = _backbone(cfg, pretrained)
    ch = backbone.out_channels
    n_levels = 5  # four FPN levels + max-pool level
    sizes = tuple(cfg.anchor_sizes[:n_levels])
    if len(sizes) != n_levels:
        raise ValueError(f"anchor_sizes needs {n_levels} levels, got {len(sizes)}")
    anchors = (AnchorGenerator if cfg.anchors_rounded else _UnroundedAnchors)(
        sizes, (tuple(cfg.aspect_ratios),) * n_levels)
    model = MaskRCNN(
        backbone,
        min_size=cfg.tile_size,
        max_size=cfg.tile_size,
        image_mean=list(cfg.image_mean or (0.5,) * 3),
        image_std=list(cfg.image_std or (0.25,) * 3),
        rpn_anchor_generator=anchors,
        **_poolers(cfg),
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        box_head=TwoMLPHead(ch * 7 * 7, cfg.box_head_dim),
        box_predictor=_box_predictor(cfg.box_head_dim, num_classes + 1),
        box_score_thresh=cfg.score_thresh,
        box_nms_thresh=cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_tile,
        mask_head=MaskRCNNHeads(ch, [cfg.mask_head_channels] * 4, 1),
        mask_predictor=_mask_predictor(cfg.mask_head_channels, num_classes + 1),
    )
    return model


def _box_predictor(dim: int, n: int) -> nn.Module:
    return FastRCNNPredictor(dim, n)


def _mask_predictor(ch: int, n: int) -> nn.Module:
    return MaskRCNNPredictor(ch, ch, n)


def _build_resnet50_v2(cfg: ModelConfig, num_classes: int, pretrained: bool) -> MaskRCNN:
    """torchvision's ResNet-50-FPN v2 Mask R-CNN; COCO weights are downloaded on first use."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    model = maskrcnn_resnet50_fpn_v2(
        weights="COCO_V1" if cfg.init == "coco" and pretrained else None,
        weights_backbone="IMAGENET1K_V1" if cfg.init == "imagenet" and pretrained else None,
        min_size=cfg.tile_size, max_size=cfg.tile_size,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_tile,
    )
    # new class heads for plankton (the COCO ones have 91 classes)
    model.roi_heads.box_predictor = _box_predictor(1024, num_classes + 1)
    model.roi_heads.mask_predictor = _mask_predictor(256, num_classes + 1)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

