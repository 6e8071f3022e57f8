"""What acting carries from one environment step to the next (:meth:`hieros.agent.hierarchy.Hierarchy.act`).

``Hierarchy.act(obs, state, mode)`` takes an :class:`ActingState` and returns the next one; the state passed in is
left as it was. Every tensor is per environment (first dimension N).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from hieros.sequence_models.base import State


@dataclass
class LevelActingState:
    """One level's part of the acting state.

    ``latent``: the latent state the level last observed into ({deter (N, D), stoch (N, latents, classes), ...}).
    ``prev_action``: its last output (N, latents * classes), one-hot (level 0: the environment action).
    ``reward_sum``: environment reward summed since it last observed (N,).
    ``goal_code``: the subgoal (N, latents, classes) held from the level above; None at the top.
    ``history``: ``acting_context: window`` only: the last T (``embed`` (N, T, E), ``action`` (N, T, A), ``first``
    (N, T)) the level observed, re-observed at every act.
    ``window``: levels >= 1 with their own world model: the lower level's latents (N, slots, F) since this level
    last observed (its next observation).
    """

    latent: State
    prev_action: Tensor
    reward_sum: Tensor
    goal_code: Tensor | None = None
    history: dict[str, Tensor] | None = None
    window: Tensor | None = None

    def clone(self) -> LevelActingState:
        return LevelActingState(
            latent={key: value.clone() for key, value in self.latent.items()},
            prev_action=self.prev_action.clone(),
            reward_sum=self.reward_sum.clone(),
            goal_code=None if self.goal_code is None else self.goal_code.clone(),
            history=None if self.history is None else {key: value.clone() for key, value in self.history.items()},
            window=None if self.window is None else self.window.clone(),
        )

    def env(self, index: int) -> LevelActingState:
        """The state of environment ``index`` alone (N = 1), sharing memory with this one."""

        def pick(value: Tensor | None) -> Tensor | None:
            return None if value is None else value[index : index + 1]

        return LevelActingState(
            latent={key: value[index : index + 1] for key, value in self.latent.items()},
            prev_action=self.prev_action[index : index + 1],
            reward_sum=self.reward_sum[index : index + 1],
            goal_code=pick(self.goal_code),
            history=None if self.history is None else {k: v[index : index + 1] for k, v in self.history.items()},
            window=pick(self.window),
        )


@dataclass
class ActingState:
    """``episode_step`` (N,): agent steps since each environment's episode start; ``levels``: bottom-up."""

    episode_step: Tensor
    levels: list[LevelActingState] = field(default_factory=list)

    @property
    def num_envs(self) -> int:
        return int(self.episode_step.shape[0])

    @property
    def device(self) -> torch.device:
        return self.episode_step.device

    def clone(self) -> ActingState:
        return replace(self, episode_step=self.episode_step.clone(), levels=[level.clone() for level in self.levels])

    def env(self, index: int) -> ActingState:
        """Environment ``index`` alone (N = 1), sharing memory with this state."""
        step = self.episode_step[index : index + 1]
        return ActingState(step, [level.env(index) for level in self.levels])
