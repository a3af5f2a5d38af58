"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch norm is a per-channel affine map: folded into the preceding
convolution's weights and bias it costs nothing, where run on its own it is a full pass
over every feature map (6 % of the demo detector's time on a dense 2048² frame on two CPU
cores). Outputs agree with the unfused network to float rounding.
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def fused_for_inference(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` in which each ``Conv2d`` directly followed by a batch norm
    inside an ``nn.Sequential`` carries it (the norm becomes ``Identity``).

    Only ``Sequential`` children are folded: there the order of registration is the order of
    the forward pass, which no other container promises. ``net`` itself is left as it is (a
    network still being trained or saved keeps its norms).
    """
    out = copy.deepcopy(net).eval()
    for module in out.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS):
                module._modules[a] = _folded(conv, norm)
                module._modules[b] = nn.Identity()
    return out


def _folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                    norm.eps, norm.weight, norm.bias)
    return fused
