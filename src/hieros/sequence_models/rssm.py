"""DreamerV3's RSSM (spec section 4): a GRU-LayerNorm cell with the posterior conditioned on h_t."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hieros.nets.init import init_weights_
from hieros.registry import register
from hieros.sequence_models.base import LatentDynamics


class GRULayerNormCell(nn.Module):
    """DreamerV3's GRU: one bias-free Linear on [x, h] -> LayerNorm -> (reset, candidate, update).

    r = sigmoid(reset), c = tanh(r * candidate), u = sigmoid(update - 1), h' = u * c + (1 - u) * h.
    """

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim + hidden, 3 * hidden, bias=False)
        self.norm = nn.LayerNorm(3 * hidden, eps=1e-3)
        init_weights_(self)

    def forward(self, inputs: Tensor, hidden: Tensor) -> Tensor:
        reset, candidate, update = self.norm(self.linear(torch.cat([inputs, hidden], -1))).chunk(3, -1)
        candidate = torch.tanh(torch.sigmoid(reset) * candidate)
        update = torch.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * hidden


@register("sequence_model", "rssm")
class RSSMDynamics(LatentDynamics):
    """RSSM: h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]); prior from h_t; posterior from [h_t, e_t] (sequential observe)."""

    posterior_uses_deter = True

    def __init__(self, **common) -> None:
        super().__init__(core_input_dim=common["hidden"], **common)
        self.cell = GRULayerNormCell(common["hidden"], self.deter_dim)

    def initial_deter(self) -> Tensor:
        return torch.tanh(self.initial_weight)  # DreamerV3: h_0 = tanh(W)

    def initial_carry(self, batch_size: int, device: torch.device) -> Tensor:
        return self.initial_deter().expand(batch_size, self.deter_dim)

    def core_step(self, inputs: Tensor, carry: Tensor, context: None = None) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.cell(inputs, carry)
        return hidden, hidden, hidden
