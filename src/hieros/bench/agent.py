"""Benchmark: the HIEROS agent's updates, policy step, peak memory and training-loop throughput (issues 4, 14).

Setup (full run): the device of ``--device`` (CPU unless a GPU is there; ``config`` records device, precision and
compile), ``torch.set_num_threads(2)``, ``model=paper``, a 3-level hierarchy with k = 4 (the
default), level 0 on 64×64×3 images with A = 18, every level's replay batch 16 × 64 (resets of probability 1/64
plus ``is_first[:, 0]``), imagination from all 1024 posterior states of the batch, horizon 16. Batches are random
data of each level's replay row layout (no replay, no environment). ``*_s`` is wall clock, ``*_cpu_s`` the process
CPU time of the same runs (the sum over both threads: on a machine shared with other jobs, wall clock inflates and
CPU time much less). Medians are over ``iterations`` timed runs after ``warmup`` untimed ones. On CUDA every timed
region is fenced by ``torch.cuda.synchronize`` (:mod:`hieros.bench._timing`); ``--precision bf16-mixed`` runs the
updates under Fabric's bf16 autocast, ``--compile`` compiles each level's update computations
(``Hierarchy.compile_updates``) before the warm-up, which therefore includes the compile time.

* ``level0_update``: one real ``Subactor.train_step`` of level 0 in the 3-level hierarchy (world model, imagination,
  actor, three critics and the subgoal autoencoder, each with its optimizer step), for s5 and rssm. ``gflop`` (s5,
  full run) counts its floating-point operations (``torch.utils.flop_counter``); ``gemm_bound_s`` = gflop / the
  measured dense-GEMM rate of this machine, a lower bound. ``host_syncs``: ops in one update that make the host
  wait for the device (:mod:`hieros.bench._syncs`): 0 since issue 14 (the quick setup had 244: 222 from AdamW's
  step counters, 22 from ``F.one_hot``'s range checks); not counted when compiled. ``host_syncs_cuda`` (CUDA):
  the synchronising CUDA calls of one update, by Python line (``torch.cuda.set_sync_debug_mode``). ``phases``:
  the same update split in two, over further runs with a synchronisation at the boundary: ``world_model_s`` (world
  model loss, backward, clip and AdamW step, and the preparation of the imagination starts) and
  ``imagination_actor_critic_s`` (imagination, actor and critic updates, subgoal autoencoder update).
* ``three_level``: the updates of k² = 16 consecutive environment steps at the paper's ratio (one level-0 update
  per step; level i trains on every k^i-th level-0 update, as ``Learner.train_step`` schedules it; levels 1 and 2
  see the k stacked latents of the level below as a vector observation and emit 8×8 subgoal codes), s5, run back to back
  after warm-up. ``per_env_step_s`` = their total / 16: it includes the 4 level-1 and the 1 level-2 updates of the
  cycle (``updates``, ``seconds_by_level``, ``mean_update_s_by_level``).
* ``policy_step``: ``Hierarchy.act`` for one environment (batch 1), sampled actions, over ``policy_steps``
  consecutive steps from an episode start after warm-up: the median (most steps only level 0 observes), the mean,
  and the median over the steps where all levels act (every k² = 16 steps); ``host_syncs_all_levels_act``: the
  host syncs of one such step by aten op (:mod:`hieros.bench._syncs`; one ``nonzero`` per observing level picks
  the envs that are due), and on CUDA ``host_syncs_all_levels_act_cuda``, the synchronising CUDA calls.
* ``memory``: peak memory of training the full 3-level paper configuration (:mod:`hieros.bench._memory`; on the
  CPU resident memory, in a fresh Python process, on CUDA the allocated GPU memory, see ``measure``): the memory
  after building the agent, its optimisers and the batches (``baseline_mib``), and its high-water mark during k²
  policy steps and two updates of every level
  (``peak_mib``, baseline included; the first update of each level allocates its optimizer state). A replay
  would add its own size (it lives on disk, memory-mapped).
* ``loop``: agent steps per second of the whole training loop (``hieros.training.loop.train``: acting, replay,
  training at the ratio, metric reports, checkpoints) at ``tiny`` size on the real environment named in
  ``loop.setup``, from the loop's own ``sps`` reports (startup and the final evaluation excluded; periodic
  evaluation and media are off; the run uses the benchmark's device, precision and compile backend).
  ``training_phase`` counts only the report intervals in which level 0 trained from the start.

Targets (issue 4): level-0 update ≤ 2.0 s (s5), 3-level agent ≤ 3 s per environment step, policy step ≤ 5 ms,
peak memory ≤ 8 GiB.

Why one file of ~420 lines: benchmarks are discovered one module per topic (``python -m hieros.bench``); the five
agent cases share the setup, batch and hierarchy helpers at the top.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from hieros.bench._device import CPU, BenchOptions
from hieros.bench._memory import in_fresh_process, measure_step
from hieros.bench._syncs import CudaSyncWarnings, HostSyncCounter
from hieros.bench._timing import matmul_gflops, synchronize, timed
from hieros.bench.world_model import compose_config
from hieros.registry import Registry

THREADS = 2
TARGETS = {
    "level0_update_s5_s": 2.0,
    "three_level_per_env_step_s": 3.0,
    "policy_step_ms": 5.0,
    "peak_gib": 8.0,
}

_FULL: dict[str, Any] = {
    "size": "paper",
    "image": 64,
    "actions": 18,
    "layers": 3,
    "k": 4,
    "batch": 16,
    "length": 64,
    "horizon": 16,
    "iterations": 10,
    "warmup": 1,
    "policy_steps": 160,
    "policy_warmup": 16,
    "loop": [
        "+experiment=smoke",
        "env=atari100k",
        "env.game=pong",
        "hierarchy.layers=3",
        "training.steps=400",
    ],
}
_QUICK: dict[str, Any] = {
    "size": "tiny",
    "image": 16,
    "actions": 4,
    "layers": 3,
    "k": 2,
    "batch": 4,
    "length": 16,
    "horizon": 4,
    "iterations": 2,
    "warmup": 1,
    "policy_steps": 12,
    "policy_warmup": 2,
    "loop": [
        "+experiment=smoke",
        "env=gym",
        "hierarchy.layers=3",
        "hierarchy.k=2",
        "training.steps=48",
        "training.batch_size=2",
        "training.batch_length=8",
        "training.min_windows=2",
        "training.train_ratio=4",
        "training.log_every=16",
    ],
}
# common to both loop runs: no tracking store, no periodic evaluation or media, no final evaluation
_LOOP_COMMON = [
    "logger=none",
    "training.eval_every=0",
    "training.final_eval_episodes=0",
    "training.progress=plain",
    "training.torch_threads=0",
    "seed=0",
]


def _config(sequence_model: str, setup: dict):
    return compose_config(
        f"sequence_model={sequence_model}",
        f"model={setup['size']}",
        f"hierarchy.layers={setup['layers']}",
        f"hierarchy.k={setup['k']}",
        f"agent.actor_critic.imag_horizon={setup['horizon']}",
        "agent.actor_critic.imag_starts=0",  # all B·T posterior states of the batch
    )


def _fabric(options: BenchOptions = CPU):
    return options.fabric()


def _hierarchy(sequence_model: str, setup: dict, options: BenchOptions = CPU, compiled: bool = False):
    """The benchmark's hierarchy on ``options.device``; ``compiled``: with ``options.compile_backend`` compiled
    updates (dynamo's caches emptied first: recompile limits count per code object, across hierarchies)."""
    from omegaconf import OmegaConf

    from hieros.agent.hierarchy import Hierarchy

    config = OmegaConf.to_container(_config(sequence_model, setup), resolve=True)
    torch.manual_seed(0)
    image = setup["image"]
    hierarchy = Hierarchy(config, Registry.default(), {"image": (image, image, 3)}, setup["actions"])
    hierarchy = hierarchy.to(options.torch_device)
    if compiled:
        torch._dynamo.reset()
        hierarchy.compile_updates(options.compile_backend)
    return hierarchy


def _batch(
    hierarchy, index: int, setup: dict, seed: int = 0, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """A random batch with the layout of level ``index``'s replay rows, (B, T, ...), on ``device`` (drawn on the
    CPU: the same data on every device)."""
    generator = torch.Generator().manual_seed(seed + index)
    batch, length = setup["batch"], setup["length"]
    level = hierarchy.levels[index]
    is_first = torch.rand(batch, length, generator=generator) < 1 / 64
    is_first[:, 0] = True

    def one_hot(latents: int, classes: int) -> torch.Tensor:
        choice = torch.randint(0, classes, (batch, length, latents), generator=generator)
        return torch.nn.functional.one_hot(choice, classes)

    out: dict[str, torch.Tensor] = {}
    for key, (shape, dtype) in hierarchy.replay_specs()[index].items():
        if key == "image":
            out[key] = torch.randint(0, 256, (batch, length, *shape), dtype=torch.uint8, generator=generator)
        elif key == "action":
            out[key] = one_hot(*level.actor_critic.action_shape).flatten(-2).float()
        elif key == "goal_code":
            out[key] = one_hot(*shape).to(torch.uint8)
        elif key == "is_first":
            out[key] = is_first
        elif key == "is_terminal":
            out[key] = torch.roll(is_first, -1, 1) & ~is_first
        elif dtype == np.dtype(bool):
            out[key] = torch.zeros(batch, length, dtype=torch.bool)
        else:  # reward, and a higher level's vector of stacked lower latents
            out[key] = torch.randn(batch, length, *shape, generator=generator)
    return {key: value.to(device) for key, value in out.items()}


def _gflop(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


# ------------------------------------------------------------------------------------------- updates


def _level0_update(sequence_model: str, setup: dict, gflops: float | None, options: BenchOptions = CPU) -> dict:
    """Median time of one ``train_step`` of level 0 in the 3-level hierarchy, and of its two phases."""
    device = options.torch_device
    hierarchy = _hierarchy(sequence_model, setup, options, compiled=options.compile)
    level = hierarchy.levels[0]
    batch = _batch(hierarchy, 0, setup, device=device)
    step = partial(level.train_step, batch, level.make_optimizers(), _fabric(options))
    timing = timed(step, setup["iterations"], setup["warmup"], device=device)
    timing["parameters"] = sum(p.numel() for p in level.parameters())
    if not options.compile:  # a dispatch mode around compiled code would count what dynamo traces, not the update
        with HostSyncCounter() as syncs:  # after warm-up: the optimizers' state exists
            step()
        timing["host_syncs"] = syncs.total
    if options.cuda:
        synchronize(device)
        with CudaSyncWarnings() as cuda_syncs:  # a sync warns when the host calls it: no need to wait inside
            step()
        synchronize(device)
        timing["host_syncs_cuda"] = dict(cuda_syncs.by_site)
    timing["phases"] = _phases(level, step, max(2, setup["iterations"] // 2), device)
    if gflops is not None and not options.compile:  # counting runs one more update
        timing["gflop"] = round(_gflop(step), 1)
        timing["gemm_bound_s"] = round(timing["gflop"] / gflops, 2)
    return timing


def _phases(level, step: Callable[[], object], iterations: int, device: torch.device) -> dict[str, float]:
    """Median seconds of the two halves of ``step`` (a ``train_step`` of ``level``): up to the call of the level's
    imagination, and from there to the end. The boundary is found by wrapping ``level.update_fns["imagine"]`` for
    these runs, and fenced with :func:`synchronize` (on CUDA the two halves then do not overlap)."""
    imagine, marks = level.update_fns["imagine"], []

    def marked(*args: Any, **kwargs: Any) -> Any:
        synchronize(device)
        marks.append(time.perf_counter())
        return imagine(*args, **kwargs)

    world_model, behavior = [], []
    level.update_fns["imagine"] = marked
    try:
        for _ in range(iterations):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            end = time.perf_counter()
            world_model.append(marks[-1] - start)
            behavior.append(end - marks[-1])
    finally:
        level.update_fns["imagine"] = imagine
    return {
        "iterations": iterations,
        "world_model_s": statistics.median(world_model),
        "imagination_actor_critic_s": statistics.median(behavior),
    }


def _three_level_cycle(setup: dict, options: BenchOptions = CPU) -> dict[str, Any]:
    """k² consecutive environment steps' worth of updates, scheduled as ``Learner.train_step`` does at one update
    per step."""
    device = options.torch_device
    hierarchy, fabric = _hierarchy("s5", setup, options, compiled=options.compile), _fabric(options)
    levels = range(len(hierarchy.levels))
    optimizers = [hierarchy.levels[i].make_optimizers() for i in levels]
    batches = [_batch(hierarchy, i, setup, device=device) for i in levels]

    def update(index: int) -> None:
        hierarchy.levels[index].train_step(batches[index], optimizers[index], fabric)

    for _ in range(setup["warmup"]):
        for index in levels:
            update(index)
    steps = hierarchy.k ** (len(hierarchy.levels) - 1)
    seconds, cpu_seconds, updates = [0.0] * len(levels), [0.0] * len(levels), [0] * len(levels)
    level0_updates = 0
    synchronize(device)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        level0_updates += 1
        for index in levels:
            if index > 0 and not hierarchy.level_due(index, level0_updates):
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            update(index)
            synchronize(device)  # on CUDA: each level's share is its own; the total is barely affected
            seconds[index] += time.perf_counter() - wall
            cpu_seconds[index] += time.process_time() - cpu
            updates[index] += 1
    total, total_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {
        "env_steps": steps,
        "updates": updates,
        "seconds_by_level": seconds,
        "cpu_seconds_by_level": cpu_seconds,
        "mean_update_s_by_level": [total / max(n, 1) for total, n in zip(seconds, updates)],
        "per_env_step_s": total / steps,
        "per_env_step_cpu_s": total_cpu / steps,
    }


# --------------------------------------------------------------------------------------- policy step


def _policy_step(setup: dict, options: BenchOptions = CPU) -> dict[str, Any]:
    device = options.torch_device
    hierarchy = _hierarchy("s5", setup, options)
    acting = hierarchy.initial_acting_state(1, device)
    rng = np.random.default_rng(0)
    period = hierarchy.k ** (len(hierarchy.levels) - 1)
    wall, cpu, all_levels = [], [], []
    host_syncs: dict[str, int] = {}
    cuda_syncs: dict[str, int] | None = None
    for step in range(setup["policy_warmup"] + setup["policy_steps"]):
        obs = {
            "image": rng.integers(0, 256, (1, setup["image"], setup["image"], 3), dtype=np.uint8),
            "reward": np.zeros(1, np.float32),
            "is_first": np.array([step == 0]),
            "is_last": np.zeros(1, bool),
            "is_terminal": np.zeros(1, bool),
        }
        if step >= setup["policy_warmup"] and step % period == 0 and not host_syncs:
            with HostSyncCounter() as syncs:  # once, untimed, at a step where every level acts
                hierarchy.act(obs, acting, "sampled")  # returns the next state, leaves acting as it is
            host_syncs = dict(syncs.by_op)
            if options.cuda:
                synchronize(device)
                with CudaSyncWarnings() as counted:
                    hierarchy.act(obs, acting, "sampled")
                cuda_syncs = dict(counted.by_site)
        synchronize(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        _, _, acting = hierarchy.act(obs, acting, "sampled")
        synchronize(device)
        elapsed, elapsed_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        if step >= setup["policy_warmup"]:
            wall.append(elapsed)
            cpu.append(elapsed_cpu)
            if step % period == 0:
                all_levels.append(elapsed)
    return {
        "steps": len(wall),
        "ms": 1e3 * statistics.median(wall),
        "cpu_ms": 1e3 * statistics.median(cpu),
        "mean_ms": 1e3 * statistics.fmean(wall),
        "all_levels_act_ms": 1e3 * statistics.median(all_levels) if all_levels else None,
        "all_levels_act_steps": len(all_levels),
        "host_syncs_all_levels_act": host_syncs,
        **({"host_syncs_all_levels_act_cuda": cuda_syncs} if options.cuda else {}),
    }


# ------------------------------------------------------------------------------------------ peak memory


def _memory_case(quick: str = "0", device: str = "cpu", precision: str = "32-true", compile_backend: str = "") -> dict:
    """Memory of training the 3-level agent, in this process (a fresh one on the CPU; see
    :mod:`hieros.bench._memory`). String arguments: they come from the command line of that process."""
    torch.set_num_threads(THREADS)
    setup = _QUICK if quick == "1" else _FULL
    options = BenchOptions(device, precision, bool(compile_backend), compile_backend or "inductor")
    hierarchy, fabric = _hierarchy("s5", setup, options, compiled=options.compile), _fabric(options)
    levels = range(len(hierarchy.levels))
    optimizers = [hierarchy.levels[i].make_optimizers() for i in levels]
    batches = [_batch(hierarchy, i, setup, device=options.torch_device) for i in levels]

    def act_then_train_every_level_twice() -> None:
        acting = hierarchy.initial_acting_state(1, options.torch_device)
        image = setup["image"]
        for step in range(hierarchy.k ** (len(hierarchy.levels) - 1)):
            obs = {
                "image": np.zeros((1, image, image, 3), np.uint8),
                "reward": np.zeros(1, np.float32),
                "is_first": np.array([step == 0]),
                "is_last": np.zeros(1, bool),
                "is_terminal": np.zeros(1, bool),
            }
            _, _, acting = hierarchy.act(obs, acting, "sampled")
        for _ in range(2):
            for index in levels:
                hierarchy.levels[index].train_step(batches[index], optimizers[index], fabric)

    figures = measure_step(act_then_train_every_level_twice, options.torch_device)
    figures["parameters"] = sum(p.numel() for p in hierarchy.parameters())
    return figures


def _peak_memory(quick: bool, options: BenchOptions = CPU) -> dict[str, Any]:
    args = (
        "1" if quick else "0",
        options.device,
        options.precision,
        options.compile_backend if options.compile else "",
    )
    if options.cuda:  # the allocator's peak statistics are exact in this process
        return _memory_case(*args)
    return in_fresh_process("hieros.bench.agent", "_memory_case", *args)


# ---------------------------------------------------------------------------------------- whole loop


def _loop(setup: dict, options: BenchOptions = CPU) -> dict[str, Any]:
    from contextlib import redirect_stdout

    from hieros.training.loop import train

    overrides = [
        *setup["loop"],
        *_LOOP_COMMON,
        f"fabric.accelerator={options.device}",
        f"fabric.precision={options.precision}",
        *(["training.compile=true", f"training.compile_backend={options.compile_backend}"] if options.compile else []),
    ]
    cfg = compose_config(*overrides)
    with tempfile.TemporaryDirectory(prefix="hieros-bench-loop-") as tmp:
        previous_home = os.environ.get("HIEROS_HOME")
        os.environ["HIEROS_HOME"] = tmp  # nothing the run writes lands outside the temporary folder
        try:
            with redirect_stdout(sys.stderr):
                scores = train(cfg, Registry.default(), Path(tmp) / "run")
            reports = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        finally:
            if previous_home is None:
                os.environ.pop("HIEROS_HOME", None)
            else:
                os.environ["HIEROS_HOME"] = previous_home
    reports = [report for report in reports if "sps" in report]
    intervals, previous, trained_before = [], 0, 0
    for report in reports:  # each report's sps covers the steps since the previous report
        steps = report["step"] - previous
        intervals.append((steps, steps / report["sps"], trained_before > 0))
        previous, trained_before = report["step"], report["updates/level0"]
    total_steps = sum(steps for steps, _, _ in intervals)
    total_seconds = sum(seconds for _, seconds, _ in intervals)
    trained = [(steps, seconds) for steps, seconds, training in intervals if training]
    return {
        "setup": {"overrides": overrides, "env": cfg.env.name, "model": "tiny", "threads": torch.get_num_threads()},
        "agent_steps": scores["agent_steps"],
        "updates": scores["updates"],
        "steps_per_second": total_steps / total_seconds,
        "training_phase": {
            "agent_steps": sum(steps for steps, _ in trained),
            "steps_per_second": sum(steps for steps, _ in trained) / sum(s for _, s in trained) if trained else None,
        },
    }


# ------------------------------------------------------------------------------------------------ run


def run(quick: bool = False, options: BenchOptions | None = None) -> dict:
    """All figures as a JSON-able dict. ``quick``: tiny sizes and 2 iterations (a smoke run of seconds);
    ``options``: device, precision and compile (default: the CPU, float32, eager)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(quick, options or CPU)
    finally:
        torch.set_num_threads(previous_threads)
        if options is not None and options.compile:
            torch._dynamo.reset()


def _run(quick: bool, options: BenchOptions) -> dict:
    setup = _QUICK if quick else _FULL
    config = {key: value for key, value in setup.items() if key != "loop"}
    config.update(threads=THREADS, starts=setup["batch"] * setup["length"], **options.describe())
    results: dict[str, Any] = {
        "config": config,
        "torch": torch.__version__,
        "load_average_before": list(os.getloadavg()),
        "matmul_gflops": round(matmul_gflops(options.torch_device, options.bf16), 1),
    }
    gflops = None if quick else results["matmul_gflops"]
    s5 = _level0_update("s5", setup, gflops, options)
    results["level0_update"] = {"s5": s5, "rssm": _level0_update("rssm", setup, None, options)}
    results["three_level"] = cycle = _three_level_cycle(setup, options)
    results["policy_step"] = _policy_step(setup, options)
    results["memory"] = _peak_memory(quick, options)
    results["loop"] = _loop(setup, options)
    results["load_average_after"] = list(os.getloadavg())
    results["targets"] = TARGETS
    peak = results["memory"].get("peak_mib")
    results["targets_met"] = {
        "level0_update_s5": s5["s"] <= TARGETS["level0_update_s5_s"],
        "three_level_per_env_step": cycle["per_env_step_s"] <= TARGETS["three_level_per_env_step_s"],
        "policy_step": results["policy_step"]["ms"] <= TARGETS["policy_step_ms"],
        "peak_memory": peak is not None and peak / 1024 <= TARGETS["peak_gib"],
    }
    return results


if __name__ == "__main__":  # pragma: no cover - manual use: python -m hieros.bench.agent [--quick]
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
