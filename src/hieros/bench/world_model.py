"""Benchmark: world-model update, imagination and peak memory for the s5, rssm and gru sequence models.

Setup (full run): the device of ``--device`` (CPU unless a GPU is there; ``config`` records device, precision and
compile), ``torch.set_num_threads(2)``, ``model=paper`` (level 0: 64×64×3 images, A = 18), replay
batch 16 × 64 with resets of probability 1/64 plus ``is_first[:, 0]``. Times are medians over ``iterations`` timed
runs after ``warmup`` untimed ones; ``*_s`` is wall clock, ``*_cpu_s`` the process CPU time of the same runs
(the sum over both threads: on a machine shared with other jobs, wall clock inflates and CPU time much less).
On CUDA each timed run is fenced by ``torch.cuda.synchronize``; ``--precision bf16-mixed`` runs the forward passes
under bf16 autocast; ``--compile`` compiles ``WorldModel.loss`` for ``update`` (imagination stays eager here: the
agent benchmark times the compiled imagination of a real level).

* ``update``: one world-model update = ``WorldModel.loss`` forward + backward + grad-norm clip (1000) + AdamW
  step, as ``Subactor`` performs it. ``gflop`` counts its floating-point operations
  (``torch.utils.flop_counter``); ``gflop / matmul_gflops`` is the time it would take at this machine's measured
  dense-GEMM rate, a lower bound.
* ``imagination``: 16 steps from 1024 start states (the 16 × 64 posterior states of a replay batch), with a
  policy that computes the actor input of eq. 3 at every step (reward and continue heads, prior entropy, a 64-d
  goal) and samples from a 2-layer actor. ``forward``: no autograd (REINFORCE, the default actor gradient,
  needs no gradient through the dynamics). ``forward_backward``: with autograd through the rollout and a
  backward pass (the DreamerV3 ``dynamics`` actor gradient).
* ``memory`` (full run only): each case runs once, on the CPU in a fresh Python process (resident memory), on
  CUDA in this one (allocated GPU memory; :mod:`hieros.bench._memory`): memory after building the model and inputs
  (``baseline_mib``) and the high-water mark while the measured step ran (``peak_mib``, baseline included; the
  first update also allocates the optimizer state).
  ``level0_update`` is one real ``Subactor.train_step`` of level 0 of the 3-level paper-size hierarchy (world
  model + imagination + actor, critics and subgoal autoencoder).
* The S5 parallel scan vs the step loop at T = 64 and T = 1024 is measured by :mod:`hieros.bench.s5`.

Targets (issue 3): update ≤ 1.0 s for s5 and rssm; S5 imagination forward ≤ 0.5 s; level-0 update peak ≤ 6 GiB.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from hieros.agent.world_model import WorldModel, build_world_model
from hieros.bench._device import CPU, BenchOptions
from hieros.bench._memory import in_fresh_process, measure_step
from hieros.bench._timing import matmul_gflops, timed
from hieros.nets.distributions import OneHotCategorical, symlog
from hieros.nets.layers import MLP
from hieros.registry import Registry

SEQUENCE_MODELS: tuple[str, ...] = ("s5", "rssm", "gru")
THREADS = 2
GOAL_DIM = 64  # level 0 of a 3-level hierarchy receives the 8×8 subgoal code
TARGETS = {"update_s": 1.0, "s5_imagination_forward_s": 0.5, "level0_update_peak_gib": 6.0}

_FULL = {"size": "paper", "image": 64, "actions": 18, "batch": 16, "length": 64, "starts": 1024, "horizon": 16}
_QUICK = {"size": "tiny", "image": 16, "actions": 4, "batch": 4, "length": 16, "starts": 64, "horizon": 4}


def compose_config(*overrides: str):
    """The composed ``hieros.conf`` config (inside an active Hydra context, or in a fresh one)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides))
    with initialize_config_module(version_base="1.3", config_module="hieros.conf"):
        return compose("config", overrides=list(overrides))


def _config(sequence_model: str, setup: dict):
    return compose_config(f"sequence_model={sequence_model}", f"model={setup['size']}")


def _world_model(registry: Registry, cfg, setup: dict, device: torch.device | str = "cpu") -> WorldModel:
    torch.manual_seed(0)
    shapes = {"image": (setup["image"], setup["image"], 3)}
    return build_world_model(registry, cfg, shapes, setup["actions"]).to(device)


def _batch(setup: dict, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A random replay batch (B, T, ...), drawn on the CPU (the same data on every device), on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    batch, length, size, actions = setup["batch"], setup["length"], setup["image"], setup["actions"]
    is_first = torch.rand(batch, length, generator=generator) < 1 / 64
    is_first[:, 0] = True
    batch_ = {
        "image": torch.randint(0, 256, (batch, length, size, size, 3), dtype=torch.uint8, generator=generator),
        "action": F.one_hot(torch.randint(0, actions, (batch, length), generator=generator), actions).float(),
        "reward": torch.randn(batch, length, generator=generator),
        "is_first": is_first,
        "is_last": torch.zeros(batch, length, dtype=torch.bool),
        "is_terminal": torch.roll(is_first, -1, 1) & ~is_first,
    }
    return {key: value.to(device) for key, value in batch_.items()}


def _update_step(world_model: WorldModel, options: BenchOptions = CPU) -> Callable[[dict], None]:
    cfg = world_model.config
    optimizer = torch.optim.AdamW(world_model.parameters(), lr=cfg["lr"], eps=cfg["eps"], weight_decay=0.0)
    loss_fn = world_model.loss
    if options.compile:
        loss_fn = torch.compile(loss_fn, fullgraph=True, dynamic=False, backend=options.compile_backend)

    def step(batch: dict) -> None:
        with options.autocast():
            loss, _, _ = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(world_model.parameters(), cfg["grad_clip"])
        optimizer.step()

    return step


def _actor(world_model: WorldModel, cfg, setup: dict) -> MLP:
    model = cfg.model
    in_dim = world_model.dynamics.feature_dim + 3 + GOAL_DIM
    device = next(world_model.parameters()).device
    return MLP(in_dim, setup["actions"], model.units, model.mlp_layers, out_scale=1.0).to(device)


def _starts(world_model: WorldModel, setup: dict, options: BenchOptions = CPU) -> dict[str, torch.Tensor]:
    """The B·T posterior states of a replay batch, flattened: the imagination starts of one update."""
    batch = _batch(setup, seed=1, device=options.torch_device)
    with torch.no_grad(), options.autocast():
        _, post, _ = world_model.loss(batch)
    return {key: value.flatten(0, 1) for key, value in post.items() if key != "prior_logit"}


def _imagine(
    world_model: WorldModel, actor: MLP, start: dict, horizon: int, backward: bool, options: BenchOptions = CPU
) -> None:
    goal = torch.zeros(start["deter"].shape[0], GOAL_DIM, device=start["deter"].device)
    log_probs = []

    def policy(state: dict, t: int) -> torch.Tensor:
        features = world_model.features(state)
        extras = torch.stack(
            [world_model.reward(features).mode(), world_model.cont(features).mean(), state["prior_ent"]], -1
        )
        dist = OneHotCategorical(actor(torch.cat([features, symlog(extras), goal], -1)), unimix=0.01)
        action = dist.sample()
        log_probs.append(dist.log_prob(action.detach()))
        return action

    with contextlib.nullcontext() if backward else torch.no_grad():
        with options.autocast():
            states, _ = world_model.dynamics.imagine(start, policy, horizon)
            if backward:
                loss = world_model.features(states).float().square().mean() - torch.stack(log_probs).float().mean()
        if backward:
            loss.backward()


def _gflop(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def _forward_backward(world_model: WorldModel, batch: dict, options: BenchOptions = CPU) -> None:
    with options.autocast():
        loss, _, _ = world_model.loss(batch)
    loss.backward()
    world_model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------ peak memory


class _CPUFabric:
    """What ``Subactor.train_step`` needs from Lightning Fabric, for a plain fp32 CPU process."""

    autocast = staticmethod(contextlib.nullcontext)

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    @staticmethod
    def clip_gradients(module, optimizer, max_norm: float, error_if_nonfinite: bool = False) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm, error_if_nonfinite=error_if_nonfinite)


def _memory_case(
    case: str, sequence_model: str, quick: str = "0", device: str = "cpu", precision: str = "32-true"
) -> dict[str, Any]:
    """One measurement in this process (a fresh one on the CPU): ``update``, ``imagine`` or ``level0_update``.
    String arguments: they come from the command line of that process."""
    torch.set_num_threads(THREADS)
    setup = _QUICK if quick == "1" else _FULL
    options = BenchOptions(device, precision)
    registry = Registry.default()
    cfg = _config(sequence_model, setup)
    if case == "level0_update":
        from hieros.agent.hierarchy import Hierarchy

        shapes = {"image": (setup["image"], setup["image"], 3)}
        hierarchy = Hierarchy(cfg, registry, shapes, setup["actions"]).to(options.torch_device)
        level = hierarchy.levels[0]
        optimizers = level.make_optimizers()
        batch = _batch(setup, device=options.torch_device)
        if level.has_goal:
            codes = torch.randint(0, 8, (setup["batch"], setup["length"], 8))
            batch["goal_code"] = F.one_hot(codes, 8).to(torch.uint8).to(options.torch_device)
        fabric = _CPUFabric() if options == CPU else options.fabric()
        return measure_step(partial(level.train_step, batch, optimizers, fabric), options.torch_device)
    world_model = _world_model(registry, cfg, setup, options.torch_device)
    if case == "update":
        step = partial(_update_step(world_model, options), _batch(setup, device=options.torch_device))
        return measure_step(step, options.torch_device)
    if case == "imagine":
        actor, start = _actor(world_model, cfg, setup), _starts(world_model, setup, options)
        step = partial(_imagine, world_model, actor, start, setup["horizon"], True, options)
        return measure_step(step, options.torch_device)
    raise ValueError(f"unknown memory case {case!r}: use update, imagine or level0_update")


def _peak_memory(case: str, sequence_model: str, quick: bool, options: BenchOptions = CPU) -> dict[str, Any]:
    args = (case, sequence_model, "1" if quick else "0", options.device, options.precision)
    if options.cuda:  # the allocator's peak statistics are exact in this process
        return _memory_case(*args)
    return in_fresh_process("hieros.bench.world_model", "_memory_case", *args)


# ------------------------------------------------------------------------------------------------ run


def run(quick: bool = False, options: BenchOptions | None = None) -> dict:
    """All figures as a JSON-able dict. ``quick``: tiny model, one thread, one iteration (a smoke run);
    ``options``: device, precision and compile (default: the CPU, float32, eager)."""
    previous_threads = torch.get_num_threads()
    threads = 1 if quick else THREADS
    torch.set_num_threads(threads)
    try:
        return _run(quick, threads, options=options or CPU)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    quick: bool, threads: int, iterations: int | None = None, warmup: int | None = None, options: BenchOptions = CPU
) -> dict:
    setup = _QUICK if quick else _FULL
    if iterations is None or warmup is None:
        iterations, warmup = (1, 0) if quick else (10, 2)
    if options.compile:
        warmup = max(warmup, 1)  # the first compiled call compiles
    device = options.torch_device
    registry = Registry.default()
    results: dict[str, Any] = {
        "config": {**setup, "threads": threads, "iterations": iterations, "warmup": warmup, **options.describe()},
        "torch": torch.__version__,
        "load_average_before": list(os.getloadavg()),
        "matmul_gflops": round(matmul_gflops(device, options.bf16), 1),
        "update": {},
        "imagination": {},
        "scan_vs_loop": "see hieros.bench.s5 (T = 64 and T = 1024)",
    }
    for name in SEQUENCE_MODELS:
        if options.compile:
            torch._dynamo.reset()  # recompile limits count per code object, across world models
        cfg = _config(name, setup)
        world_model = _world_model(registry, cfg, setup, device).train()
        batch = _batch(setup, device=device)
        step = _update_step(world_model, options)
        figures = timed(partial(step, batch), iterations, warmup, device=device)
        figures["parameters"] = sum(p.numel() for p in world_model.parameters())
        figures["gflop"] = round(_gflop(partial(_forward_backward, world_model, batch, options)), 3)
        figures["gemm_bound_s"] = round(figures["gflop"] / results["matmul_gflops"], 2)
        results["update"][name] = figures

        world_model.eval()
        actor, start = _actor(world_model, cfg, setup), _starts(world_model, setup, options)
        imagination = {"starts": start["deter"].shape[0], "horizon": setup["horizon"]}
        forward = partial(_imagine, world_model, actor, start, setup["horizon"], False, options)
        imagination["forward_gflop"] = round(_gflop(forward), 3)
        imagination["forward_gemm_bound_s"] = round(imagination["forward_gflop"] / results["matmul_gflops"], 2)
        for label, backward in (("forward", False), ("forward_backward", True)):
            imagine = partial(_imagine, world_model, actor, start, setup["horizon"], backward, options)
            timing = timed(imagine, iterations, warmup, device=device)
            imagination.update({f"{label}_{key}": value for key, value in timing.items()})
        results["imagination"][name] = imagination
    if not quick:
        memory: dict[str, Any] = {}
        for name in SEQUENCE_MODELS:
            memory[f"update_{name}"] = _peak_memory("update", name, quick, options)
            memory[f"imagine_forward_backward_{name}"] = _peak_memory("imagine", name, quick, options)
        memory["level0_update_s5"] = _peak_memory("level0_update", "s5", quick, options)
        results["memory"] = memory
    if options.compile:
        torch._dynamo.reset()
    results["load_average_after"] = list(os.getloadavg())
    results["targets"] = TARGETS
    results["targets_met"] = {
        "update_s5": results["update"]["s5"]["s"] <= TARGETS["update_s"],
        "update_rssm": results["update"]["rssm"]["s"] <= TARGETS["update_s"],
        "s5_imagination_forward": results["imagination"]["s5"]["forward_s"] <= TARGETS["s5_imagination_forward_s"],
    }
    level0 = results.get("memory", {}).get("level0_update_s5", {})
    if "peak_mib" in level0:
        results["targets_met"]["level0_update_peak"] = level0["peak_mib"] / 1024 <= TARGETS["level0_update_peak_gib"]
    return results


if __name__ == "__main__":  # pragma: no cover - manual use: python -m hieros.bench.world_model [--quick]
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
