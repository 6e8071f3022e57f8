"""ETBS exactly as the original code computes it (spec §7.3; ``selectors.py: EfficientTimeBalanced``).

Same index map as :mod:`.etbs` (paper §2.3 eq. 12 realised on indices, Appendix H eq. 24),
except that the CDF is scaled by the replay *capacity* instead of the current size and then
clipped to the newest index::

    x ~ U[2, N + 2),  m = N + 2
    c = P(x) - P(2),  P(y) = y (ln y - ln m - 1) / (2 ln m - m - 2 ln 2 + 2)      # eq. 23, 24
    s = min(c · capacity, N - 1)
    index = trunc(τ · s + (1 - τ) · (x - 2))

The operations run in the original's order, in float64, so a draw x gives the original's
index bit for bit. Since capacity (1e6 in training) is much larger than N, s = N - 1 in
almost every draw and the sampler is roughly uniform over the newest (1 - τ) share of the
items (spec §7.3). Kept for reproducing the paper's runs and Figure 13 comparisons; use
``etbs`` for the paper's stated method.
"""

from __future__ import annotations

import numpy as np

from hieros.registry import register
from hieros.samplers import BaseSampler, check_temperature


@register("sampler", "etbs_original")
class EfficientTimeBalancedOriginal(BaseSampler):
    """ETBS bit for bit as the original code: eq. 24 CDF scaled by the replay capacity, then min(·, N - 1)."""

    def __init__(self, temperature: float = 0.3, capacity: int = 1_000_000) -> None:
        self.temperature = check_temperature(temperature, "etbs_original")
        if capacity < 1:
            raise ValueError(f"etbs_original: capacity must be a positive number of items, got {capacity}")
        self.capacity = capacity

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        n, count = self._check_request(n, count)
        x = rng.uniform(low=2, high=n + 2, size=count)  # (count,)
        m = n + 2
        normaliser = 2 * np.log(m) - m - 2 * np.log(2) + 2
        integral_x = x * (np.log(x) - np.log(m) - 1) / normaliser
        integral_2 = 2 * (np.log(2) - np.log(m) - 1) / normaliser
        scaled = np.minimum((integral_x - integral_2) * self.capacity, n - 1)
        # int() in the original truncates toward zero; every operand is >= 0 here.
        return np.trunc(scaled * self.temperature + (1 - self.temperature) * (x - 2)).astype(np.int64)

    def __repr__(self) -> str:
        return f"EfficientTimeBalancedOriginal(temperature={self.temperature}, capacity={self.capacity})"
