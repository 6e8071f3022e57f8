"""Error measures shared by the diagnostics sections: observation targets in the decoder's units, per-sample MSE,
masked means, decoded means and a finite-or-None guard for JSON."""

from __future__ import annotations

import math

from torch import Tensor

from hieros.nets.layers import normalize_image


def obs_target(key: str, value: Tensor) -> Tensor:
    """An observation in the units of the decoder's mean: images x/255 - 0.5 (the training target), vectors raw."""
    return normalize_image(value) if key == "image" else value.float()


def per_sample_mse(prediction: Tensor, target: Tensor, batch_dims: int) -> Tensor:
    """Mean over the event elements of (prediction - target)^2, keeping the first ``batch_dims`` dims."""
    return (prediction.float() - target.float()).pow(2).flatten(batch_dims).mean(-1)


def masked_mean(values: Tensor, mask: Tensor) -> float | None:
    count = int(mask.sum())
    if count == 0:
        return None
    return float((values * mask).sum() / count)


def decoded_means(world_model, features: Tensor) -> dict[str, Tensor]:
    return {key: dist.mode() for key, dist in world_model.decode(features).items()}


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
