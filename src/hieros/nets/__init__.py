"""Neural-network building blocks: DreamerV3 distributions and layers, the resettable S5 layer and block."""

from hieros.nets.distributions import (
    MSE,
    Bernoulli,
    OneHotCategorical,
    SymlogMSE,
    TwoHot,
    kl_categorical,
    symexp,
    symlog,
    twohot_bins,
    twohot_encode,
)
from hieros.nets.init import init_weights_, truncated_normal_init_, uniform_init_
from hieros.nets.layers import (
    MLP,
    ChannelLayerNorm,
    ConvDecoder,
    ConvEncoder,
    VectorDecoder,
    VectorEncoder,
    normalize_image,
)
from hieros.nets.s5 import Discretization, S5Block, S5Layer, hippo_n_init, linear_scan, resettable_scan

__all__ = [
    "MLP",
    "MSE",
    "Bernoulli",
    "ChannelLayerNorm",
    "ConvDecoder",
    "ConvEncoder",
    "Discretization",
    "OneHotCategorical",
    "S5Block",
    "S5Layer",
    "SymlogMSE",
    "TwoHot",
    "VectorDecoder",
    "VectorEncoder",
    "hippo_n_init",
    "init_weights_",
    "kl_categorical",
    "linear_scan",
    "normalize_image",
    "resettable_scan",
    "symexp",
    "symlog",
    "truncated_normal_init_",
    "twohot_bins",
    "twohot_encode",
    "uniform_init_",
]
