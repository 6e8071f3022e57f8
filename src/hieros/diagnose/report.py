"""The diagnostics report: every section for every level of a loaded run as one JSON-ready dict
(:func:`diagnose_run`) and its figures flattened into MLflow metric names (:func:`scalars`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hieros.diagnose.acting_state_gap import state_gap
from hieros.diagnose.kl_free_bits import free_bits
from hieros.diagnose.loading import LoadedRun
from hieros.diagnose.open_loop_error import open_loop
from hieros.diagnose.prior_action_sensitivity import action_sensitivity
from hieros.diagnose.replay_data import load_episodes, sample_windows, to_tensors
from hieros.nets.distributions import one_hot


def _test_actions(level, index: int, num_codes: int, seed: int) -> Tensor:
    """Level 0: every one-hot action; higher levels: ``num_codes`` random one-hot subgoal codes."""
    latents, classes = level.actor_critic.action_shape
    if index == 0:
        return torch.eye(classes)
    generator = torch.Generator().manual_seed(seed)
    choice = torch.randint(classes, (num_codes, latents), generator=generator)
    return one_hot(choice, classes).flatten(1)


def diagnose_run(
    run: LoadedRun,
    windows: int = 32,
    context: int = 8,
    horizon: int = 16,
    episodes: int = 5,
    seed: int = 0,
    states: int = 256,
    codes: int = 8,
) -> dict[str, Any]:
    """Every section for every level of ``run``; a JSON-ready dict (see the module docstring)."""
    config = run.config
    training = config["training"]
    batch_length = int(training["batch_length"])
    kl_free = float(config["agent"]["world_model"]["kl_free"])
    acting_context = str(config["sequence_model"].get("acting_context", "episode"))
    device = next(run.agent.parameters()).device
    result: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "settings": {
            "windows": windows,
            "context": context,
            "horizon": horizon,
            "episodes": episodes,
            "seed": seed,
            "states": states,
            "batch_length": batch_length,
            "kl_free": kl_free,
            "acting_context": acting_context,
            "sequence_model": config["sequence_model"]["name"],
            "obs_shapes": {key: list(shape) for key, shape in run.obs_shapes.items()},
            "num_actions": run.num_actions,
        },
        "levels": {},
    }
    for index, (level, replay) in enumerate(zip(run.agent.levels, run.replays)):
        name = f"level{index}"
        if replay is None:
            result["levels"][name] = {
                "skipped": "no replay of its own: it acts on level 0's latent (hierarchy.shared_world_model=true)"
            }
            continue
        wm = level.world_model
        entry: dict[str, Any] = {"replay_steps": int(replay.steps)}
        data = sample_windows(replay, windows, batch_length, seed + index)
        if data is None:
            entry["skipped"] = f"its replay holds {replay.steps} steps, less than one window of {batch_length}"
            result["levels"][name] = entry
            continue
        batch = to_tensors(data, device)
        if batch_length > context:
            entry["open_loop"] = open_loop(wm, batch, context, horizon)
        else:
            entry["open_loop"] = {"skipped": f"--context {context} leaves no horizon in windows of {batch_length}"}
        entry["free_bits"] = free_bits(wm, batch, kl_free)
        actions = _test_actions(level, index, codes, seed + index)
        entry["action_sensitivity"] = action_sensitivity(wm, batch, actions, states)
        entry["action_sensitivity"]["kind"] = "one-hot actions" if index == 0 else "random one-hot subgoal codes"
        if index == 0:
            arrays, complete, where = load_episodes(replay, episodes)
            gap = state_gap(wm, [to_tensors(arrays_i, device) for arrays_i in arrays], batch_length, acting_context)
            gap["complete_episodes"] = complete
            gap["sources"] = where
            if not complete:
                gap["note"] = (
                    "no complete episode in the replay: the longest contiguous run, observed from its first row"
                )
            entry["state_gap"] = gap
        result["levels"][name] = entry
    return result


def scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """The report's figures as MLflow metrics ``diagnose/level{i}/<name>`` (None and non-finite values left out)."""
    metrics: dict[str, float | None] = {}
    for name, level in result["levels"].items():
        prefix = f"diagnose/{name}/"
        loop = level.get("open_loop", {})
        for position, h in enumerate(loop.get("horizon", [])):
            for key, errors in loop["obs"].items():
                metrics[f"{prefix}open_loop_{key}_mse_h{h}"] = errors["model_mse"][position]
                metrics[f"{prefix}open_loop_copy_{key}_mse_h{h}"] = errors["copy_last_mse"][position]
            metrics[f"{prefix}open_loop_reward_abs_err_h{h}"] = loop["reward_abs_err"][position]
            metrics[f"{prefix}open_loop_cont_abs_err_h{h}"] = loop["cont_abs_err"][position]
        bits = level.get("free_bits", {})
        for key in ("kl_under_free_share", "kl_mean"):
            if key in bits:
                metrics[prefix + key] = bits[key]
        sensitivity = level.get("action_sensitivity", {})
        for key, figures in [*sensitivity.get("obs", {}).items(), ("reward", sensitivity.get("reward", {}))]:
            for figure in ("spread", "data_step", "ratio"):
                if figure in figures:
                    metrics[f"{prefix}action_{figure}_{key}"] = figures[figure]
        for bucket in level.get("state_gap", {}).get("buckets", []):
            suffix = bucket["name"]
            metrics[f"{prefix}state_gap_rel_{suffix}"] = bucket["rel_gap"]
            metrics[f"{prefix}acting_gap_rel_{suffix}"] = bucket["acting_gap"]
            for key, errors in bucket["obs_mse"].items():
                metrics[f"{prefix}state_gap_{key}_mse_episode_{suffix}"] = errors["episode"]
                metrics[f"{prefix}state_gap_{key}_mse_window_{suffix}"] = errors["window"]
    return {key: float(value) for key, value in metrics.items() if value is not None and math.isfinite(value)}
