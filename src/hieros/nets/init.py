"""DreamerV3 weight initialisers (spec §3.1, "Initialisation outside the SSM cores").

* Hidden Linear / Conv / ConvTranspose layers: truncated normal on ±2σ with
  σ = sqrt(1 / fan_avg) / 0.87962566 (the divisor undoes the variance lost by truncating at 2σ,
  so the weight variance is 1 / fan_avg), zero bias.
* Output heads: uniform on ±sqrt(3 · scale / fan_avg) (variance scale / fan_avg), zero bias;
  scale 0 gives all-zero weights (zero-initialised reward and value heads).

fan_avg = (fan_in + fan_out) / 2 with fan = channels · kernel area for convolutions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978
"""Standard deviation of a unit normal truncated to [-2, 2]."""

_WEIGHTED_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def fan_avg(layer: nn.Module) -> float:
    """(fan_in + fan_out) / 2 of a Linear or (transposed) convolution layer."""
    if isinstance(layer, nn.Linear):
        return (layer.in_features + layer.out_features) / 2.0
    if isinstance(layer, _WEIGHTED_LAYERS):
        space = math.prod(layer.kernel_size)
        return space * (layer.in_channels + layer.out_channels) / 2.0
    raise TypeError(
        f"fan_avg needs an nn.Linear or a convolution layer, got {type(layer).__name__}; "
        "apply the initialiser to the layer itself, or use init_weights_ on a container module"
    )


@torch.no_grad()
def truncated_normal_init_(layer: nn.Module) -> nn.Module:
    """Truncated-normal init of one Linear/Conv layer (weight variance 1/fan_avg), zero bias."""
    std = math.sqrt(1.0 / fan_avg(layer)) / TRUNCATED_NORMAL_STD_CORRECTION
    nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
    if layer.bias is not None:
        layer.bias.zero_()
    return layer


@torch.no_grad()
def init_weights_(module: nn.Module) -> nn.Module:
    """Apply the truncated-normal init to every Linear/Conv/ConvTranspose inside ``module``.

    LayerNorms are reset to weight 1 and bias 0. Other parameters are left untouched.
    Returns ``module`` for chaining.
    """
    for sub in module.modules():
        if isinstance(sub, _WEIGHTED_LAYERS):
            truncated_normal_init_(sub)
        elif isinstance(sub, nn.LayerNorm) and sub.elementwise_affine:
            sub.weight.fill_(1.0)
            if sub.bias is not None:
                sub.bias.zero_()
    return module


@torch.no_grad()
def uniform_init_(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """DreamerV3 ``uniform_weight_init``: U(−limit, limit), limit = sqrt(3 · scale / fan_avg), zero bias.

    ``scale = 0`` zeroes the weights (zero-initialised output heads).
    """
    if scale < 0:
        raise ValueError(f"uniform_init_ scale must be >= 0, got {scale}")
    limit = math.sqrt(3.0 * scale / fan_avg(layer))
    if limit == 0.0:
        layer.weight.zero_()
    else:
        nn.init.uniform_(layer.weight, -limit, limit)
    if layer.bias is not None:
        layer.bias.zero_()
    return layer
