"""DreamerV3 building blocks: MLP, channel LayerNorm, conv encoder/decoder, vector encoder/decoder (spec §3.1).

Layouts: images are (..., H, W, C) with arbitrary leading batch dims (the replay layout); vectors are (..., D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hieros.nets.distributions import symlog
from hieros.nets.init import init_weights_, uniform_init_

_ACTIVATIONS = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "none": nn.Identity,
}
NORM_EPS = 1e-3
"""LayerNorm epsilon of the DreamerV3 MLPs and conv stacks."""


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``layers`` × [Linear(no bias) → LayerNorm(eps 1e-3) → act], then an optional output Linear.

    ``out_scale``: None initialises the output layer like the hidden ones (truncated normal); a float uses the
    DreamerV3 uniform init with that scale (0.0 → zero weights and bias: zero-initialised reward/value heads).
    ``out_dim=None`` omits the output layer; :attr:`out_dim` is then the last hidden width.
    Without ``norm`` the hidden Linears carry a bias.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None,
        units: int = 256,
        layers: int = 2,
        act: str = "silu",
        norm: bool = True,
        out_scale: float | None = None,
    ) -> None:
        super().__init__()
        if layers < 0 or units <= 0 or in_dim <= 0:
            raise ValueError(f"MLP needs in_dim > 0, units > 0 and layers >= 0; got {in_dim=}, {units=}, {layers=}")
        hidden: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            hidden.append(nn.Linear(width, units, bias=not norm))
            if norm:
                hidden.append(nn.LayerNorm(units, eps=NORM_EPS))
            hidden.append(make_activation(act))
            width = units
        self.hidden = nn.Sequential(*hidden)
        init_weights_(self.hidden)
        self.in_dim = in_dim
        self.output: nn.Linear | None = None
        if out_dim is not None:
            self.output = nn.Linear(width, out_dim)
            init_weights_(self.output)
            if out_scale is not None:
                uniform_init_(self.output, out_scale)
            width = out_dim
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP expects inputs with last dim {self.in_dim}, got shape {tuple(x.shape)}")
        x = self.hidden(x)
        return self.output(x) if self.output is not None else x


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of an (N, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _num_stages(image_size: int, minres: int) -> int:
    stages = math.log2(image_size / minres) if image_size > 0 and minres > 0 else -1.0
    if stages < 1 or not stages.is_integer():
        raise ValueError(
            f"image_size / minres must be a power of two >= 2 (e.g. 64/4, 32/4, 16/4), got {image_size}/{minres}"
        )
    return int(stages)


def _same_conv(in_channels: int, out_channels: int, kernel: int, bias: bool) -> nn.Module:
    """Conv with stride 2 and TensorFlow 'same' padding: output = input / 2 (extra padding right/bottom)."""
    total = max(kernel - 2, 0)
    left, right = total // 2, total - total // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=left, bias=bias)
    if left == right:
        return conv
    return nn.Sequential(nn.ZeroPad2d((0, right - left, 0, right - left)), conv)


def _same_conv_transpose(in_channels: int, out_channels: int, kernel: int, bias: bool) -> nn.ConvTranspose2d:
    """Transposed conv with stride 2 doubling the spatial size: (i−1)·2 − 2p + k + op = 2i."""
    padding = math.ceil((kernel - 2) / 2)
    output_padding = 2 * padding - (kernel - 2)
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel, stride=2, padding=padding, output_padding=output_padding, bias=bias
    )


def normalize_image(image: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Image on the 0..255 scale (uint8 or float) → ``dtype`` on the model's scale image / 255 − 0.5.

    One conversion and two in-place passes (the same values as ``image.float() / 255 − 0.5``): on a 16 × 64 batch of
    32 × 32 × 4 images the out-of-place form allocated two more 16 MB tensors per call."""
    out = image.to(dtype, copy=True)
    return out.div_(255.0).sub_(0.5)


class ConvEncoder(nn.Module):
    """Image (..., H, W, C) uint8 or float on the 0..255 scale → (..., out_dim) embedding.

    x / 255 − 0.5, then log2(image_size / minres) stages of [same Conv k s2 (no bias) → channel LN → SiLU]
    with depth · 2^i channels, flattened in (C, H, W) order. 64×64 RGB, depth 24: 24/48/96/192 ch, 3072-d.
    """

    def __init__(
        self, in_channels: int = 3, depth: int = 24, kernel: int = 4, minres: int = 4, image_size: int = 64
    ) -> None:
        super().__init__()
        if kernel < 2:
            raise ValueError(f"ConvEncoder kernel must be >= 2, got {kernel}")
        stages = _num_stages(image_size, minres)
        self.in_channels, self.image_size, self.minres = in_channels, image_size, minres
        self.channels = [depth * 2**i for i in range(stages)]
        layers: list[nn.Module] = []
        width = in_channels
        for channels in self.channels:
            layers += [_same_conv(width, channels, kernel, bias=False), ChannelLayerNorm(channels), nn.SiLU()]
            width = channels
        self.layers = nn.Sequential(*layers)
        init_weights_(self.layers)
        self.out_dim = self.channels[-1] * minres * minres

    def forward(self, image: Tensor) -> Tensor:
        expected = (self.image_size, self.image_size, self.in_channels)
        if image.ndim < 3 or tuple(image.shape[-3:]) != expected:
            raise ValueError(
                f"ConvEncoder expects images (..., H, W, C) = (..., {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got shape {tuple(image.shape)}; images must be channel-last at the configured image_size"
            )
        batch_shape = image.shape[:-3]
        x = normalize_image(image.reshape(-1, *expected), next(self.parameters()).dtype).permute(0, 3, 1, 2)
        x = self.layers(x)
        return x.reshape(*batch_shape, self.out_dim)


class ConvDecoder(nn.Module):
    """Features (..., feat_dim) → mean image (..., H, W, C) in the normalised space (target = image/255 − 0.5).

    Linear(feat → minres²·C_max) → (C_max, minres, minres) → stages of [ConvT k s2 (no bias) → channel LN →
    SiLU] halving the channels → ConvT to ``out_channels`` (bias, uniform init scale 1). Pair with
    ``MSE(prediction, dims=3)`` (sum of squared errors over H, W, C).
    """

    def __init__(
        self,
        feat_dim: int,
        out_channels: int = 3,
        depth: int = 24,
        kernel: int = 4,
        minres: int = 4,
        image_size: int = 64,
    ) -> None:
        super().__init__()
        if kernel < 2:
            raise ValueError(f"ConvDecoder kernel must be >= 2, got {kernel}")
        stages = _num_stages(image_size, minres)
        self.feat_dim, self.out_channels, self.image_size, self.minres = feat_dim, out_channels, image_size, minres
        self.top_channels = depth * 2 ** (stages - 1)
        self.linear = nn.Linear(feat_dim, minres * minres * self.top_channels)
        layers: list[nn.Module] = []
        width = self.top_channels
        for _ in range(stages - 1):
            layers += [_same_conv_transpose(width, width // 2, kernel, bias=False), ChannelLayerNorm(width // 2)]
            layers.append(nn.SiLU())
            width //= 2
        self.layers = nn.Sequential(*layers)
        self.output = _same_conv_transpose(width, out_channels, kernel, bias=True)
        init_weights_(self)
        uniform_init_(self.output, 1.0)

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.feat_dim:
            raise ValueError(f"ConvDecoder expects features (..., {self.feat_dim}), got shape {tuple(features.shape)}")
        batch_shape = features.shape[:-1]
        x = self.linear(features.reshape(-1, self.feat_dim))
        x = x.reshape(-1, self.minres, self.minres, self.top_channels).permute(0, 3, 1, 2)
        x = self.output(self.layers(x)).permute(0, 2, 3, 1)
        return x.reshape(*batch_shape, self.image_size, self.image_size, self.out_channels)


class VectorEncoder(nn.Module):
    """Vector observation (..., in_dim) → (..., out_dim): optional symlog, then an MLP without output layer."""

    def __init__(self, in_dim: int, units: int = 512, layers: int = 2, symlog_inputs: bool = True) -> None:
        super().__init__()
        self.symlog_inputs = symlog_inputs
        self.mlp = MLP(in_dim, None, units=units, layers=layers)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(symlog(x) if self.symlog_inputs else x.float())


class VectorDecoder(nn.Module):
    """Features (..., feat_dim) → symlog-space prediction (..., out_dim); wrap it in ``SymlogMSE``."""

    def __init__(self, feat_dim: int, out_dim: int, units: int = 512, layers: int = 2) -> None:
        super().__init__()
        self.mlp = MLP(feat_dim, out_dim, units=units, layers=layers, out_scale=1.0)
        self.out_dim = out_dim

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp(features)


__all__ = [
    "MLP",
    "ChannelLayerNorm",
    "ConvEncoder",
    "ConvDecoder",
    "VectorEncoder",
    "VectorDecoder",
    "make_activation",
]
