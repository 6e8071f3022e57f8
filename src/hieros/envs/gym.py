"""Any gymnasium environment with a Box observation and a Discrete action space, as ``{"vector": float32}``."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from hieros.envs.seeding import SeededEnv
from hieros.registry import register


@register("env", "gym")
class GymVector(SeededEnv):
    """A gymnasium id (e.g. ``CartPole-v1``) with a Box observation, flattened to ``{"vector": float32 (D,)}``.

    The action space must be ``Discrete`` (the agent is discrete-only); ``Discrete(n, start=s)`` is exposed as
    ``Discrete(n)`` and shifted back by ``s``. ``max_steps`` replaces the id's registered time limit (None keeps it);
    hitting it is ``truncated``. The first ``reset()`` without a seed uses the constructor's ``seed``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, id: str, seed: int, max_steps: int | None = None) -> None:
        if max_steps is not None and int(max_steps) < 1:
            raise ValueError(f"gym env {id!r}: max_steps must be a positive step count or None, got {max_steps}")
        kwargs = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
        try:
            self._env = gymnasium.make(id, **kwargs)
        except gymnasium.error.Error as error:
            raise ValueError(
                f"gymnasium cannot make {id!r}: {error}. Use a registered id such as 'CartPole-v1'; ids of plugin "
                f"packages need that package installed (and for ALE games use the 'atari100k' env instead)"
            ) from error
        action_space, observation_space = self._env.action_space, self._env.observation_space
        if not isinstance(action_space, gymnasium.spaces.Discrete):
            self._env.close()
            raise ValueError(
                f"gym env {id!r} has the action space {action_space}, but the hieros agent only supports "
                f"Discrete actions; pick an id with a Discrete action space (e.g. 'CartPole-v1', 'Acrobot-v1', "
                f"'MountainCar-v0') or discretise the actions with a gymnasium wrapper in your own env plugin"
            )
        if not isinstance(observation_space, gymnasium.spaces.Box):
            self._env.close()
            raise ValueError(
                f"gym env {id!r} has the observation space {observation_space}, but the 'gym' env needs a Box "
                f"observation (it is flattened to a float32 vector); wrap the env with "
                f"gymnasium.wrappers.FlattenObservation in your own env plugin"
            )
        self.id = id
        super().__init__(seed)
        self._action_start = int(action_space.start)
        self.action_space = gymnasium.spaces.Discrete(int(action_space.n), seed=self._seed)
        low = np.asarray(observation_space.low, np.float32).reshape(-1)
        high = np.asarray(observation_space.high, np.float32).reshape(-1)
        self.observation_space = gymnasium.spaces.Dict({"vector": gymnasium.spaces.Box(low, high, dtype=np.float32)})

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        seed = self.begin_reset(seed)
        observation, info = self._env.reset(seed=seed, options=options)
        return self._observation(observation), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        index = int(action)
        if not 0 <= index < self.action_space.n:
            raise ValueError(f"gym env {self.id!r}: action {action!r} is outside 0..{self.action_space.n - 1}")
        observation, reward, terminated, truncated, info = self._env.step(index + self._action_start)
        return self._observation(observation), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._env.close()
        super().close()

    @staticmethod
    def _observation(observation: Any) -> dict[str, np.ndarray]:
        return {"vector": np.asarray(observation, np.float32).reshape(-1)}
