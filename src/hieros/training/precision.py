"""How ``fabric.precision`` becomes a Lightning Fabric precision plugin for the agent.

=============  =================================================================================================
32-true        float32 everywhere (Lightning's default plugin)
bf16-mixed     float32 weights and optimiser state, bf16 autocast around the networks (no loss scaler)
16-mixed       float32 weights, fp16 autocast and one ``torch.amp.GradScaler``; CUDA only: on a CPU Lightning
               silently runs bf16-mixed instead, so :func:`fabric_arguments` refuses it there
bf16-true      bf16 weights, gradients and AdamW state (:class:`TrueHalfPrecision`)
=============  =================================================================================================

Under every precision the S5 layers keep float32 parameters and scan in float32/complex64
(:class:`hieros.nets.float32.Float32Module`), and the output distributions compute in float32.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.fabric.plugins.precision import HalfPrecision
from torch import Tensor, nn

from hieros.config import ConfigError


def _cast_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # the parameters' dtype now, not at conversion: a float32 copy of the agent (mlflow_model) then takes float32
    dtype = next(module.parameters(recurse=False)).dtype
    return tuple(
        arg.to(dtype) if isinstance(arg, Tensor) and arg.is_floating_point() and arg.dtype != dtype else arg
        for arg in args
    )


class TrueHalfPrecision(HalfPrecision):
    """Lightning's ``bf16-true`` for a model that is used through many methods (acting, losses, imagination) rather
    than one ``forward``: Fabric converts the module's weights (``convert_module``) but casts inputs only for calls of
    the wrapper's ``forward``, so here every layer whose parameters are all bf16 casts its floating inputs to bf16
    (a forward pre-hook), where float32 islands (S5 layers, distributions, return statistics) handed it float32."""

    def convert_module(self, module: nn.Module) -> nn.Module:
        module = super().convert_module(module)
        dtype = self._desired_input_dtype
        for layer in module.modules():
            own = list(layer.parameters(recurse=False))
            if own and all(parameter.dtype == dtype for parameter in own):
                layer.register_forward_pre_hook(_cast_inputs)
        return module


def runs_on_cpu(accelerator: str) -> bool:
    """Whether Fabric's ``accelerator`` choice resolves to the CPU on this machine."""
    if accelerator == "cpu":
        return True
    return accelerator == "auto" and not CUDAAccelerator.is_available() and not MPSAccelerator.is_available()


def fabric_arguments(precision: str, accelerator: str) -> dict[str, Any]:
    """The ``precision``/``plugins`` arguments of :class:`~lightning.fabric.Fabric` for ``fabric.precision``.

    Raises :class:`ConfigError` for ``16-mixed`` on a CPU (config validation refuses ``accelerator=cpu``; this catches
    ``auto`` on a machine without a GPU)."""
    if precision == "16-mixed" and runs_on_cpu(accelerator):
        raise ConfigError(
            f"fabric.accelerator='{accelerator}' is invalid with fabric.precision='16-mixed' on this machine (no GPU): "
            "fp16 autocast with a loss scaler needs CUDA and Lightning would silently run bf16-mixed instead; "
            "allowed is a machine with a GPU, or a CPU precision: 32-true | bf16-mixed | bf16-true"
        )
    if precision == "bf16-true":
        return {"precision": None, "plugins": [TrueHalfPrecision("bf16-true")]}
    return {"precision": precision}
