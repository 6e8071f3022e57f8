"""Environment throughput: agent steps per second under uniformly random actions.

Measured: one ``atari100k`` Pong env, a :class:`~hieros.envs.vector.VectorEnv` of 2 Pong envs (in-process and one
process per env), and one MinAtar Breakout env. Episode resets happen inside the timed loop, as in training.
Vector figures count agent steps of all envs together (``env_steps_per_s``) and batched calls (``calls_per_s``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import hieros.envs.atari100k
import hieros.envs.minatar
from hieros.envs.vector import make_vector_env
from hieros.registry import Registry


def _single_env_rate(make: Callable[[], Any], steps: int, seed: int = 0) -> dict[str, float]:
    env = make()
    actions = np.random.default_rng(seed).integers(env.action_space.n, size=steps)
    env.reset(seed=seed)
    episodes = 0
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
            episodes += 1
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed, "episodes": episodes}


def _vector_env_rate(registry: Registry, node: dict[str, Any], num_envs: int, steps: int, parallel: bool) -> dict:
    start = time.perf_counter()
    vector = make_vector_env(registry, node, num_envs=num_envs, seed=0, parallel=parallel)
    startup = time.perf_counter() - start
    actions = np.random.default_rng(0).integers(vector.action_dim, size=(steps, num_envs))
    vector.reset(seed=0)
    start = time.perf_counter()
    for step_actions in actions:
        vector.step(step_actions)
    elapsed = time.perf_counter() - start
    vector.close()
    return {
        "num_envs": num_envs,
        "calls": steps,
        "seconds": elapsed,
        "startup_s": startup,
        "calls_per_s": steps / elapsed,
        "env_steps_per_s": steps * num_envs / elapsed,
    }


def run(quick: bool = False) -> dict:
    registry = Registry()
    registry.load_module(hieros.envs.atari100k)
    registry.load_module(hieros.envs.minatar)
    atari_steps, vector_steps, minatar_steps = (300, 150, 1000) if quick else (5000, 2500, 20000)
    pong = {"name": "atari100k", "game": "pong"}
    results: dict[str, Any] = {
        "quick": quick,
        "cpu_count": os.cpu_count(),
        "atari100k_pong_1env": _single_env_rate(lambda: registry.build("env", pong, seed=0), atari_steps),
        "atari100k_pong_vector2_sync": _vector_env_rate(registry, pong, 2, vector_steps, parallel=False),
        "atari100k_pong_vector2_async": _vector_env_rate(registry, pong, 2, vector_steps, parallel=True),
        "minatar_breakout_1env": _single_env_rate(
            lambda: registry.build("env", {"name": "minatar", "game": "breakout"}, seed=0), minatar_steps
        ),
    }
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
