"""The report's tables as pandas DataFrames (written as CSV): per-seed and per-game scores, human-normalised scores,
aggregates with CIs next to the published ones, the paper's Table 1 check, probability of improvement, and the
missing-data list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import pandas as pd

from hieros.report import scores as sc
from hieros.report.records import Problem, Sweep, records_table

NORMALISATIONS: tuple[str, ...] = ("human", "minmax")


def per_seed_table(
    sweep: Sweep, reference: sc.Reference, score: str = "final_eval", mode: str = "sampled", kind: str = "standard"
) -> pd.DataFrame:
    """One row per run: variant, game, seed, status, the chosen score, and its human-normalised score (NaN for a
    game without reference scores or a run without the score)."""
    rows = records_table(sweep, score, mode)
    for row, record in zip(rows, sweep.records):
        reference_game = reference.lookup(row["game"]) if record.env == "atari100k" else None
        bounds = reference_game.bounds(kind) if reference_game is not None else None
        row["random"], row["human"] = bounds if bounds is not None else (np.nan, np.nan)
        row["hns"] = (
            float(sc.human_normalized(row["score"], *bounds))
            if bounds is not None and row["score"] is not None
            else np.nan
        )
        row["agent_steps"] = (record.scores or {}).get("agent_steps")
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["variant", "game", "seed", "run", "status", "score", "hns"])
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    order = {variant: index for index, variant in enumerate(sweep.variants)}
    frame["_order"] = frame["variant"].map(order)
    frame = frame.sort_values(["_order", "game", "seed"], na_position="last", kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True)


def normalised_scores(per_seed: pd.DataFrame, normalisation: str = "human") -> pd.DataFrame:
    """Rows with a score, with ``norm`` = the human-normalised score (``human``) or the score min-max scaled per game
    over all runs of the sweep (``minmax``, for environments without human reference scores)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; use one of {NORMALISATIONS}")
    frame = per_seed[per_seed["score"].notna() & per_seed["game"].notna()].copy()
    if normalisation == "human":
        frame["norm"] = frame["hns"]
        return frame[frame["norm"].notna()]
    low = frame.groupby("game")["score"].transform("min")
    high = frame.groupby("game")["score"].transform("max")
    span = (high - low).where(high > low, np.nan)
    frame["norm"] = ((frame["score"] - low) / span).fillna(0.5)
    return frame


def choose_normalisation(per_seed: pd.DataFrame) -> str:
    """``human`` when every scored game has reference scores, else ``minmax``."""
    scored = per_seed[per_seed["score"].notna() & per_seed["game"].notna()]
    return "human" if len(scored) and scored["hns"].notna().all() else "minmax"


def per_game_by_variant(normalised: pd.DataFrame, variant: str, games: Sequence[str] | None = None) -> dict:
    """{game: array of the variant's normalised run scores} for ``games`` (default: the variant's own games)."""
    frame = normalised[normalised["variant"] == variant]
    chosen = games if games is not None else sorted(frame["game"].unique())
    return {
        game: frame.loc[frame["game"] == game, "norm"].to_numpy() for game in chosen if (frame["game"] == game).any()
    }


def per_game_table(per_seed: pd.DataFrame, reference: sc.Reference) -> pd.DataFrame:
    """One row per (variant, game): seeds, mean/std/min/max of the score, per-seed scores, mean HNS, and the
    published per-game scores of HIEROS and the baselines."""
    rows = []
    scored = per_seed[per_seed["score"].notna()]
    for (variant, game), group in scored.groupby(["variant", "game"], sort=False):
        group = group.sort_values("seed")
        values = group["score"].to_numpy()
        row = {
            "variant": variant,
            "game": game,
            "seeds": len(values),
            "mean": values.mean(),
            "std": values.std(ddof=1) if len(values) > 1 else np.nan,
            "min": values.min(),
            "max": values.max(),
            "per_seed": " / ".join(f"{seed}: {value:.1f}" for seed, value in zip(group["seed"], values)),
            "hns_mean": group["hns"].mean(),
        }
        for method in sc.PUBLISHED_METHODS:
            published = reference.published.get(method)
            game_ref = reference.lookup(game)
            value = published.scores.get(game_ref.game) if published is not None and game_ref is not None else None
            row[f"published:{method}"] = np.nan if value is None else float(value)
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate_table(
    normalised: pd.DataFrame,
    variants: Sequence[str],
    reps: int = 50_000,
    seed: int = 0,
    confidence: float = 0.95,
    normalisation: str = "human",
) -> pd.DataFrame:
    """Mean, median, IQM and optimality gap (percent) per variant with stratified-bootstrap CIs."""
    rows = []
    for variant in variants:
        per_game = per_game_by_variant(normalised, variant)
        if not per_game:
            continue
        intervals = sc.interval_estimates(list(per_game.values()), reps=reps, confidence=confidence, seed=seed)
        runs = sum(len(v) for v in per_game.values())
        for metric in sc.METRICS:
            interval = intervals[metric].scaled(100.0)
            rows.append(
                {
                    "variant": variant,
                    "metric": metric,
                    "estimate": interval.estimate,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "games": len(per_game),
                    "runs": runs,
                    "normalisation": normalisation,
                    "reps": reps,
                }
            )
    return pd.DataFrame(rows)


def published_comparison(reference: sc.Reference, games: Sequence[str] | None = None) -> pd.DataFrame:
    """Published aggregates (percent) of each method next to the ones recomputed from its published per-game means,
    over all its games and over ``games`` (the sweep's Atari games) only."""
    rows = []
    subset = [reference.lookup(game).game for game in games or [] if reference.lookup(game) is not None]
    for method in sc.PUBLISHED_METHODS:
        entry = reference.published[method]
        everything = sc.published_aggregates(reference, method)
        same = sc.published_aggregates(reference, method, games=subset) if subset else None
        for metric in sc.METRICS:
            row = {
                "method": method,
                "metric": metric,
                "published": entry.aggregates.get(metric),
                "recomputed_from_game_means": everything[metric],
                "games": everything["games"],
            }
            if same is not None:
                row["recomputed_on_sweep_games"] = same[metric]
                row["sweep_games"] = same["games"]
            rows.append(row)
    return pd.DataFrame(rows)


def table1_check_table(reference: sc.Reference) -> pd.DataFrame:
    """The paper's per-game HIEROS scores through our metrics, with both reference tables, vs its Table 1."""
    check = sc.table1_check(reference)
    return pd.DataFrame(
        [{"row": name, **{k: values.get(k) for k in ("games", *sc.METRICS)}} for name, values in check.items()]
    )


def improvement_table(
    normalised: pd.DataFrame, variants: Sequence[str], baseline: str, reps: int = 50_000, seed: int = 0
) -> pd.DataFrame:
    """P(variant > baseline) over the games both hold, with CIs, for every other variant."""
    rows = []
    base = per_game_by_variant(normalised, baseline)
    for variant in variants:
        if variant == baseline:
            continue
        mine = per_game_by_variant(normalised, variant)
        shared = [game for game in mine if game in base]
        if not shared:
            continue
        interval = sc.probability_of_improvement(
            [mine[g] for g in shared], [base[g] for g in shared], reps=reps, seed=seed
        )
        rows.append(
            {
                "variant": variant,
                "baseline": baseline,
                "probability_of_improvement": interval.estimate,
                "ci_low": interval.low,
                "ci_high": interval.high,
                "games": len(shared),
            }
        )
    return pd.DataFrame(rows)


def problems_table(problems: Sequence[Problem]) -> pd.DataFrame:
    columns = ["kind", "variant", "game", "seed", "run", "detail"]
    return pd.DataFrame([asdict(problem) for problem in problems], columns=columns, dtype=object)


def variants_table(sweep: Sweep) -> pd.DataFrame:
    rows = []
    for variant in sweep.variants:
        records = sweep.select(variant)
        rows.append(
            {
                "variant": variant,
                "baseline": variant == sweep.baseline,
                "runs": len(records),
                "games": len({r.game for r in records if r.game is not None}),
                **{key: value for key, value in sweep.settings(variant).items()},
            }
        )
    return pd.DataFrame(rows)
