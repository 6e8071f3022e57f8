"""A bandit chain: a tiny synthetic debugging task whose imagined reward depends on the action alone.

An episode is ``length`` agent steps. Every step pays reward 1 for ``rewarded_action`` and 0 for any other action.
The observation ``{"vector": float32 (1 + actions,)}`` is ``[t / length, one-hot of the previous action]`` (the
one-hot is zero after a reset; with ``observe_action=False`` the vector is ``[t / length]`` only). The reward of a
step arrives with the next observation, so a world model sees it next to the action that earned it, but in
imagination the only way from the action the actor chooses to the reward the model predicts is the world model's
action input (nothing in the imagined state says which action comes next).

Returns: the best policy scores ``length``, a uniformly random one ``length / actions``. The episode ends after
``length`` steps as a time-limit truncation (``terminal=False``, the default: the continue flag stays 1, so the
agent values the task as endless, V = rate / (1 - discount) for a policy that earns reward 1 at that rate) or as a
termination (``terminal=True``: continue 0 at the last step; V at step t = the discounted sum of the ``length - t``
rewards still to come).

Uses: a learning check that runs in well under a minute on a CPU (``tests/test_learning_regression.py`` trains the
real agent on it through the training loop), and a first look at whether a change to the world model, the
actor-critic or the loop still learns the simplest task there is: ``python -m hieros env=chain model=tiny
hierarchy.layers=1 logger=none fabric=cpu`` (that test's overrides learn it in ~170 updates).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from hieros.envs.seeding import SeededEnv
from hieros.registry import register


@register("env", "chain")
class BanditChain(SeededEnv):
    """Debugging task: ``length`` steps, reward 1 for ``rewarded_action`` (else 0), observation [t/length, a_{t-1}].

    ``Discrete(actions)`` actions. The episode ends after ``length`` steps: truncated, or terminated with
    ``terminal=True``. Deterministic: ``seed`` only seeds the action space; ``reset(seed=...)`` is accepted as usual.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        seed: int,
        length: int = 20,
        actions: int = 2,
        rewarded_action: int = 1,
        terminal: bool = False,
        observe_action: bool = True,
    ) -> None:
        self.validate_config({"length": length, "actions": actions, "rewarded_action": rewarded_action})
        self.length = int(length)
        self.rewarded_action = int(rewarded_action)
        self.terminal = bool(terminal)
        self.observe_action = bool(observe_action)
        super().__init__(seed)
        self._t, self._last, self._done = 0, -1, True
        self.action_space = gymnasium.spaces.Discrete(int(actions), seed=self._seed)
        size = 1 + (int(actions) if self.observe_action else 0)
        self.observation_space = gymnasium.spaces.Dict(
            {"vector": gymnasium.spaces.Box(0.0, 1.0, (size,), dtype=np.float32)}
        )

    @staticmethod
    def validate_config(node: dict[str, Any]) -> None:
        """Checks of the config node (run by ``python -m hieros`` after composition; one line naming the key)."""
        length, actions = node.get("length", 20), node.get("actions", 2)
        rewarded = node.get("rewarded_action", 1)
        if not _is_int(length) or length < 1:
            raise ValueError(f"env.length={length!r} is invalid: allowed is an integer >= 1")
        if not _is_int(actions) or actions < 2:
            raise ValueError(f"env.actions={actions!r} is invalid: allowed is an integer >= 2")
        if not _is_int(rewarded) or not 0 <= rewarded < actions:
            raise ValueError(f"env.rewarded_action={rewarded!r} is invalid: allowed is an integer in 0..{actions - 1}")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.begin_reset(seed)
        self._t, self._last, self._done = 0, -1, False
        return self._observation(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("chain env: step() after the episode ended; call reset() first")
        index = int(action)
        if not 0 <= index < self.action_space.n:
            raise ValueError(f"chain env: action {action!r} is outside 0..{self.action_space.n - 1}")
        self._t, self._last = self._t + 1, index
        self._done = self._t >= self.length
        reward = 1.0 if index == self.rewarded_action else 0.0
        return self._observation(), reward, self._done and self.terminal, self._done and not self.terminal, {}

    def _observation(self) -> dict[str, np.ndarray]:
        vector = np.zeros(self.observation_space["vector"].shape, np.float32)
        vector[0] = self._t / self.length
        if self.observe_action and self._last >= 0:
            vector[1 + self._last] = 1.0
        return {"vector": vector}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
