"""Modules whose own tensors stay float32 when the model around them is converted to another floating dtype."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class Float32Module(nn.Module):
    """A module whose own parameters and buffers keep float32 (complex64) under ``module.to(dtype)``, ``.half()``,
    ``.bfloat16()`` or ``.double()`` of a model that contains it (Fabric's ``bf16-true`` converts the whole agent with
    ``module.to(torch.bfloat16)``); device moves still apply. Its forward must cast its inputs itself.

    For numbers that bf16 cannot carry: the S5 scan (spec: float32/complex64 under any precision; bf16 has no complex
    type) and running statistics updated by small EMA steps (a 1% step is below bf16's resolution of 2^-8).
    """

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        own = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        if not own:
            return super()._apply(fn, recurse)
        target = fn(torch.zeros((), device=own[0].device))  # where (device) and as what (dtype) fn puts a float32
        if target.dtype == torch.float32:
            return super()._apply(fn, recurse)
        device = target.device

        def move_only(tensor: Tensor) -> Tensor:
            return tensor.to(device) if tensor.is_floating_point() or tensor.is_complex() else fn(tensor)

        if recurse:
            for child in self.children():
                child._apply(fn)
        return super()._apply(move_only, recurse=False)
