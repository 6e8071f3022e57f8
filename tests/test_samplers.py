"""Replay samplers against their analytic distributions and spec §7.5's Figure 13 table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hieros.registry import Registry, RegistryError
from hieros.report.figure13 import decile_means, main, simulate
from hieros.samplers import Sampler
from hieros.samplers.etbs import EfficientTimeBalanced, index_map, index_probabilities, skewed_cdf, skewed_density
from hieros.samplers.etbs_original import EfficientTimeBalancedOriginal
from hieros.samplers.tbs import TimeBalanced
from hieros.samplers.uniform import Uniform

SAMPLER_MODULES = (
    "hieros.samplers.uniform",
    "hieros.samplers.etbs",
    "hieros.samplers.etbs_original",
    "hieros.samplers.tbs",
)
ALL_SAMPLERS = (
    Uniform,
    EfficientTimeBalanced,
    EfficientTimeBalancedOriginal,
    TimeBalanced,
)
DECILES = (0, 1, 2, 4, 7, 9)  # the columns d1, d2, d3, d5, d8, d10 of spec §7.5's first table


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    registry.load_modules(SAMPLER_MODULES)
    return registry


def _chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = counts.sum() * probabilities
    return float(((counts - expected) ** 2 / expected).sum())


# ------------------------------------------------------------------ registry
def test_registry_builds_every_sampler_from_a_config_node(registry: Registry) -> None:
    assert registry.names("sampler") == ["etbs", "etbs_original", "tbs", "uniform"]
    etbs = registry.build("sampler", {"name": "etbs", "temperature": 0.5})
    original = registry.build("sampler", {"name": "etbs_original", "temperature": 0.3, "capacity": 4000})
    assert isinstance(etbs, EfficientTimeBalanced) and etbs.temperature == 0.5
    assert isinstance(original, EfficientTimeBalancedOriginal) and original.capacity == 4000
    assert isinstance(registry.build("sampler", "uniform"), Uniform)
    assert registry.build("sampler", {"name": "tbs", "temperature": 5}).temperature == 5.0
    for cls in ALL_SAMPLERS:
        assert isinstance(cls(), Sampler)
    with pytest.raises(RegistryError, match="accepts"):
        registry.build("sampler", {"name": "uniform", "temperature": 0.3})


@pytest.mark.parametrize("temperature", [-0.1, 1.01, float("nan")])
def test_invalid_temperature_is_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"temperature must lie in \[0, 1\]"):
        EfficientTimeBalanced(temperature)
    with pytest.raises(ValueError, match=r"temperature must lie in \[0, 1\]"):
        EfficientTimeBalancedOriginal(temperature)


@pytest.mark.parametrize("temperature", [0.0, -3.0])
def test_tbs_refuses_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        TimeBalanced(temperature)


def test_etbs_original_refuses_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EfficientTimeBalancedOriginal(0.3, capacity=0)


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("cls", ALL_SAMPLERS)
def test_edge_sizes(cls: type) -> None:
    rng = np.random.default_rng(0)
    sampler = cls()
    one = sampler.indices(1, 64, rng)
    assert one.dtype == np.int64 and one.shape == (64,) and (one == 0).all()
    two = sampler.indices(2, 4000, rng)
    assert two.dtype == np.int64 and set(np.unique(two).tolist()) == {0, 1}
    large = sampler.indices(10_000, 16, rng)
    assert large.shape == (16,) and large.min() >= 0 and large.max() < 10_000
    assert sampler.indices(5, 0, rng).shape == (0,)
    with pytest.raises(ValueError, match="at least one"):
        sampler.indices(0, 16, rng)
    with pytest.raises(ValueError, match="count must be >= 0"):
        sampler.indices(5, -1, rng)


@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0])
def test_etbs_small_sizes_have_exact_probabilities(temperature: float) -> None:
    """n = 1, 2, 3 against the exact index probabilities; the eq. 24 denominator is never 0 for n >= 1."""
    rng = np.random.default_rng(1)
    sampler = EfficientTimeBalanced(temperature)
    for n in (1, 2, 3):
        exact = index_probabilities(n, temperature)
        draws = np.bincount(sampler.indices(n, 200_000, rng), minlength=n)
        assert np.allclose(draws / draws.sum(), exact, atol=0.005)
        assert (exact > 0).all()  # every index is reachable


@pytest.mark.parametrize("cls", [Uniform, EfficientTimeBalanced, EfficientTimeBalancedOriginal])
def test_stateless_samplers_have_empty_state(cls: type) -> None:
    sampler = cls()
    assert sampler.state_dict() == {}
    sampler.load_state_dict({})
    with pytest.raises(ValueError, match="stateless"):
        sampler.load_state_dict({"visits": np.zeros(3)})


def test_same_generator_state_gives_same_indices() -> None:
    for cls in ALL_SAMPLERS:
        first = cls().indices(1000, 16, np.random.default_rng(7))
        second = cls().indices(1000, 16, np.random.default_rng(7))
        assert np.array_equal(first, second)


# ------------------------------------------------------- analytic densities
def test_skewed_cdf_matches_integral_of_density() -> None:
    """Eq. 24 is the integral of eq. 21 from 2: 0 at 2, 1 at m, derivative p_s."""
    m = 1002.0
    x = np.linspace(2.0, m, 20001)
    cdf = skewed_cdf(x, m)
    assert cdf[0] == pytest.approx(0.0, abs=1e-12) and cdf[-1] == pytest.approx(1.0, abs=1e-12)
    density = skewed_density(x, m)
    trapezoid = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(x))])
    assert np.allclose(cdf, trapezoid, atol=1e-6)


@pytest.mark.parametrize(("temperature", "tolerance"), [(0.3, 1e-3), (1.0, 0.02)])
def test_index_probabilities_follow_the_per_draw_density(temperature: float, tolerance: float) -> None:
    """Spec §7.4: density at index i ∝ 1/(τ·n·p_s(x) + 1 − τ), here at x = g⁻¹(i + ½) (exact up to discretisation)."""
    n = 1000
    exact = index_probabilities(n, temperature)
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)
    low, high = np.full(n, 2.0), np.full(n, n + 2.0)
    for _ in range(64):
        mid = 0.5 * (low + high)
        below = index_map(mid, n, temperature) < np.arange(n) + 0.5
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    density = 1.0 / (n * (temperature * n * skewed_density(0.5 * (low + high), n + 2.0) + 1.0 - temperature))
    # τ = 1: g'(x) → 0 at x = n + 2, so the newest bin's midpoint density is not its mass.
    inner = slice(None, -1) if temperature == 1.0 else slice(None)
    assert np.allclose(density[inner], exact[inner], rtol=tolerance)
    assert np.all(np.diff(exact) > 0)  # newer items are strictly more likely per draw


@pytest.mark.parametrize("temperature", [0.0, 0.3, 0.7, 1.0])
def test_etbs_histogram_matches_exact_probabilities(temperature: float) -> None:
    n, draws = 50, 400_000
    counts = np.bincount(EfficientTimeBalanced(temperature).indices(n, draws, np.random.default_rng(3)), minlength=n)
    # chi-square with 49 degrees of freedom: mean 49, sd 9.9; 110 is p ≈ 1e-6.
    assert _chi_square(counts, index_probabilities(n, temperature)) < 110
    if temperature == 0.0:
        assert _chi_square(counts, np.full(n, 1 / n)) < 110


def test_etbs_differs_measurably_from_uniform() -> None:
    n, draws = 50, 400_000
    counts = np.bincount(EfficientTimeBalanced(0.3).indices(n, draws, np.random.default_rng(4)), minlength=n)
    assert _chi_square(counts, np.full(n, 1 / n)) > 1000


def _original_scalar_rule(x: float, n: int, temperature: float, capacity: float) -> int:
    """The original ``selectors.py: EfficientTimeBalanced.__call__``/``cdf`` for one draw, transcribed."""
    m = n + 2

    def integral(y: float) -> float:
        a = y * (np.log(y) - np.log(m) - 1)
        b = 2 * np.log(m) - m - 2 * np.log(2) + 2
        return a / b

    adjusted = min((integral(x) - integral(2)) * capacity, n - 1)
    return int(adjusted * temperature + (1 - temperature) * (x - 2))


@pytest.mark.parametrize("temperature", [0.1, 0.3, 1.0])
def test_etbs_original_matches_the_original_rule_draw_for_draw(temperature: float) -> None:
    for n, capacity in [(1, 1e6), (2, 1e6), (7, 1e6), (4000, 4000.0), (4000, 1e6), (123_457, 1e6)]:
        sampler = EfficientTimeBalancedOriginal(temperature, capacity=int(capacity))
        vectorised = sampler.indices(n, 500, np.random.default_rng(11))
        rng = np.random.default_rng(11)
        scalar = [_original_scalar_rule(rng.uniform(low=2, high=n + 2), n, temperature, capacity) for _ in range(500)]
        assert vectorised.tolist() == scalar


@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0])
def test_etbs_is_the_spec_index_map_scaled_by_the_current_size(temperature: float) -> None:
    """Spec §7.4: index = floor(τ·n·CDF_s(x) + (1 − τ)(x − 2)), x ~ U[2, n + 2), eq. 24 with n_eff = n + 2."""
    for n in (1, 2, 3, 50, 4000, 10**6):
        drawn = EfficientTimeBalanced(temperature).indices(n, 1000, np.random.default_rng(12))
        x = np.random.default_rng(12).uniform(2.0, n + 2.0, size=1000)
        m = n + 2.0
        cdf = (x * (np.log(x) - np.log(m) - 1) + 2 * (np.log(m) - np.log(2) + 1)) / (
            2 * np.log(m) - m - 2 * np.log(2) + 2
        )
        expected = np.clip(np.floor(temperature * n * cdf + (1 - temperature) * (x - 2)), 0, n - 1)
        assert np.array_equal(drawn, expected.astype(np.int64))


def test_etbs_original_at_capacity_1e6_skips_the_oldest_items() -> None:
    """Spec §7.3: at N = 1e5, τ = 0.3 only about 1.9 % of draws fall in the oldest 30 %."""
    n = 100_000
    draws = EfficientTimeBalancedOriginal(0.3).indices(n, 200_000, np.random.default_rng(5))
    assert np.mean(draws < 0.3 * n) == pytest.approx(0.019, abs=0.003)


# ---------------------------------------------------------- Figure 13 table
def _expected_uniform_counts(size: int) -> np.ndarray:
    """E[count of item i] = Σ_{t=i}^{size} 1/t = H_size − H_{i−1} (eq. 10 without its off-by-one)."""
    return np.cumsum((1.0 / np.arange(1, size + 1))[::-1])[::-1]


def _expected_etbs_counts(size: int, temperature: float) -> np.ndarray:
    """Σ over rounds t ≥ i of the exact P_t(index = i), all (t, i) pairs bisected at once."""
    t = np.repeat(np.arange(1, size + 1), np.arange(2, size + 2))  # every round t with boundaries 0..t
    boundary = np.concatenate([np.arange(n + 1) for n in range(1, size + 1)]).astype(np.float64)
    low, high = np.full(t.size, 2.0), t + 2.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        below = index_map(mid, t, temperature) < boundary
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    x = 0.5 * (low + high)
    x[boundary == 0] = 2.0
    x[boundary == t] = t[boundary == t] + 2.0
    ends = np.cumsum(np.arange(2, size + 2))
    probabilities = np.diff(x) / t[1:]
    keep = np.ones(probabilities.size, dtype=bool)
    keep[ends[:-1] - 1] = False  # differences that straddle two rounds
    item = boundary[:-1][keep].astype(np.int64)
    return np.bincount(item, weights=probabilities[keep], minlength=size)


def test_uniform_figure13_counts_match_harmonic_expectation_and_spec_table() -> None:
    counts = simulate(Uniform(), size=4000, seeds=100)
    expected = decile_means(_expected_uniform_counts(4000))
    assert np.allclose(decile_means(counts), expected, atol=0.04)
    spec_row = [3.29, 1.90, 1.40, 0.81, 0.29, 0.05]
    assert np.allclose(np.take(decile_means(counts), DECILES), spec_row, atol=0.06)
    assert counts.sum() == pytest.approx(4000)


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_etbs_figure13_counts_match_exact_expectation(temperature: float) -> None:
    size = 600
    counts = simulate(EfficientTimeBalanced(temperature), size=size, seeds=300)
    expected = _expected_etbs_counts(size, temperature)
    assert expected.sum() == pytest.approx(size, rel=1e-9)
    assert np.allclose(decile_means(counts), decile_means(expected), atol=0.04)


@pytest.mark.parametrize(
    ("sampler", "spec_row"),
    [
        (EfficientTimeBalanced(0.3), [2.65, 1.85, 1.45, 0.93, 0.38, 0.07]),
        (EfficientTimeBalanced(1.0), [1.80, 1.49, 1.31, 1.03, 0.67, 0.29]),
        (EfficientTimeBalancedOriginal(0.3, capacity=4000), [2.17, 1.88, 1.58, 1.02, 0.41, 0.07]),
        (EfficientTimeBalancedOriginal(0.3, capacity=1_000_000), [1.72, 1.71, 1.74, 1.14, 0.42, 0.07]),
    ],
    ids=["etbs-0.3", "etbs-1.0", "original-4000-0.3", "original-1e6-0.3"],
)
def test_etbs_figure13_deciles_match_spec_table(sampler: Sampler, spec_row: list[float]) -> None:
    deciles = decile_means(simulate(sampler, size=4000, seeds=100))
    assert np.allclose(np.take(deciles, DECILES), spec_row, atol=0.06)


def test_etbs_original_tau_1_almost_always_draws_the_newest_item() -> None:
    """Spec §7.5: τ = 1 at scale 1e6 gives 1.00 per item; only draws with CDF < (N − 1)/1e6 pick older items."""
    counts = simulate(EfficientTimeBalancedOriginal(1.0), size=2000, seeds=5)
    assert np.mean(counts == 1.0) > 0.98 and np.abs(counts - 1.0).max() <= 0.4


def test_figure13_cli_writes_counts_and_plot(tmp_path) -> None:
    main(["--out", str(tmp_path), "--size", "300", "--seeds", "3", "--no-tbs"])
    result = json.loads((tmp_path / "counts.json").read_text())
    assert result["size"] == 300 and result["seeds"] == 3
    assert {"uniform", "etbs tau=0.3", "etbs tau=1.0", "etbs_original capacity=1e6 tau=0.3"} <= set(result["counts"])
    for name, counts in result["counts"].items():
        assert len(counts) == 300 and sum(counts) == pytest.approx(300, abs=0.05), name
        assert len(result["decile_means"][name]) == 10
    assert (tmp_path / "figure13.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ tbs
def test_tbs_balances_visits_where_uniform_does_not() -> None:
    rng = np.random.default_rng(6)
    tbs = TimeBalanced(temperature=1.0)
    for _ in range(1000):
        tbs.indices(100, 16, rng)
    visits = tbs.visits
    assert visits.sum() == 16_000 and visits.max() - visits.min() <= 4
    uniform_visits = np.bincount(Uniform().indices(100, 16_000, rng), minlength=100)
    assert uniform_visits.max() - uniform_visits.min() > 20


def test_tbs_prefers_new_items_and_follows_evictions() -> None:
    rng = np.random.default_rng(8)
    tbs = TimeBalanced(temperature=1.0)
    for _ in range(200):
        tbs.indices(100, 16, rng)
    drawn = tbs.indices(110, 10, rng)  # 10 new items with 0 visits vs ~32 visits each
    assert sorted(drawn.tolist()) == list(range(100, 110))
    before = tbs.visits
    tbs.evict(10)
    assert np.array_equal(tbs.visits, before[10:])
    tbs.indices(105, 1, rng)  # n smaller than tracked: the oldest are dropped
    assert tbs.visits.size == 105


def test_tbs_draws_without_replacement_when_it_can() -> None:
    rng = np.random.default_rng(9)
    batch = TimeBalanced().indices(16, 16, rng)
    assert sorted(batch.tolist()) == list(range(16))
    assert TimeBalanced().indices(3, 16, rng).shape == (16,)  # more draws than items: with replacement


def test_tbs_state_round_trip() -> None:
    rng = np.random.default_rng(10)
    tbs = TimeBalanced(temperature=2.0)
    for n in range(20, 60):
        tbs.indices(n, 8, rng)
    state = tbs.state_dict()
    restored = TimeBalanced(temperature=2.0)
    restored.load_state_dict(state)
    assert np.array_equal(restored.visits, tbs.visits)
    assert np.array_equal(
        restored.indices(60, 8, np.random.default_rng(1)), tbs.indices(60, 8, np.random.default_rng(1))
    )
    state["visits"][:] = 0  # the returned state is a copy
    assert tbs.visits.sum() > 0
    with pytest.raises(ValueError, match="visits"):
        restored.load_state_dict({})
