"""Uniform item sampling, DreamerV3's rule (spec §7.2): index ~ U{0, ..., n-1}.

Adding one item and then drawing once, repeatedly, makes item i (1-based, oldest first)
drawn H_n - H_{i-1} times in expectation after n rounds (the paper's eq. 10 writes
H_n - H_i, an off-by-one; spec §7.4), so older items are oversampled.
"""

from __future__ import annotations

import numpy as np

from hieros.registry import register
from hieros.samplers import BaseSampler


@register("sampler", "uniform")
class Uniform(BaseSampler):
    """Uniform over all stored items (DreamerV3)."""

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        n, count = self._check_request(n, count)
        return rng.integers(0, n, size=count, dtype=np.int64)

    def __repr__(self) -> str:
        return "Uniform()"
