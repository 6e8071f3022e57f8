"""Efficient time-balanced sampling (ETBS) as the paper intends it: paper §2.3 eq. 12, Appendix H eq. 21-24.

Uniform sampling after adding one item per draw oversamples old items: item i is drawn
H_n - H_{i-1} times in expectation (eq. 10 writes H_n - H_i, an off-by-one; spec §7.4),
i.e. with the density p_s of eq. 21 over x = i + 2 in [2, n + 2). ETBS pushes a uniform draw
through the CDF of that density (probability integral transform) and blends the result
with the plain draw.

Eq. 12 as printed ("CDF(p(x))·τ + p(x)·(1 - τ)") applies a CDF to a probability and mixes a
CDF with a density. Like the original code, this module realises it as a blend of two
*index maps* of the same uniform draw (spec §7.4), with the CDF scaled by the CURRENT number
of items n (the original scales it by the replay capacity; see :mod:`.etbs_original`)::

    x ~ U[2, n + 2),  m = n + 2                                          # n_eff of eq. 24
    CDF_s(x) = (x (ln x - ln m - 1) + 2 (ln m - ln 2 + 1)) / (2 ln m - m - 2 ln 2 + 2)   # eq. 24
    g(x) = τ · n · CDF_s(x) + (1 - τ) · (x - 2)
    index = clip(floor(g(x)), 0, n - 1)

O(1) per draw. The per-draw density of the index is 1 / (n · g'(g⁻¹(i))) with
g'(x) = τ · n · p_s(x) + 1 - τ (p_s of eq. 21 with n → m); spec §7.4 writes it at
x = i + 2, which is exact only for τ = 0. :func:`index_probabilities` gives the exact
per-index probabilities. The denominator of eq. 24 vanishes only at m = 2 (n = 0, an
empty replay, refused); it is strictly negative for every n ≥ 1.
"""

from __future__ import annotations

import math

import numpy as np

from hieros.registry import register
from hieros.samplers import BaseSampler, check_temperature

__all__ = ["EfficientTimeBalanced", "skewed_cdf", "skewed_density", "index_map", "index_probabilities"]

_LN2 = math.log(2.0)


def _normaliser(m: float | np.ndarray) -> float | np.ndarray:
    # Denominator of eq. 24: 2 ln m - m - 2 ln 2 + 2 < 0 for every m > 2.
    return 2.0 * np.log(m) - m - 2.0 * _LN2 + 2.0


def skewed_cdf(x: np.ndarray, m: float | np.ndarray) -> np.ndarray:
    """CDF_s(x) of eq. 24 on [2, m]: 0 at x = 2, 1 at x = m."""
    log_m = np.log(m)
    return (x * (np.log(x) - log_m - 1.0) + 2.0 * (log_m - _LN2 + 1.0)) / _normaliser(m)


def skewed_density(x: np.ndarray, m: float | np.ndarray) -> np.ndarray:
    """p_s(x) of eq. 21 on [2, m] (integrates to 1)."""
    return (np.log(m) - np.log(x)) / -_normaliser(m)


def index_map(x: np.ndarray, n: int, temperature: float) -> np.ndarray:
    """g(x) = τ·n·CDF_s(x) + (1 - τ)·(x - 2) for x in [2, n + 2); maps onto [0, n)."""
    return temperature * n * skewed_cdf(x, n + 2.0) + (1.0 - temperature) * (x - 2.0)


def index_probabilities(n: int, temperature: float, iterations: int = 64) -> np.ndarray:
    """Exact per-draw probability of each index 0..n-1 under :class:`EfficientTimeBalanced`.

    P(index = i) = (g⁻¹(i + 1) - g⁻¹(i)) / n since x is uniform on an interval of length n and g is
    increasing; g⁻¹ is found by vectorised bisection. Shape (n,), sums to 1.
    """
    if n < 1:
        raise ValueError(f"index_probabilities needs n >= 1, got {n}")
    temperature = check_temperature(temperature, "index_probabilities")
    targets = np.arange(n + 1, dtype=np.float64)  # (n+1,) index boundaries
    low = np.full(n + 1, 2.0)
    high = np.full(n + 1, n + 2.0)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        below = index_map(mid, n, temperature) < targets
        low = np.where(below, mid, low)
        high = np.where(below, high, mid)
    boundaries = 0.5 * (low + high)
    boundaries[0], boundaries[-1] = 2.0, n + 2.0
    return np.diff(boundaries) / n


@register("sampler", "etbs")
class EfficientTimeBalanced(BaseSampler):
    """ETBS, paper intent: eq. 12 with the eq. 24 CDF scaled by the current size (O(1) per draw)."""

    def __init__(self, temperature: float = 0.3) -> None:
        self.temperature = check_temperature(temperature, "etbs")

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        n, count = self._check_request(n, count)
        m, tau = n + 2.0, self.temperature
        x = rng.uniform(2.0, m, size=count)  # (count,)
        # index_map(x) = τn·CDF_s(x) + (1-τ)(x-2) regrouped as x·(a·ln x + c) + d: five in-place array ops.
        log_m = math.log(m)
        a = tau * n / (2.0 * log_m - m - 2.0 * _LN2 + 2.0)
        c = -a * (log_m + 1.0) + (1.0 - tau)
        d = 2.0 * a * (log_m - _LN2 + 1.0) - 2.0 * (1.0 - tau)
        g = np.log(x)
        g *= a
        g += c
        g *= x
        g += d
        index = np.floor(g, out=g).astype(np.int64)
        return np.clip(index, 0, n - 1, out=index)

    def __repr__(self) -> str:
        return f"EfficientTimeBalanced(temperature={self.temperature})"
