"""The vectorised driver used by the training loop: N envs stepped together, DreamerV3 episode flags.

Gymnasium's NEXT_STEP autoreset is used (passed explicitly): the step after an episode ends returns the reset
observation and ignores the action. That step is an agent step, as in DreamerV3's and HIEROS's driver: it is
marked ``is_first=True`` with reward 0 and ``is_last=False``. ``is_last = terminated or truncated`` and
``is_terminal = terminated`` (a time limit is not terminal).

Parallel mode runs each env in its own process (``gymnasium.vector.AsyncVectorEnv``) started with the ``spawn``
context: a forked child would inherit torch's thread pools and locks from the training process, which can deadlock;
spawned children start clean (they pay one interpreter start and the env imports, about a second each).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from hieros.mappings import plain_mapping

FLAG_KEYS: tuple[str, ...] = ("is_first", "is_last", "is_terminal")


class VectorEnv:
    """``num_envs`` environments stepped in lockstep; every call returns one batched transition dict.

    Each dict holds the observation key(s) with leading dim N, ``reward`` float32 (N,), ``is_first``, ``is_last``,
    ``is_terminal`` bool (N,), and ``episode_return`` / ``episode_length`` float32 (N,), which are NaN except on
    ``is_last`` steps. The length counts env transitions, i.e. agent steps of the episode without its reset step
    (DreamerV3's ``len(episode) - 1``); the return is the sum of their rewards.
    """

    def __init__(
        self,
        make_fns: Sequence[Callable[[], gymnasium.Env]],
        parallel: bool = False,
        context: str = "spawn",
    ) -> None:
        if len(make_fns) == 0:
            raise ValueError("VectorEnv needs at least one env constructor in make_fns")
        if parallel:
            self._envs: gymnasium.vector.VectorEnv = AsyncVectorEnv(
                list(make_fns), context=context, autoreset_mode=AutoresetMode.NEXT_STEP
            )
        else:
            self._envs = SyncVectorEnv(list(make_fns), autoreset_mode=AutoresetMode.NEXT_STEP)
        single_observation_space = self._envs.single_observation_space
        single_action_space = self._envs.single_action_space
        if not isinstance(single_observation_space, gymnasium.spaces.Dict):
            self._envs.close()
            raise TypeError(
                f"VectorEnv needs envs with a gymnasium.spaces.Dict observation space (key 'image' or 'vector'), "
                f"got {single_observation_space}; use a hieros env (atari100k, gym, minatar, chain) or follow their "
                f"convention"
            )
        if not isinstance(single_action_space, gymnasium.spaces.Discrete):
            self._envs.close()
            raise TypeError(f"VectorEnv needs Discrete actions (the agent is discrete-only), got {single_action_space}")
        self.num_envs: int = int(self._envs.num_envs)
        self.parallel = bool(parallel)
        self.observation_space: gymnasium.spaces.Dict = single_observation_space
        self.action_dim: int = int(single_action_space.n)
        self._needs_reset = np.zeros(self.num_envs, bool)
        self._returns = np.zeros(self.num_envs, np.float64)
        self._lengths = np.zeros(self.num_envs, np.int64)
        self._was_reset = False
        self._closed = False

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Reset every env, env i with ``seed + i``; all rows are ``is_first``."""
        observation, _ = self._envs.reset(seed=int(seed))
        self._was_reset = True
        self._needs_reset[:] = False
        is_first = np.ones(self.num_envs, bool)
        zeros = np.zeros(self.num_envs, bool)
        return self._transition(observation, np.zeros(self.num_envs, np.float32), is_first, zeros, zeros)

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Step every env with ``actions`` (N,) ints; an env whose episode ended last step resets instead."""
        if not self._was_reset:
            raise RuntimeError("VectorEnv.step() called before reset(seed)")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(
                f"VectorEnv.step expects integer action indices of shape ({self.num_envs},), got an array of shape "
                f"{actions.shape} and dtype {actions.dtype}; convert one-hot actions with argmax(-1)"
            )
        if np.any((actions < 0) | (actions >= self.action_dim)):
            raise ValueError(f"VectorEnv.step: actions must lie in [0, {self.action_dim}), got {actions.tolist()}")
        observation, reward, terminated, truncated, _ = self._envs.step(actions.astype(np.int64))
        is_first = self._needs_reset.copy()
        reward = np.where(is_first, 0.0, reward).astype(np.float32)
        is_terminal = np.asarray(terminated, bool) & ~is_first
        is_last = (is_terminal | np.asarray(truncated, bool)) & ~is_first
        self._needs_reset = is_last
        return self._transition(observation, reward, is_first, is_last, is_terminal)

    def close(self) -> None:
        if not self._closed:
            self._envs.close()
            self._closed = True

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _transition(
        self,
        observation: Mapping[str, np.ndarray],
        reward: np.ndarray,
        is_first: np.ndarray,
        is_last: np.ndarray,
        is_terminal: np.ndarray,
    ) -> dict[str, np.ndarray]:
        # Episode statistics: a reset step starts a new sum; every other step is one env transition.
        self._returns = np.where(is_first, 0.0, self._returns + reward)
        self._lengths = np.where(is_first, 0, self._lengths + 1)
        nan = np.float32(np.nan)
        return {
            **{key: np.asarray(value) for key, value in observation.items()},
            "reward": reward,
            "is_first": is_first,
            "is_last": is_last,
            "is_terminal": is_terminal,
            "episode_return": np.where(is_last, self._returns, nan).astype(np.float32),
            "episode_length": np.where(is_last, self._lengths, nan).astype(np.float32),
        }


def make_vector_env(
    registry: Any, env_cfg: Mapping[str, Any] | Any, num_envs: int, seed: int, parallel: bool = False
) -> VectorEnv:
    """Build ``num_envs`` envs from one config node (``name`` + arguments), env i with ``seed + i``."""
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    node = plain_mapping(env_cfg)
    if "name" not in node:
        raise ValueError(f"the env config has no 'name' key; set it to one of: {', '.join(registry.names('env'))}")
    # A registry holding only the chosen env: spawned workers then import only that env's module.
    chosen = type(registry)()
    chosen.add("env", node["name"], registry.get("env", node["name"]))
    make_fns = [functools.partial(chosen.build, "env", node, seed=int(seed) + i) for i in range(int(num_envs))]
    return VectorEnv(make_fns, parallel=parallel)
