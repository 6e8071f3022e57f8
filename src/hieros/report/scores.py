"""Human-normalised scores and the aggregate metrics of Agarwal et al. (2021), with stratified-bootstrap CIs.

The scores of one method are passed per game: a sequence of 1-D arrays, one value per run (seed). Games may hold
different numbers of runs (a missing seed must not drop the other seeds), so the bootstrap is written here in numpy
instead of calling ``rliable.library``: it is rliable's ``StratifiedBootstrap`` (resample the runs of every game with
replacement, independently per game) with arch's percentile intervals, vectorised over the replicates. On rectangular
data it is the same estimator as ``rliable.library.get_interval_estimates`` (``engine="rliable"`` calls that one).

Metrics (fractions; the paper and the report print them in percent), with x[g] the runs of game g:

- mean: mean over games of mean(x[g]); median: median over games of mean(x[g]);
- IQM: ``scipy.stats.trim_mean(pooled x, 0.25)``, the 25 % trimmed mean of all pooled runs;
- optimality gap: mean over pooled runs of max(0, gamma - x), gamma = 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

METRICS: tuple[str, ...] = ("mean", "median", "iqm", "optimality_gap")
METRIC_TITLES: Mapping[str, str] = {
    "mean": "Mean",
    "median": "Median",
    "iqm": "IQM",
    "optimality_gap": "Optimality Gap",
}
PUBLISHED_METHODS: tuple[str, ...] = ("SimPLe", "TWM", "IRIS", "DreamerV3", "HIEROS")
REFERENCE_KINDS: tuple[str, ...] = ("standard", "paper")
_CHUNK_ELEMENTS = 4_000_000  # replicates x pooled runs per bootstrap chunk (float64: 32 MB)


# --------------------------------------------------------------------------- reference data
@dataclass(frozen=True)
class GameReference:
    """Random and human scores of one Atari100k game: unrounded standard values and the paper's rounded ones."""

    game: str
    rom: str
    random: float
    human: float
    random_paper: float | None
    human_paper: float | None

    def bounds(self, kind: str = "standard") -> tuple[float, float] | None:
        if kind == "standard":
            return self.random, self.human
        if kind == "paper":
            if self.random_paper is None or self.human_paper is None:
                return None
            return self.random_paper, self.human_paper
        raise ValueError(f"unknown reference kind {kind!r}; use one of {REFERENCE_KINDS}")


@dataclass(frozen=True)
class PublishedMethod:
    """Per-game scores (None where not published) and aggregates (percent) of one method, with their source."""

    name: str
    source: str
    scores: Mapping[str, float | None]
    aggregates: Mapping[str, float | None]


@dataclass(frozen=True)
class Reference:
    """The shipped ``hieros/data/atari100k_reference.json``."""

    games: Mapping[str, GameReference]
    published: Mapping[str, PublishedMethod]
    sources: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, game: str | None) -> GameReference | None:
        """The game by friendly name (``ms_pacman``), ROM name (``MsPacman``) or a spelling with spaces/dashes."""
        if game is None:
            return None
        key = str(game).strip().lower().replace("-", "_").replace(" ", "_")
        if key in self.games:
            return self.games[key]
        squashed = key.replace("_", "")
        for reference in self.games.values():
            if reference.rom.lower() == squashed or reference.game.replace("_", "") == squashed:
                return reference
        return None

    def normalize(self, game: str | None, scores: ArrayLike, kind: str = "standard") -> np.ndarray | None:
        """Human-normalised ``scores`` of ``game``, or None when the game has no reference scores of that kind."""
        reference = self.lookup(game)
        bounds = reference.bounds(kind) if reference is not None else None
        if bounds is None:
            return None
        return human_normalized(scores, *bounds)


def load_reference(path: str | Path | None = None) -> Reference:
    """Read the reference table (default: the copy shipped inside the package)."""
    if path is None:
        text = resources.files("hieros").joinpath("data", "atari100k_reference.json").read_text()
    else:
        text = Path(path).read_text()
    data = json.loads(text)
    games = {entry["game"]: GameReference(**entry) for entry in data["games"]}
    published = {
        name: PublishedMethod(name, entry["source"], dict(entry["scores"]), dict(entry["aggregates"]))
        for name, entry in data["published"].items()
    }
    return Reference(games, published, dict(data.get("sources", {})))


def human_normalized(scores: ArrayLike, random: float, human: float) -> np.ndarray:
    """(score - random) / (human - random), element-wise."""
    if human == random:
        raise ValueError(f"human and random reference scores are equal ({human}); the normalisation is undefined")
    return (np.asarray(scores, dtype=np.float64) - random) / (human - random)


# --------------------------------------------------------------------------- point estimates
def _as_games(per_game: Sequence[ArrayLike], what: str = "per_game") -> list[np.ndarray]:
    games = [np.asarray(runs, dtype=np.float64).reshape(-1) for runs in per_game]
    if not games:
        raise ValueError(f"{what} is empty: pass one array of run scores per game")
    for index, runs in enumerate(games):
        if runs.size == 0:
            raise ValueError(f"{what}[{index}] holds no runs; leave games without runs out (and report them)")
        if not np.all(np.isfinite(runs)):
            raise ValueError(f"{what}[{index}] holds non-finite scores {runs.tolist()}; leave those runs out")
    return games


def iqm(values: ArrayLike) -> float:
    """Interquartile mean with ``scipy.stats.trim_mean(values, 0.25)``'s cut: int(0.25 n) values off each end."""
    ordered = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    cut = int(0.25 * ordered.size)
    return float(ordered[cut : ordered.size - cut].mean())


def optimality_gap(values: ArrayLike, gamma: float = 1.0) -> float:
    """Mean of max(0, gamma - x) over all values (scores above gamma count as gamma)."""
    return float(np.mean(np.maximum(gamma - np.asarray(values, dtype=np.float64), 0.0)))


def point_estimates(per_game: Sequence[ArrayLike], gamma: float = 1.0) -> dict[str, float]:
    """Mean, median, IQM and optimality gap of normalised scores given per game (fractions, not percent)."""
    games = _as_games(per_game)
    game_means = np.array([runs.mean() for runs in games])
    pooled = np.concatenate(games)
    return {
        "mean": float(game_means.mean()),
        "median": float(np.median(game_means)),
        "iqm": iqm(pooled),
        "optimality_gap": optimality_gap(pooled, gamma),
    }


# --------------------------------------------------------------------------- stratified bootstrap
@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    estimate: float
    low: float
    high: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.estimate * factor, self.low * factor, self.high * factor)


class _Packed:
    """Runs of all games in one flat array: values (N,), game index per value (N,), offsets (G,), counts (G,)."""

    def __init__(self, games: list[np.ndarray]) -> None:
        self.counts = np.array([runs.size for runs in games])
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.values = np.concatenate(games)
        self.game_of = np.repeat(np.arange(len(games)), self.counts)

    def resample(self, reps: int, rng: np.random.Generator) -> np.ndarray:
        """(reps, N): every game's n_g runs drawn with replacement from its own n_g runs (stratified by game)."""
        pick = np.floor(rng.random((reps, self.values.size)) * self.counts[self.game_of]).astype(np.int64)
        return self.values[self.offsets[self.game_of] + pick]

    def game_means(self, samples: np.ndarray) -> np.ndarray:
        """(reps, N) -> (reps, G)."""
        return np.add.reduceat(samples, self.offsets, axis=1) / self.counts


def _metrics_of_samples(packed: _Packed, samples: np.ndarray, gamma: float) -> np.ndarray:
    """(reps, N) resampled runs -> (reps, 4) mean, median, IQM, optimality gap."""
    game_means = packed.game_means(samples)
    ordered = np.sort(samples, axis=1)
    cut = int(0.25 * samples.shape[1])
    return np.stack(
        [
            game_means.mean(axis=1),
            np.median(game_means, axis=1),
            ordered[:, cut : samples.shape[1] - cut].mean(axis=1),
            np.maximum(gamma - samples, 0.0).mean(axis=1),
        ],
        axis=1,
    )


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """arch's ``conf_int(method="percentile")``: the alpha/2 and 1 - alpha/2 percentiles of the replicates."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)
    return low, high


def _check_reps(reps: int) -> None:
    if int(reps) < 1:
        raise ValueError(f"reps must be >= 1 (bootstrap replicates), got {reps}")


def interval_estimates(
    per_game: Sequence[ArrayLike],
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
    gamma: float = 1.0,
    engine: str = "numpy",
) -> dict[str, Interval]:
    """Point estimates of :data:`METRICS` with stratified-bootstrap percentile CIs.

    ``engine="numpy"`` (default) handles any number of runs per game and is reproducible through ``seed``.
    ``engine="rliable"`` calls ``rliable.library.get_interval_estimates`` (needs the same number of runs for every
    game, and an importable rliable: rliable 1.2 with arch 7 fails to import under pandas 3).
    """
    _check_reps(reps)
    games = _as_games(per_game)
    points = point_estimates(games, gamma)
    if engine == "rliable":
        low, high = _rliable_intervals(games, reps, confidence, seed, gamma)
    elif engine == "numpy":
        packed, rng = _Packed(games), np.random.default_rng(seed)
        chunk = max(1, _CHUNK_ELEMENTS // packed.values.size)
        replicates = np.concatenate(
            [
                _metrics_of_samples(packed, packed.resample(min(chunk, reps - start), rng), gamma)
                for start in range(0, reps, chunk)
            ]
        )
        low, high = _percentile_interval(replicates, confidence)
    else:
        raise ValueError(f"unknown bootstrap engine {engine!r}; use 'numpy' or 'rliable'")
    return {name: Interval(points[name], float(low[i]), float(high[i])) for i, name in enumerate(METRICS)}


def _rliable_intervals(
    games: list[np.ndarray], reps: int, confidence: float, seed: int, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    runs = {runs.size for runs in games}
    if len(runs) != 1:
        raise ValueError(f"engine='rliable' needs the same number of runs per game, got {sorted(runs)}; use 'numpy'")
    from rliable import library, metrics

    matrix = np.stack(games, axis=1)  # (runs, games), rliable's layout

    def aggregates(scores: np.ndarray) -> np.ndarray:
        return np.array(
            [
                metrics.aggregate_mean(scores),
                metrics.aggregate_median(scores),
                metrics.aggregate_iqm(scores),
                metrics.aggregate_optimality_gap(scores, gamma),
            ]
        )

    # rliable's StratifiedBootstrap draws from numpy's global RNG: seed it for this call only and restore it after.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        _, intervals = library.get_interval_estimates(
            {"x": matrix}, aggregates, reps=reps, confidence_interval_size=confidence
        )
    finally:
        np.random.set_state(saved)
    return intervals["x"][0], intervals["x"][1]


def probability_of_improvement(
    x_per_game: Sequence[ArrayLike],
    y_per_game: Sequence[ArrayLike],
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """P(X > Y): mean over games of P(x > y) + P(x = y)/2 over all run pairs (Mann-Whitney U / (n_x n_y), as
    ``rliable.metrics.probability_of_improvement``), with a CI from resampling X's and Y's runs independently per game
    (rliable's ``StratifiedIndependentBootstrap``)."""
    _check_reps(reps)
    xs, ys = _as_games(x_per_game, "x_per_game"), _as_games(y_per_game, "y_per_game")
    if len(xs) != len(ys):
        raise ValueError(f"X has {len(xs)} games and Y has {len(ys)}; pass the same games in the same order")
    rng = np.random.default_rng(seed)
    replicates = np.zeros(reps)
    estimate = 0.0
    for x, y in zip(xs, ys):
        estimate += _pair_probability(x[None], y[None])[0]
        chunk = max(1, _CHUNK_ELEMENTS // (x.size * y.size))
        for start in range(0, reps, chunk):
            count = min(chunk, reps - start)
            x_res = x[rng.integers(0, x.size, (count, x.size))]
            y_res = y[rng.integers(0, y.size, (count, y.size))]
            replicates[start : start + count] += _pair_probability(x_res, y_res)
    low, high = _percentile_interval(replicates / len(xs), confidence)
    return Interval(estimate / len(xs), float(low), float(high))


def _pair_probability(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(reps, n_x), (reps, n_y) -> (reps,) fraction of pairs with x > y, ties counting one half."""
    greater = x[:, :, None] > y[:, None, :]
    equal = x[:, :, None] == y[:, None, :]
    return (greater + 0.5 * equal).mean(axis=(1, 2))


def performance_profile(
    per_game: Sequence[ArrayLike],
    taus: ArrayLike,
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score distribution (rliable's run-score performance profile): the fraction of pooled runs scoring above each
    tau, with stratified-bootstrap CIs. Returns (profile, low, high), each shaped like ``taus``."""
    _check_reps(reps)
    games = _as_games(per_game)
    taus = np.asarray(taus, dtype=np.float64)
    packed, rng = _Packed(games), np.random.default_rng(seed)
    profile = (packed.values[:, None] > taus[None, :]).mean(axis=0)
    chunk = max(1, _CHUNK_ELEMENTS // (packed.values.size * taus.size))
    replicates = np.concatenate(
        [
            (packed.resample(min(chunk, reps - start), rng)[:, :, None] > taus).mean(axis=1)
            for start in range(0, reps, chunk)
        ]
    )
    low, high = _percentile_interval(replicates, confidence)
    return profile, low, high


# --------------------------------------------------------------------------- the paper's Table 1 check
def published_normalized(reference: Reference, method: str = "HIEROS", kind: str = "standard") -> dict[str, float]:
    """Human-normalised per-game scores that ``method`` published (games without a published score left out)."""
    if method not in reference.published:
        raise ValueError(f"no published scores of {method!r}; available: {', '.join(reference.published)}")
    out = {}
    for game, score in reference.published[method].scores.items():
        normalised = reference.normalize(game, score, kind) if score is not None else None
        if normalised is not None:
            out[game] = float(normalised)
    return out


def published_aggregates(
    reference: Reference, method: str = "HIEROS", kind: str = "standard", games: Sequence[str] | None = None
) -> dict[str, Any]:
    """Aggregates (percent) recomputed from ``method``'s published per-game means, optionally over ``games`` only.

    One value per game (the paper publishes only the mean of its 3 seeds), so IQM and optimality gap are taken over
    the 25 per-game means, not over the 75 per-seed scores the paper pooled.
    """
    normalised = published_normalized(reference, method, kind)
    chosen = [game for game in (games if games is not None else normalised) if game in normalised]
    if not chosen:
        return {"games": 0, **{name: None for name in METRICS}}
    points = point_estimates([[normalised[game]] for game in chosen])
    return {"games": len(chosen), **{name: 100.0 * value for name, value in points.items()}}


def table1_check(reference: Reference | None = None, method: str = "HIEROS") -> dict[str, dict[str, Any]]:
    """Feed the paper's own per-game scores back through the metrics: with either reference table the mean and
    median reproduce Table 1 (120 and 56); IQM and optimality gap come out near 58 and 47 instead of the published
    53 and 49, which pool per-seed scores the paper does not publish."""
    reference = reference or load_reference()
    published = reference.published[method].aggregates
    return {
        "published": {
            "games": len([s for s in reference.published[method].scores.values() if s is not None]),
            **published,
        },
        **{f"recomputed ({kind} reference)": published_aggregates(reference, method, kind) for kind in REFERENCE_KINDS},
    }
