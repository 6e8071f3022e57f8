"""Example hieros plugin: the ``newest_only`` replay sampler and its config file."""

from __future__ import annotations

import numpy as np

from hieros.registry import register
from hieros.samplers import BaseSampler

# Appended to the hieros config search path, so `python -m hieros sampler=newest_only` finds sampler/newest_only.yaml.
HIEROS_CONFIG_PATH = "pkg://hieros_example_plugin.conf"


@register("sampler", "newest_only")
class NewestOnly(BaseSampler):
    """Uniform over the ``recent`` newest stored items only."""

    def __init__(self, recent: int = 1) -> None:
        if int(recent) < 1:
            raise ValueError(f"newest_only: recent must be >= 1, got {recent}")
        self.recent = int(recent)

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        n, count = self._check_request(n, count)
        return rng.integers(max(0, n - self.recent), n, size=count, dtype=np.int64)
