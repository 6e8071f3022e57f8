"""The lower actor receives the compressed subgoal: the 8x8 one-hot code, flattened (paper default)."""

from __future__ import annotations

from torch import Tensor

from hieros.registry import register


@register("goal_encoding", "encoded")
class EncodedGoal:
    """Goal input = the one-hot subgoal code flattened to latents x classes (64 for 8x8)."""

    decodes = False

    def input_dim(self, latents: int, classes: int, deter: int) -> int:
        return latents * classes

    def __call__(self, code: Tensor, decoded: Tensor | None) -> Tensor:
        return code.flatten(-2)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
