"""Sampler cost: microseconds per batch of 16 indices at n = 1e3 … 1e6 items (median of many repeats).

Targets: ``uniform`` and ``etbs`` flat in n (largest / smallest median ≤ 1.2×, the paper's O(1)
claim); ``tbs`` grows with n (the O(n) baseline ETBS replaces).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hieros.samplers.etbs import EfficientTimeBalanced
from hieros.samplers.etbs_original import EfficientTimeBalancedOriginal
from hieros.samplers.tbs import TimeBalanced
from hieros.samplers.uniform import Uniform

SIZES: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
BATCH = 16


def _median_us(sampler: Any, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    """Median microseconds per call at every size; sizes are interleaved so background load hits all alike."""
    for n in SIZES:
        sampler.indices(n, BATCH, rng)  # warm-up (tbs grows its visit array here)
    timings = np.empty((repeats, len(SIZES)))
    for repeat in range(repeats):
        for column, n in enumerate(SIZES):
            start = time.perf_counter_ns()
            sampler.indices(n, BATCH, rng)
            timings[repeat, column] = time.perf_counter_ns() - start
    return {str(n): round(float(median) / 1e3, 3) for n, median in zip(SIZES, np.median(timings, axis=0))}


def run(quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    factories = {
        "uniform": Uniform,
        "etbs": lambda: EfficientTimeBalanced(0.3),
        "etbs_original": lambda: EfficientTimeBalancedOriginal(0.3),
        "tbs": lambda: TimeBalanced(20.0),
    }
    repeats = 200 if quick else 5000
    tbs_repeats = 5 if quick else 60
    figures: dict[str, Any] = {"batch": BATCH, "sizes": list(SIZES), "us_per_batch": {}}
    for name, factory in factories.items():
        figures["us_per_batch"][name] = _median_us(factory(), tbs_repeats if name == "tbs" else repeats, rng)
    for name, per_size in figures["us_per_batch"].items():
        values = list(per_size.values())
        figures[f"{name}_largest_over_smallest"] = round(max(values) / min(values), 3)
    figures["tbs_1e6_over_1e3"] = round(
        figures["us_per_batch"]["tbs"][str(SIZES[-1])] / figures["us_per_batch"]["tbs"][str(SIZES[0])], 1
    )
    figures["targets_met"] = {
        "uniform_flat": figures["uniform_largest_over_smallest"] <= 1.2,
        "etbs_flat": figures["etbs_largest_over_smallest"] <= 1.2,
        "tbs_grows": figures["tbs_1e6_over_1e3"] > 10,
    }
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
