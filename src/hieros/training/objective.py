"""The number a run returns to Hydra's sweeper: ``training.objective`` names a metric of the run.

* ``final_eval/<mode>_score``: the final evaluation's mean return for policy ``mode`` (``scores.json``);
* ``train_return_last10pct``: the mean training return over the last 10% of steps (``scores.json``);
* any other name: the last value of that metric in ``metrics.jsonl`` (``eval/greedy_score``: the latest evaluation,
  ``train/level0/model_loss``, ``episode/score``, ...).

A metric the run never wrote raises :class:`ObjectiveError`; one written as null (a non-finite value, e.g. a
diverged loss) gives NaN, which Optuna records as a failed trial while the study goes on.
Torch-free: :mod:`hieros.config` uses :func:`objective_problem` to check the name before a search starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

NAME = re.compile(r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*$")
EVAL_SCORE = re.compile(r"^(?P<kind>final_eval|eval)/(?P<mode>[A-Za-z0-9_]+)_score$")
SCORES_KEYS = ("train_return_last10pct",)
POLICY_MODES: tuple[str, ...] = ("sampled", "greedy")
"""The policies an evaluation can run (``training.eval_modes``, ``hieros-eval mode=``, the report's ``--mode``)."""
ALLOWED = (
    "final_eval/<mode>_score (mode in training.eval_modes), train_return_last10pct, or a metric of metrics.jsonl "
    "(e.g. eval/greedy_score, train/level0/model_loss)"
)


class ObjectiveError(ValueError):
    """``training.objective`` names no metric this run has; the message is one line."""


def is_objective_name(value: Any) -> bool:
    """A metric name; an evaluation score must name a policy hieros evaluates (``final_eval/best_score`` is a typo)."""
    if not isinstance(value, str) or NAME.match(value) is None:
        return False
    match = EVAL_SCORE.match(value)
    return match is None or match["mode"] in POLICY_MODES


def objective_problem(cfg: DictConfig) -> str | None:
    """Why ``training.objective`` cannot have a value at the end of this run (known from the config alone), or None.

    Evaluation scores exist only for the policies in ``training.eval_modes``, and the final ones only with
    ``training.final_eval_episodes >= 1`` (``eval/...`` also with periodic evaluations)."""
    training = cfg.training
    name = training.objective
    match = EVAL_SCORE.match(name)
    if match is None:
        return None
    modes = list(training.eval_modes)
    if match["mode"] not in modes:
        return (
            f"training.objective={name!r} is invalid with training.eval_modes={modes}: that policy is not evaluated; "
            f"allowed is a mode of training.eval_modes"
        )
    evaluated = training.final_eval_episodes >= 1 or (match["kind"] == "eval" and training.eval_every > 0)
    if not evaluated:
        return (
            f"training.objective={name!r} is invalid with training.final_eval_episodes=0: that score is never "
            f"measured; allowed is training.final_eval_episodes>=1"
        )
    return None


def objective_value(name: str, scores: Mapping[str, Any], metrics_path: Path) -> float:
    """The value of the metric ``name`` for a run that ended with ``scores`` (scores.json) and ``metrics_path``."""
    match = EVAL_SCORE.match(name)
    if match is not None and match["kind"] == "final_eval" and match["mode"] in scores.get("final_eval", {}):
        return _number(scores["final_eval"][match["mode"]].get("mean"))
    if name in SCORES_KEYS and name in scores:
        return _number(scores[name])
    found, value = _last_metric(metrics_path, name)
    if not found:
        raise ObjectiveError(
            f"training.objective={name!r}: this run has no such metric (not in scores.json nor in {metrics_path}); "
            f"allowed is {ALLOWED}"
        )
    return _number(value)


def _last_metric(path: Path, name: str) -> tuple[bool, Any]:
    found, value = False, None
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False, None
    for line in lines:
        record = json.loads(line)
        if name in record:
            found, value = True, record[name]
    return found, value


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
