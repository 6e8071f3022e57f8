"""The lower actor receives the subgoal decoded into its own h-space, as Director does (ablation G.7)."""

from __future__ import annotations

from torch import Tensor

from hieros.registry import register


@register("goal_encoding", "decoded")
class DecodedGoal:
    """Goal input = f_psi(g): the lower level's autoencoder decoder applied to the code (D values)."""

    decodes = True

    def input_dim(self, latents: int, classes: int, deter: int) -> int:
        return deter

    def __call__(self, code: Tensor, decoded: Tensor | None) -> Tensor:
        if decoded is None:
            raise ValueError("the decoded goal encoding needs the decoded subgoal")
        return decoded

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
