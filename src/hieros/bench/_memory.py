"""Peak memory of one measured step: resident memory on the CPU (each case in a fresh process, Linux), the CUDA
caching allocator's statistics on a GPU.

On CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` is the exact peak of the tensors the
step allocated (the process's earlier peaks do not count), so no fresh process is needed; ``reserved_peak_mib`` adds
what the caching allocator held besides (fragmentation, cached blocks), i.e. what ``nvidia-smi`` would show of it.

On the CPU, torch has no allocator statistics, so memory is the process's resident set size.
``getrusage().ru_maxrss`` cannot serve: Linux carries the parent's high-water mark across fork + exec, so a child
started by a benchmark process that already holds 4 GiB reports at least 4 GiB whatever it does. ``VmHWM`` in ``/proc/self/status``
belongs to the child's own address space (new at exec), and writing ``5`` to ``/proc/self/clear_refs`` resets it
to the current resident size, so the peak of the measured step alone can be read.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mib(field: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"{field} is missing from {_STATUS}: peak-memory figures need Linux's /proc")


def resident_mib() -> float:
    """Current resident set size (VmRSS) in MiB."""
    return _status_mib("VmRSS")


def peak_resident_mib() -> float:
    """High-water mark of the resident set (VmHWM) in MiB, since exec or the last :func:`reset_peak`."""
    return _status_mib("VmHWM")


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def measure_step(step: Callable[[], object], device: torch.device | str | None = None) -> dict[str, Any]:
    """Memory before ``step`` (model, inputs and everything built so far) and at its peak.

    ``peak_mib`` is the highest size while ``step`` ran, the baseline included; ``growth_mib`` what the step added
    on top (activations, gradients, optimizer state on a first update). ``measure`` says what was measured:
    ``resident`` (the process's resident set; ``peak_reset`` False means the kernel refused the reset, so
    ``peak_mib`` may include an earlier, higher peak of the set-up) or ``cuda_allocated`` (``device`` is a GPU:
    tensors allocated on it, :func:`measure_cuda_step`).
    """
    if device is not None and torch.device(device).type == "cuda":
        return measure_cuda_step(step, torch.device(device))
    baseline = resident_mib()
    was_reset = reset_peak()
    step()
    peak = peak_resident_mib()
    return {
        "baseline_mib": round(baseline, 1),
        "peak_mib": round(peak, 1),
        "growth_mib": round(peak - baseline, 1),
        "peak_reset": was_reset,
        "measure": "resident",
    }


def measure_cuda_step(step: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """GPU memory of ``step``: allocated before it (``baseline_mib``), its allocated peak (``peak_mib``) and the
    caching allocator's reserved peak (``reserved_peak_mib``), all in MiB."""
    gc.collect()  # tensors of earlier cases that only a reference cycle still holds
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device) / 2**20
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    return {
        "baseline_mib": round(baseline, 1),
        "peak_mib": round(peak, 1),
        "growth_mib": round(peak - baseline, 1),
        "reserved_peak_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
        "peak_reset": True,
        "measure": "cuda_allocated",
    }


def in_fresh_process(module: str, function: str, *args: str) -> dict[str, Any]:
    """Run ``module.function(*args)`` (it returns a JSON-able dict) in a new Python process; its dict, or
    ``{"error": last line of its stderr}``."""
    code = (
        "import importlib, json, sys; "
        "print(json.dumps(getattr(importlib.import_module(sys.argv[1]), sys.argv[2])(*sys.argv[3:])))"
    )
    command = [sys.executable, "-c", code, module, function, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])
