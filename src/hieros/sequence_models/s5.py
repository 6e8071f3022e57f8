"""S5WM sequence model (paper section 2.2, spec sections 3.1-3.5): a stack of double S5 blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hieros.nets.distributions import symlog
from hieros.nets.init import init_weights_
from hieros.nets.s5 import S5Block
from hieros.registry import register
from hieros.sequence_models.base import LatentDynamics


@register("sequence_model", "s5")
class S5Dynamics(LatentDynamics):
    """S5WM: posterior from the observation only, prior from the stack output m_t, h_t from the S5 states.

    ``h_source='state'`` (paper): h_t = symlog(Linear(Re[x^1_t, ..., x^{2L}_t])), the real part of the concatenated
    complex states of all 2L S5 layers (L·2P values). ``h_source='output'`` (ablation G.2): h_t = symlog(m_t).
    The prior always reads the pre-symlog m_t = Linear(y_t).
    """

    def __init__(
        self,
        *,
        num_blocks: int = 4,
        d_model: int = 256,
        state_size: int = 128,
        init_blocks: int = 4,
        dropout: float = 0.0,
        h_source: str = "state",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        **common,
    ) -> None:
        if h_source not in ("state", "output"):
            raise ValueError(f"h_source={h_source!r} is invalid: allowed is 'state' or 'output'")
        super().__init__(core_input_dim=d_model, **common)
        self.h_source = h_source
        self.num_blocks, self.block_state = num_blocks, 2 * state_size
        self.blocks = nn.ModuleList(
            S5Block(d_model, state_size, init_blocks, dropout, dt_min, dt_max) for _ in range(num_blocks)
        )
        # The original applies the DreamerV3 init to every Linear of the dynamics, the blocks' W1, W2 included;
        # the S5 cores' own parameters (Λ, B̃, C̃, D, log Δ) are not Linear layers and keep their HiPPO-N init.
        init_weights_(self.blocks)
        self.output_projection = nn.Linear(d_model, self.deter_dim)
        init_weights_(self.output_projection)
        if h_source == "state":
            self.state_projection = nn.Linear(num_blocks * self.block_state, self.deter_dim)
            init_weights_(self.state_projection)

    def initial_carry(self, batch_size: int, device: torch.device) -> Tensor:
        return torch.zeros(batch_size, self.num_blocks, self.block_state, dtype=torch.complex64, device=device)

    def _deter(self, m: Tensor, states: Tensor) -> Tensor:
        if self.h_source == "output":
            return symlog(m)
        return symlog(self.state_projection(states.real.flatten(-2)))

    def core_sequence(self, inputs: Tensor, reset: Tensor, carry: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, states = inputs, []
        for index, block in enumerate(self.blocks):
            # carry (B, L, 2P): the states before the window (zero in training, where is_first[:, 0] is set)
            x, block_states = block(x, reset, initial_state=carry[:, index])  # (B, T, H), (B, T, 2P) complex
            states.append(block_states)
        carry_seq = torch.stack(states, 2)  # (B, T, L, 2P)
        m = self.output_projection(x)
        return m, self._deter(m, carry_seq), carry_seq

    def rollout_context(self) -> list:
        """Each block's (Λ̄, B̄) pair, discretised once for a whole rollout instead of at every step."""
        return [block.discretize() for block in self.blocks]

    def core_step(self, inputs: Tensor, carry: Tensor, context: list | None = None) -> tuple[Tensor, Tensor, Tensor]:
        x, states = inputs, []
        for index, block in enumerate(self.blocks):
            discretized = context[index] if context is not None else None
            x, block_state = block.step(x, carry[:, index], discretized=discretized)
            states.append(block_state)
        carry = torch.stack(states, 1)  # (B, L, 2P)
        m = self.output_projection(x)
        return m, self._deter(m, carry), carry
