"""Wall-clock and CPU timing of a callable, shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], iterations: int, warmup: int) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iterations`` times: median wall (``s``) and CPU (``cpu_s``)
    seconds, and the fastest and slowest wall time."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iterations):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return {"s": statistics.median(wall), "cpu_s": statistics.median(cpu), "min_s": min(wall), "max_s": max(wall)}
