"""Evaluation of a training run: the periodic evaluations, the final one and ``scores.json`` (spec section 1.4).

Every evaluation plays whole episodes in fresh environments (seeded ``seed + EVAL_ENV_SEED_OFFSET``, see
:mod:`hieros.envs.seeding`) with a fresh acting state, so it shares nothing with training; its mean return per policy
mode goes to ``metrics.jsonl`` as ``eval/<mode>_score`` (the final one also as ``final_eval/<mode>_score``).
:func:`run_episodes` is the episode runner ``hieros-eval`` uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hieros.agent.hierarchy import Hierarchy
from hieros.envs.seeding import EVAL_ENV_SEED_OFFSET, RESTART_SEED_STRIDE
from hieros.envs.vector import VectorEnv, make_vector_env
from hieros.files import write_json_atomic
from hieros.training.metrics_file import MetricsFile

if TYPE_CHECKING:
    from hieros.training.loop import Run

TRAIN_TAIL_START = 0.9  # scores.json's training return averages the episodes after 90% of the steps (the last 10%)


def periodic_evaluation(run: Run, metrics_file: MetricsFile, info: Callable[[str], None]) -> None:
    """An evaluation during training (every ``training.eval_every`` steps): ``training.eval_episodes`` per mode."""
    training = run.cfg.training
    scores = {mode: evaluate(run, training.eval_episodes, mode) for mode in training.eval_modes}
    metrics_file.write(run.step, {f"eval/{mode}_score": float(np.mean(r)) for mode, r in scores.items() if r})
    report_capped(run, info)


def final_evaluation(run: Run, metrics_file: MetricsFile, info: Callable[[str], None]) -> dict[str, list[float]]:
    """The evaluation after training: ``training.final_eval_episodes`` per mode; returns the returns per mode."""
    training = run.cfg.training
    evaluation = {mode: evaluate(run, training.final_eval_episodes, mode) for mode in training.eval_modes}
    report_capped(run, info)
    means = {mode: float(np.mean(returns)) for mode, returns in evaluation.items() if returns}
    metrics_file.write(
        run.step, {f"{kind}/{mode}_score": mean for mode, mean in means.items() for kind in ("eval", "final_eval")}
    )
    return evaluation


def evaluate(run: Run, episodes: int, mode: str) -> list[float]:
    """Run ``episodes`` episodes in fresh environments with a fresh acting state (shares nothing with training).

    With ``training.eval_max_steps`` an episode stops after that many agent steps and scores its partial return;
    ``run.eval_capped[mode]`` counts such episodes of the latest evaluation."""
    run.eval_capped[mode] = 0
    if episodes <= 0:
        return []
    training = run.cfg.training
    num = max(1, min(training.eval_num_envs, episodes))
    envs = make_vector_env(run.registry, run.cfg.env, num, seed=run.cfg.seed + EVAL_ENV_SEED_OFFSET)
    capped: list[bool] = []
    try:
        return run_episodes(
            run.agent,
            envs,
            episodes,
            mode,
            run.cfg.seed + EVAL_ENV_SEED_OFFSET,
            run.device,
            max_steps=training.get("eval_max_steps"),
            capped=capped,
        )
    finally:
        run.eval_capped[mode] = sum(capped)
        envs.close()


def run_episodes(
    agent: Hierarchy,
    envs: VectorEnv,
    episodes: int,
    mode: str,
    seed: int,
    device,
    on_step: Callable[[Mapping[str, np.ndarray]], None] | None = None,
    max_steps: int | None = None,
    capped: list[bool] | None = None,
) -> list[float]:
    """Returns of the first ``episodes`` episodes to end; ``on_step`` sees every transition dict (e.g. to record
    frames). ``max_steps`` (None = no cap) stops an episode after that many agent steps: it scores its partial
    return, its env idles until every env is capped or done, then all restart (new seeds); ``capped`` receives one
    flag per returned episode (True = stopped by the cap)."""
    acting = agent.initial_acting_state(envs.num_envs, device)
    obs = envs.reset(seed=seed)
    returns: list[float] = []
    flags: list[bool] = []
    partial = np.zeros(envs.num_envs)  # return and agent steps of each env's running episode (for the cap)
    steps = np.zeros(envs.num_envs, np.int64)
    idle = np.zeros(envs.num_envs, bool)  # capped envs wait here for the others
    restarts = 0
    while len(returns) < episodes:
        if on_step is not None:
            on_step(obs)
        actions, _, acting = agent.act(obs, acting, mode)
        obs = envs.step(actions)
        partial = np.where(obs["is_first"], 0.0, partial + obs["reward"])
        steps = np.where(obs["is_first"], 0, steps + 1)
        for env in np.flatnonzero(obs["is_last"] & ~idle):
            if len(returns) < episodes:
                returns.append(float(obs["episode_return"][env]))
                flags.append(False)
        if max_steps is None:
            continue
        for env in np.flatnonzero((steps >= max_steps) & ~obs["is_last"] & ~idle):
            if len(returns) < episodes:
                returns.append(float(partial[env]))
                flags.append(True)
            idle[env] = True
        if idle.all() and len(returns) < episodes:
            restarts += 1
            obs = envs.reset(seed=seed + RESTART_SEED_STRIDE * restarts)
            partial[:], steps[:], idle[:] = 0.0, 0, False
    if on_step is not None:
        on_step(obs)
    if capped is not None:
        capped[:] = flags
    return returns


def final_scores(run: Run, evaluation: Mapping[str, list[float]]) -> dict[str, Any]:
    """scores.json (spec section 1.4): final evaluation per policy mode, and the mean training return over the
    last 10% of steps."""
    steps = run.cfg.training.steps
    tail = [episode["return"] for episode in run.episodes if episode["step"] > TRAIN_TAIL_START * steps]
    cap = run.cfg.training.get("eval_max_steps")
    final_eval: dict[str, Any] = {
        mode: {"mean": float(np.mean(r)) if r else None, "episodes": r} for mode, r in evaluation.items()
    }
    capped: dict[str, Any] = {}
    if cap is not None:  # a capped episode scores its partial return: say so next to the numbers
        for mode, entry in final_eval.items():
            entry["capped_episodes"] = run.eval_capped.get(mode, 0)
        capped = {
            "eval_max_steps": cap,
            "eval_note": f"evaluation episodes stopped after eval_max_steps={cap} agent steps (capped_episodes) "
            f"score their partial return",
        }
    return {
        "final_eval": final_eval,
        **capped,
        "train_return_last10pct": float(np.mean(tail)) if tail else None,
        "train_episodes_last10pct": len(tail),
        "agent_steps": run.step,
        "env_frames": run.step * int(run.cfg.env.get("action_repeat", 1)),
        "updates": run.updates,
        "train_episodes": len(run.episodes),
    }


def report_capped(run: Run, info: Callable[[str], None]) -> None:
    """One console line when training.eval_max_steps stopped evaluation episodes (their score is partial)."""
    capped = {mode: n for mode, n in run.eval_capped.items() if n}
    if capped:
        counts = ", ".join(f"{n} {mode}" for mode, n in capped.items())
        info(
            f"evaluation at step {run.step}: {counts} episode(s) stopped at training.eval_max_steps="
            f"{run.cfg.training.eval_max_steps} agent steps; their score is the partial return"
        )


def write_scores(run: Run, evaluation: Mapping[str, list[float]], path: Path) -> dict[str, Any]:
    """Write :func:`final_scores` to ``path`` (atomically); returns them."""
    scores = final_scores(run, evaluation)
    write_json_atomic(path, scores)
    return scores
