"""Benchmark: ``training.compile`` — a level-0 update in eager mode against the same update compiled (issue 14).

Setup (full run): CPU, ``torch.set_num_threads(2)``, ``model=tiny``, level 0 on 32×32×3 images with A = 6 (the size of
the CPU learning runs), batch 16 × 64, imagination from all 1024 posterior states, horizon 15, depth 1 and depth 3
(k = 4; level 0's update in the 3-level hierarchy also trains the subgoal critic and the autoencoder). For each: the
median wall and CPU time of ``Subactor.train_step`` eager and with :meth:`Subactor.compile_updates` (``inductor``),
the compile time (wall clock of the first two compiled updates, minus two eager ones), and ``speedup`` = eager /
compiled. Quick mode runs the same code with the ``aot_eager`` backend at the quick sizes (traces the forward and
backward graphs but generates no kernels): a check that compilation works, not a speed figure.

On CUDA (``--device cuda``) the full run is the agent benchmark's paper-size setup (``model=paper``, 64×64×3, A = 18,
batch 16 × 64, all 1024 starts, horizon 16), depth 3 only (level 0 of the 3-level hierarchy); every timed run is
fenced by ``torch.cuda.synchronize``. ``--precision bf16-mixed`` runs both under bf16 autocast; ``--compile BACKEND``
replaces the backend of the compiled case. ``config`` records device, precision and backend.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

from hieros.bench import agent as agent_bench
from hieros.bench._device import CPU, BenchOptions
from hieros.bench._timing import synchronize, timed

THREADS = 2

_FULL: dict[str, Any] = {
    "size": "tiny",
    "image": 32,
    "actions": 6,
    "k": 4,
    "batch": 16,
    "length": 64,
    "horizon": 15,
    "iterations": 10,
    "warmup": 2,
    "backend": "inductor",
    "depths": [1, 3],
}
_QUICK: dict[str, Any] = {**agent_bench._QUICK, "iterations": 2, "warmup": 2, "backend": "aot_eager", "depths": [1]}
_FULL_CUDA: dict[str, Any] = {
    **{key: value for key, value in agent_bench._FULL.items() if key not in ("loop", "policy_steps", "policy_warmup")},
    "iterations": 10,
    "warmup": 2,
    "backend": "inductor",
    "depths": [3],
}


def _update(setup: dict, layers: int, compiled: bool, options: BenchOptions = CPU) -> dict[str, Any]:
    device = options.torch_device
    torch._dynamo.reset()  # each case compiles from an empty cache (recompile limits count per code object)
    hierarchy = agent_bench._hierarchy("s5", {**setup, "layers": layers}, options)
    if compiled:
        hierarchy.compile_updates(setup["backend"])
    level = hierarchy.levels[0]
    batch = agent_bench._batch(hierarchy, 0, setup, device=device)
    optimizers, fabric = level.make_optimizers(), agent_bench._fabric(options)

    def step() -> None:
        level.train_step(batch, optimizers, fabric)

    synchronize(device)
    start = time.perf_counter()
    for _ in range(setup["warmup"]):
        step()
    synchronize(device)
    first_updates_s = time.perf_counter() - start
    timing = timed(step, setup["iterations"], warmup=0, device=device)
    timing["first_updates_s"] = first_updates_s
    return timing


def run(quick: bool = False, options: BenchOptions | None = None) -> dict:
    """All figures as a JSON-able dict. ``options``: device and precision of both cases, and (``compile``) the
    backend of the compiled one (default: the CPU, float32, the setup's backend)."""
    options = options or CPU
    setup = _QUICK if quick else _FULL_CUDA if options.cuda else _FULL
    if options.compile:
        setup = {**setup, "backend": options.compile_backend}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        config = {**setup, "threads": THREADS, **options.describe(), "compile": setup["backend"]}
        results: dict[str, Any] = {"config": config, "torch": torch.__version__}
        for layers in setup["depths"]:
            eager = _update(setup, layers, compiled=False, options=options)
            compiled = _update(setup, layers, compiled=True, options=options)
            results[f"depth{layers}"] = {
                "eager": eager,
                "compiled": compiled,
                "compile_s": compiled["first_updates_s"] - eager["first_updates_s"],
                "speedup": eager["s"] / compiled["s"],
                "speedup_cpu": eager["cpu_s"] / compiled["cpu_s"],
            }
        return results
    finally:
        torch.set_num_threads(previous_threads)
        torch._dynamo.reset()


if __name__ == "__main__":  # pragma: no cover - manual use: python -m hieros.bench.compile [--quick]
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
