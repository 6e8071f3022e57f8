"""A multi-layer GRU in place of the S5 stack, keeping the S5WM's posterior-from-observation structure."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hieros.nets.init import init_weights_
from hieros.registry import register
from hieros.sequence_models.base import LatentDynamics


@register("sequence_model", "gru")
class GRUDynamics(LatentDynamics):
    """Stacked GRU cells; h_t = Linear of the concatenated hidden states, m_t = Linear of the top layer's output.

    Resets zero the hidden states before the step where ``is_first`` is set (masking), as the S5 resets do.
    A window is processed step by step: a GRU has no parallel form.
    """

    def __init__(self, *, num_layers: int = 4, units: int = 256, **common) -> None:
        super().__init__(core_input_dim=units, **common)
        self.num_layers, self.units = num_layers, units
        self.cells = nn.ModuleList(nn.GRUCell(units, units) for _ in range(num_layers))
        self.output_projection = nn.Linear(units, self.deter_dim)
        self.state_projection = nn.Linear(num_layers * units, self.deter_dim)
        init_weights_(self.output_projection)
        init_weights_(self.state_projection)

    def initial_carry(self, batch_size: int, device: torch.device) -> Tensor:
        return torch.zeros(batch_size, self.num_layers, self.units, device=device)

    def core_step(self, inputs: Tensor, carry: Tensor, context: None = None) -> tuple[Tensor, Tensor, Tensor]:
        x, hidden = inputs, []
        for index, cell in enumerate(self.cells):
            x = cell(x, carry[:, index])
            hidden.append(x)
        carry = torch.stack(hidden, 1)  # (B, L, units)
        return self.output_projection(x), self.state_projection(carry.flatten(1)), carry

    def core_sequence(self, inputs: Tensor, reset: Tensor, carry: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ms, hs, carries = [], [], []
        for t in range(inputs.shape[1]):
            carry = carry * (~reset[:, t]).to(carry.dtype).reshape(-1, 1, 1)
            m, h, carry = self.core_step(inputs[:, t], carry)
            ms.append(m)
            hs.append(h)
            carries.append(carry)
        return torch.stack(ms, 1), torch.stack(hs, 1), torch.stack(carries, 1)
