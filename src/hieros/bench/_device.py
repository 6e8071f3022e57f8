"""Where and how the benchmarks run: device, precision and compilation (``python -m hieros.bench --device ...``).

A benchmark whose ``run`` accepts an ``options`` argument receives a :class:`BenchOptions`; it builds its modules,
batches and acting states on ``options.device``, runs its forward passes under ``options.autocast()`` and, where it
compiles, uses ``options.compile_backend``. Benchmarks without that argument (environment, replay, sampler) run on
the CPU as before.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("32-true", "bf16-mixed")


class DeviceError(ValueError):
    """A device that cannot be used here (``--device cuda`` without CUDA); the message is one line for the user."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one raises :class:`DeviceError`."""
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if cuda else "cpu"
    if name == "cuda" and not cuda:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA device here")
    return name


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class BenchOptions:
    """``device``: ``cpu`` or ``cuda`` (already resolved); ``precision``: Lightning Fabric's ``32-true`` or
    ``bf16-mixed`` (bf16 autocast of the networks; the S5 scan stays float32/complex64); ``compile``: compile the
    update computations with ``compile_backend`` (what ``training.compile`` does)."""

    device: str = "cpu"
    precision: str = "32-true"
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise DeviceError(f"BenchOptions.device must be resolved to cpu or cuda, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise DeviceError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16-mixed"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device for ``bf16-mixed``, nothing for ``32-true`` (as Fabric's ``autocast``)."""
        if self.bf16:
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fabric(self):
        """A Lightning Fabric of this device and precision, as ``hieros.training.loop.make_fabric`` builds it."""
        from lightning.fabric import Fabric

        return Fabric(accelerator=self.device, devices=1, precision=self.precision)

    def describe(self) -> dict[str, Any]:
        """The JSON record of where the figures were measured."""
        return {
            "device": self.device,
            "device_name": torch.cuda.get_device_name(self.torch_device) if self.cuda else _cpu_name(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "precision": self.precision,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "compile": self.compile_backend if self.compile else False,
        }


CPU = BenchOptions()
