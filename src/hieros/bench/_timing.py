"""Wall-clock and CPU timing of a callable, shared by the benchmarks.

On CUDA, kernels run asynchronously: a timer read right after a call measures the launches, not the work. Each
timed region is therefore fenced by :func:`synchronize` (``torch.cuda.synchronize``), before it starts and after it
ends; on the CPU that is a no-op.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until every kernel queued on ``device`` has finished (CUDA); nothing on the CPU or for None."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], iterations: int, warmup: int, device: torch.device | str | None = None
) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iterations`` times: median wall (``s``) and CPU (``cpu_s``)
    seconds, and the fastest and slowest wall time. ``device``: the device ``fn`` computes on (each timed run then
    includes waiting for its kernels)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iterations):
        synchronize(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return {"s": statistics.median(wall), "cpu_s": statistics.median(cpu), "min_s": min(wall), "max_s": max(wall)}


def matmul_gflops(device: torch.device | str = "cpu", bf16: bool = False) -> float:
    """This device's dense-GEMM rate (best of 10): 1024² float32 products on the CPU, 8192² on CUDA (bfloat16 when
    ``bf16``); what the benchmarks' ``gemm_bound_s`` (FLOPs / rate, a lower bound of a step's time) divide by."""
    cuda = torch.device(device).type == "cuda"
    size = 8192 if cuda else 1024
    dtype = torch.bfloat16 if cuda and bf16 else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return 2 * size**3 / timed(lambda: a @ b, iterations=10, warmup=2, device=device)["min_s"] / 1e9
