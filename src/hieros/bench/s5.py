"""Benchmark: resettable S5 parallel scan vs a step-by-step loop, and the imagination-time recurrent step.

Setup (full run): the device of ``--device`` (CPU unless a GPU is there), ``torch.set_num_threads(2)``, the
paper's sequence model = 4 double blocks
(:class:`hieros.nets.s5.S5Block`, H 256, P 128, J 4, i.e. 8 S5 layers), batch 16, T ∈ {64, 1024}, resets with
probability 1/64 per step plus ``is_first[:, 0]``. On CUDA each timed run is fenced by ``torch.cuda.synchronize``;
``--precision bf16-mixed`` runs the blocks under bf16 autocast (their S5 layers compute in float32/complex64 anyway).

Run it as ``OMP_WAIT_POLICY=PASSIVE python -m hieros.bench.s5`` on a shared machine: with OpenMP's default spinning
wait policy a 2-thread pool on oversubscribed cores spends most of its time waiting (measured: one block step
0.83 s instead of 1.1 ms at load 8 on 2 cores). The result records the policy and the load average.

Figures (milliseconds are medians over ``iterations`` timed runs after ``warmup`` untimed runs):

* ``scan_forward_ms`` / ``loop_forward_ms``: inference (``no_grad``, eval mode). The loop calls
  ``S5Block.step`` T times with the discretisation computed once.
* ``scan_train_ms`` / ``loop_train_ms``: forward + backward of ``out.square().mean() + states.real.mean()``.
* ``*_saved_for_backward_mib``: bytes of the distinct tensor storages autograd saves for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded: the activation memory of training (in
  float32, whatever ``--precision``).
* ``*_peak_rss_delta_mib`` (full run only): torch has no CPU memory statistics, so each training step runs once in
  a fresh Python process, which resets its resident-set high-water mark (Linux ``/proc/self/clear_refs``) after
  building the model and inputs and reports VmHWM − VmRSS after the step: the peak extra resident memory of the
  step, temporaries and allocator slack included. On CUDA, ``*_peak_cuda_delta_mib`` instead (full run only): the
  allocated GPU memory's peak during one training step above what was allocated before it, in this process.
* ``imagination``: one rollout of ``horizon`` recurrent steps of the stack for ``starts`` start states
  (``no_grad``): with Λ̄, B̄ computed once per rollout, re-discretised at every step (the original's
  ``forward_rnn``, B̄ still shared), and one step with a per-sample B̄ (N, P, H) as the original's
  ``vmap(forward_rnn)`` materialises it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn

from hieros.bench._device import CPU, BenchOptions
from hieros.bench._memory import measure_cuda_step
from hieros.bench._timing import synchronize
from hieros.nets.s5 import S5Block

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Config:
    d_model: int
    state_size: int
    blocks: int
    num_blocks: int
    batch: int
    seed: int = 0


def _build(config: _Config, device: torch.device | str = "cpu") -> nn.ModuleList:
    torch.manual_seed(config.seed)
    blocks = (S5Block(config.d_model, config.state_size, config.blocks) for _ in range(config.num_blocks))
    return nn.ModuleList(blocks).to(device)


def _inputs(config: _Config, length: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed + 1)
    x = torch.randn(config.batch, length, config.d_model, generator=generator)
    reset = torch.rand(config.batch, length, generator=generator) < 1 / 64
    reset[:, 0] = True
    return x.to(device), reset.to(device)


def _scan(stack: nn.ModuleList, x: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    states = []
    for block in stack:
        x, block_states = block(x, reset)
        states.append(block_states)
    return x, torch.cat(states, -1)


def _loop(stack: nn.ModuleList, x: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    discretized = [block.discretize() for block in stack]
    carry = [block.initial_state(x.shape[0]) for block in stack]
    outputs, states = [], []
    for t in range(x.shape[1]):
        h = x[:, t]
        for i, block in enumerate(stack):
            h, carry[i] = block.step(h, carry[i], reset[:, t], discretized=discretized[i])
        outputs.append(h)
        states.append(torch.cat(carry, -1))
    return torch.stack(outputs, 1), torch.stack(states, 1)


_FORWARDS: dict[str, Callable] = {"scan": _scan, "loop": _loop}


def _train_step(
    forward: Callable, stack: nn.ModuleList, x: torch.Tensor, reset: torch.Tensor, options: BenchOptions = CPU
) -> None:
    stack.zero_grad(set_to_none=True)
    with options.autocast():
        out, states = forward(stack, x, reset)
        loss = out.float().square().mean() + states.real.mean()
    loss.backward()


def _median_ms(fn: Callable[[], object], iterations: int, warmup: int, device: torch.device | None = None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _saved_for_backward_mib(forward: Callable, stack: nn.ModuleList, x: torch.Tensor, reset: torch.Tensor) -> float:
    parameter_storages = {p.untyped_storage().data_ptr() for p in stack.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out, states = forward(stack, x, reset)
        loss = out.square().mean() + states.real.mean()
    peak = sum(storages.values()) / 2**20
    loss.backward()
    return peak


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _peak_rss_child(config: dict, length: int, method: str, threads: int) -> float:
    """Run in a fresh process: peak resident memory (MiB) of one training step above the RSS before it.

    On Linux the high-water mark VmHWM is reset to the current RSS first (``/proc/self/clear_refs`` ← 5), so the
    peak of the import phase does not mask the step; elsewhere it falls back to the ru_maxrss increase.
    """
    torch.set_num_threads(threads)
    cfg = _Config(**config)
    stack = _build(cfg)
    x, reset = _inputs(cfg, length)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _status_kib("VmRSS")
        _train_step(_FORWARDS[method], stack, x, reset)
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _train_step(_FORWARDS[method], stack, x, reset)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux units: KiB


def _peak_rss_mib(config: _Config, length: int, method: str, threads: int) -> float | None:
    """:func:`_peak_rss_child` in a fresh interpreter; None (and a warning) if that process fails."""
    code = (
        "import json, sys; from hieros.bench.s5 import _peak_rss_child; "
        "print(json.dumps(_peak_rss_child(*json.loads(sys.argv[1]))))"
    )
    arguments = json.dumps([asdict(config), length, method, threads])
    try:
        child = subprocess.run(
            [sys.executable, "-c", code, arguments], capture_output=True, text=True, timeout=3600, check=True
        )
        return float(child.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as error:
        stderr = getattr(error, "stderr", "") or ""
        _LOG.warning("peak-RSS measurement (%s, T=%d) failed: %s %s", method, length, error, stderr[-1000:])
        return None


def _peak_cuda_delta_mib(forward: Callable, stack: nn.ModuleList, x, reset, options: BenchOptions) -> float:
    """Peak allocated GPU memory of one training step above what was allocated before it (MiB)."""
    step = partial(_train_step, forward, stack, x, reset, options)
    return measure_cuda_step(step, options.torch_device)["growth_mib"]


def _imagination(
    stack: nn.ModuleList, starts: int, horizon: int, iterations: int, warmup: int, options: BenchOptions = CPU
) -> dict:
    device = options.torch_device
    generator = torch.Generator().manual_seed(7)
    d_model = stack[0].d_model
    inputs = torch.randn(horizon, starts, d_model, generator=generator).to(device)
    start_states = [
        torch.randn(starts, b.state_size_total, generator=generator, dtype=torch.complex64).to(device) for b in stack
    ]
    no_reset = torch.zeros(starts, dtype=torch.bool, device=device)

    def rollout(precompute: bool) -> None:
        discretized = [block.discretize() if precompute else None for block in stack]
        carry = list(start_states)
        for t in range(horizon):
            h = inputs[t]
            for i, block in enumerate(stack):
                h, carry[i] = block.step(h, carry[i], no_reset, discretized=discretized[i])

    def per_sample_step() -> None:
        # the original vmaps forward_rnn over the batch: every sample gets its own B̄ (N, P, H)
        h = inputs[0]
        for i, block in enumerate(stack):
            state_1, state_2 = start_states[i].chunk(2, -1)
            for layer, norm, linear, state in (
                (block.s5_1, block.norm_1, block.linear_1, state_1),
                (block.s5_2, block.norm_2, block.linear_2, state_2),
            ):
                u = norm(h)
                step = torch.exp(layer.log_step).expand(starts, -1)
                lambda_bar = torch.exp(layer.eigenvalues * step)
                b_bar = ((lambda_bar - 1) / layer.eigenvalues)[..., None] * layer.B_tilde
                x = lambda_bar * state + torch.bmm(b_bar, u.to(torch.complex64)[..., None])[..., 0]
                y = (x @ layer.C_tilde.T).real + layer.D * u
                h = torch.nn.functional.gelu(linear(y)) + h
            h = h + block.norm_3(h)

    with torch.no_grad(), options.autocast():
        shared = _median_ms(lambda: rollout(True), iterations, warmup, device)
        rediscretised = _median_ms(lambda: rollout(False), iterations, warmup, device)
        per_sample = _median_ms(per_sample_step, max(3, iterations // 3), 1, device)
    steps = horizon * len(stack)
    return {
        "starts": starts,
        "horizon": horizon,
        "rollout_ms": shared,
        "rollout_rediscretise_every_step_ms": rediscretised,
        "step_ms": shared / horizon,
        "per_sample_bbar_step_ms": per_sample,
        "per_sample_bbar_vs_shared_per_step": per_sample / (shared / horizon),
        "block_steps_per_rollout": steps,
    }


def run(quick: bool = False, options: BenchOptions | None = None) -> dict:
    """Full run: the paper-size figures (tens of minutes on 2 cores). ``quick``: tiny sizes, 1 thread, seconds.
    ``options``: device and precision (default: the CPU, float32); nothing here is compiled."""
    previous_threads = torch.get_num_threads()
    # tiny quick-mode ops gain nothing from a pool, and a single thread cannot stall on a busy sibling
    threads = 1 if quick else 2
    torch.set_num_threads(threads)
    try:
        return _run(quick, threads, options or CPU)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick: bool, threads: int, options: BenchOptions = CPU) -> dict:
    device = options.torch_device
    if quick:
        config = _Config(d_model=32, state_size=16, blocks=4, num_blocks=2, batch=4)
        lengths, iterations, warmup = (16,), 3, 1
        starts, horizon = 32, 4
    else:
        config = _Config(d_model=256, state_size=128, blocks=4, num_blocks=4, batch=16)
        lengths, iterations, warmup = (64, 1024), 10, 2
        starts, horizon = 1024, 16
    stack = _build(config, device)
    describe = {**options.describe(), "compile": False}
    results: dict = {
        "config": {**asdict(config), "threads": threads, "iterations": iterations, "warmup": warmup, **describe},
        "torch": torch.__version__,
        # other processes sharing the CPU inflate the timings; with the default (spinning) OpenMP wait policy an
        # oversubscribed 2-thread pool is slowed ~100x or more: run with OMP_WAIT_POLICY=PASSIVE on shared machines
        "load_average_1min_before": os.getloadavg()[0],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "sequence": {},
    }
    for length in lengths:
        x, reset = _inputs(config, length, device)
        figures: dict = {}
        for method, forward in _FORWARDS.items():
            _LOG.info("S5 bench: %s, T=%d", method, length)
            stack.eval()
            with torch.no_grad(), options.autocast():
                figures[f"{method}_forward_ms"] = _median_ms(
                    partial(forward, stack, x, reset), iterations, warmup, device
                )
            stack.train()
            figures[f"{method}_train_ms"] = _median_ms(
                partial(_train_step, forward, stack, x, reset, options), iterations, warmup, device
            )
            figures[f"{method}_saved_for_backward_mib"] = _saved_for_backward_mib(forward, stack, x, reset)
            if not quick and options.cuda:
                figures[f"{method}_peak_cuda_delta_mib"] = _peak_cuda_delta_mib(forward, stack, x, reset, options)
            elif not quick:
                figures[f"{method}_peak_rss_delta_mib"] = _peak_rss_mib(config, length, method, threads)
        figures["forward_speedup_scan_vs_loop"] = figures["loop_forward_ms"] / figures["scan_forward_ms"]
        figures["train_speedup_scan_vs_loop"] = figures["loop_train_ms"] / figures["scan_train_ms"]
        results["sequence"][f"T{length}"] = figures
        _LOG.info("S5 bench: T=%d %s", length, json.dumps(figures))
    stack.eval()
    _LOG.info("S5 bench: imagination, %d starts x %d steps", starts, horizon)
    results["imagination"] = _imagination(stack, starts, horizon, iterations, warmup, options)
    results["load_average_1min_after"] = os.getloadavg()[0]
    return results


if __name__ == "__main__":  # pragma: no cover - manual use: python -m hieros.bench.s5 [--quick]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
