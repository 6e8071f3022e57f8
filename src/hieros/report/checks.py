"""Completeness checks of a loaded sweep for the chosen score: crashed or unfinished jobs, runs without the score,
missing seeds and games per variant, unknown games and games without human reference scores. Each becomes a
:class:`~hieros.report.records.Problem` listed in the report."""

from __future__ import annotations

from typing import Any

from hieros.report.records import Problem, Sweep, select_score


def check_sweep(sweep: Sweep, score: str = "final_eval", mode: str = "sampled", reference: Any = None) -> list[Problem]:
    """Problems of the loaded sweep for the chosen score: crashed or unfinished jobs, runs without that score,
    missing seeds and games per variant, unknown games and games without human reference scores."""
    problems = list(sweep.problems)
    for record in sweep.records:
        where = dict(run=record.run, variant=record.variant, game=record.game, seed=record.seed)
        for message in record.problems:
            problems.append(Problem("unreadable data", message, **where))
        if record.status != "finished":
            last = record.curves.get("episode/score") or next(iter(record.curves.values()), None)
            reached = f"; metrics reach step {int(last.steps[-1])}" if last is not None and last.steps.size else ""
            steps = record.config.get("training.steps")
            budget = f" of {steps}" if reached and steps is not None else ""
            problems.append(Problem(record.status, f"job without final scores{reached}{budget}", **where))
        elif record.config and record.score(score, mode) is None:
            problems.append(Problem("no score", select_score(record.scores, score, mode)[1] or "", **where))
    configured = [record for record in sweep.records if record.config]
    seeds = {record.seed for record in configured if record.seed is not None}
    games = {record.game for record in configured if record.game is not None}
    for variant in sweep.variants:
        records = [record for record in configured if record.variant == variant]
        if not records:
            continue
        for game in sorted(games):
            present = {record.seed for record in records if record.game == game}
            if not present:
                problems.append(Problem("missing game", f"no run of game {game!r}", variant=variant, game=game))
                continue
            for seed in sorted(seeds - present):
                problems.append(
                    Problem(
                        "missing seed",
                        f"seed {seed} missing (present: {', '.join(str(s) for s in sorted(present, key=str))})",
                        variant=variant,
                        game=game,
                        seed=seed,
                    )
                )
    if reference is not None:
        for game in sorted(games):
            env = next(record.env for record in configured if record.game == game)
            if env == "atari100k" and reference.lookup(game) is None:
                problems.append(Problem("unknown game", f"{game!r} is not one of the 26 Atari100k games", game=game))
            elif reference.lookup(game) is None or env != "atari100k":
                problems.append(
                    Problem("no human score", f"no random/human reference for {game!r}: raw scores only", game=game)
                )
    return problems
