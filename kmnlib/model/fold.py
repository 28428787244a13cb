"""Inference-only speed-up: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is the affine map ``y = γ(x − μ)/√(σ² + ε) + β``; after a convolution it
can be folded into the convolution's weights and bias, saving a pass over every activation. The
memory encoder's stem BatchNorm follows the *sum* of the RGB stem convolution and the two mask
convolutions (STM injects the masks there), so its scale goes into all three and its shift into
the stem's bias. timm's ``BatchNormAct2d`` (BN + ReLU6) leaves its activation behind.

The folded network computes the same function up to float rounding (tested on real frames against
the unfolded one); it is for inference only — folded weights cannot be trained as the original.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from kmnlib.model.network import KMN, MemoryEncoder


@torch.no_grad()
def _fold_into(bn: nn.modules.batchnorm._BatchNorm, convs: list[nn.Conv2d], bias_conv: nn.Conv2d
               ) -> None:
    """Scale every conv in ``convs`` by BN's per-channel factor; put BN's shift in ``bias_conv``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    for conv in convs:
        conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    old = bias_conv.bias if bias_conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias + (old - bn.running_mean) * scale
    bias_conv.bias = nn.Parameter(shift.to(bias_conv.weight.dtype), requires_grad=False)


def _after_bn(bn: nn.Module) -> nn.Module:
    """What is left of a BatchNorm once folded: timm's BatchNormAct2d keeps drop + activation."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _fold_children(module: nn.Module, skip: set[int]) -> int:
    """Fold every (Conv2d, BatchNorm) pair of adjacent children, recursively; return the count."""
    folded = 0
    names = list(module._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = module._modules[first], module._modules[second]
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                and id(bn) not in skip):
            _fold_into(bn, [conv], conv)
            module._modules[second] = _after_bn(bn)
            folded += 1
    for child in module.children():
        folded += _fold_children(child, skip)
    return folded


def fold_batchnorm(model: KMN, *, in_place: bool = False) -> KMN:
    """A copy of ``model`` (``in_place``: ``model`` itself) in eval mode with every BatchNorm
    folded into its convolution."""
    out = (model if in_place else copy.deepcopy(model)).eval()
    for enc in (out.memory_encoder, out.query_encoder):
        trunk = enc.trunk
        stem, bn = trunk.stem_conv, trunk.bn1
        extra = [enc.conv_mask, enc.conv_other] if isinstance(enc, MemoryEncoder) else []
        _fold_into(bn, [stem, *extra], stem)
        trunk.bn1 = _after_bn(bn)
        _fold_children(trunk, skip=set())
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise RuntimeError(f"fold_batchnorm: a BatchNorm was left unfolded ({m})")
    for p in out.parameters():
        p.requires_grad_(False)
    return out
