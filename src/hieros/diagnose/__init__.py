"""World-model diagnostics of a training run (``hieros-diagnose RUN_DIR``, ``python -m hieros.diagnose RUN_DIR``).

The computations are pure functions of a :class:`~hieros.agent.world_model.WorldModel` and tensors, all without
gradients and with deterministic latents (``sample=False``: the mode of every categorical):

* :func:`open_loop`: observe the first ``context`` steps of replay windows with the posterior, then roll the prior
  forward with the window's own previous actions; observation, reward and continue errors per horizon step, next to
  the error of copying the last observed frame.
* :func:`free_bits`: the share of (b, t) steps whose dynamics KL is below ``kl_free`` (the prior gets no gradient
  there) and the mean KL.
* :func:`action_sensitivity`: how far one prior step's decoded observation (and reward) moves between different
  actions, against how far the data moves in one step.
* :func:`state_gap`: over whole episodes, the deterministic state h from observing the episode from its start
  (what acting with ``sequence_model.acting_context=episode`` reads) against h from the training window of
  ``batch_length`` steps ending at the same step (what training sees), per position in the episode.

:func:`load_run` rebuilds the agent from a run directory's newest checkpoint and opens its replays read-only;
:func:`diagnose_run` runs every section per level and returns one JSON-ready dict; :func:`scalars` flattens it into
MLflow metric names. The CLI is in :mod:`hieros.diagnose.__main__`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DiagnoseError",
    "LoadedRun",
    "action_sensitivity",
    "buckets_for",
    "diagnose_run",
    "find_episodes",
    "free_bits",
    "load_episodes",
    "load_run",
    "obs_target",
    "open_loop",
    "sample_windows",
    "scalars",
    "state_gap",
    "to_tensors",
]

NON_OBS_FIELDS = ("action", "reward", "is_first", "is_last", "is_terminal", "goal_code")
"""Replay fields that are not observations (every other field of a level's replay is an encoder input)."""


class DiagnoseError(RuntimeError):
    """The run directory cannot be diagnosed; the message says what is missing and how to fix it."""


# ----------------------------------------------------------------------------------------------- helpers
def obs_target(key: str, value: Tensor) -> Tensor:
    """An observation in the units of the decoder's mean: images x/255 - 0.5 (the training target), vectors raw."""
    return value.float() / 255.0 - 0.5 if key == "image" else value.float()


def _per_sample_mse(prediction: Tensor, target: Tensor, batch_dims: int) -> Tensor:
    """Mean over the event elements of (prediction - target)^2, keeping the first ``batch_dims`` dims."""
    return (prediction.float() - target.float()).pow(2).flatten(batch_dims).mean(-1)


def _masked_mean(values: Tensor, mask: Tensor) -> float | None:
    count = int(mask.sum())
    if count == 0:
        return None
    return float((values * mask).sum() / count)


def _decoded_means(world_model, features: Tensor) -> dict[str, Tensor]:
    return {key: dist.mode() for key, dist in world_model.decode(features).items()}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------------ 1. open loop
@torch.no_grad()
def open_loop(world_model, batch: Mapping[str, Tensor], context: int = 8, horizon: int = 16) -> dict[str, Any]:
    """Open-loop prediction error against the horizon on replay windows ``batch`` (B, T, ...).

    The posterior observes steps 0..context-1 (``is_first`` as given: the window's first step should be True, as
    the replay forces it); the prior then runs ``H = min(horizon, T - context)`` steps with the window's own
    previous actions (:meth:`WorldModel.previous_actions`, ``img_step(sample=False)``). Horizon step j predicts
    window step ``context - 1 + j``; steps at or after an episode start inside the horizon are masked out (the prior
    cannot know about the reset). Per horizon step: mean over unmasked windows of the observation MSE (mean over
    elements; images in [-0.5, 0.5] units, vectors raw) of the model and of copying the last observed frame, the
    reward's absolute error (two-hot mean vs data) and the continue's (Bernoulli mean vs 1 - is_terminal).
    ``posterior`` holds the same errors of the posterior reconstruction over the context steps, for scale.
    """
    is_first = batch["is_first"].bool()
    length = is_first.shape[1]
    steps = min(int(horizon), length - int(context))
    if context < 1 or steps < 1:
        raise ValueError(f"open loop needs 1 <= context < window length: context {context}, window {length}")
    dynamics = world_model.dynamics
    keys = world_model.obs_keys
    prev_action = world_model.previous_actions(batch["action"].float(), is_first)
    embed = world_model.encode({key: batch[key][:, :context] for key in keys})
    post, _ = dynamics.observe(embed, prev_action[:, :context], is_first[:, :context], sample=False)
    targets = {key: obs_target(key, batch[key]) for key in keys}
    reward, cont_target = batch["reward"].float(), 1.0 - batch["is_terminal"].float()

    feat = world_model.features(post)
    recon = _decoded_means(world_model, feat)
    posterior = {f"{key}_mse": float(_per_sample_mse(recon[key], targets[key][:, :context], 2).mean()) for key in keys}
    posterior["reward_abs_err"] = float((world_model.reward(feat).mean() - reward[:, :context]).abs().mean())
    posterior["cont_abs_err"] = float((world_model.cont(feat).mean() - cont_target[:, :context]).abs().mean())

    state = {key: value[:, -1] for key, value in post.items() if key != "prior_logit"}
    rollout = dynamics.rollout_context()
    result: dict[str, Any] = {
        "windows": int(is_first.shape[0]),
        "context": int(context),
        "horizon": list(range(1, steps + 1)),
        "count": [],
        "obs": {key: {"model_mse": [], "copy_last_mse": []} for key in keys},
        "reward_abs_err": [],
        "cont_abs_err": [],
        "posterior": posterior,
    }
    last = {key: targets[key][:, context - 1] for key in keys}
    for j in range(1, steps + 1):
        t = context - 1 + j
        state = dynamics.img_step(state, prev_action[:, t], sample=False, context=rollout)
        valid = (~is_first[:, context : t + 1].any(1)).float()  # no episode start inside the rolled-out steps
        result["count"].append(int(valid.sum()))
        feat = world_model.features(state)
        means = _decoded_means(world_model, feat)
        for key in keys:
            model = _per_sample_mse(means[key], targets[key][:, t], 1)
            copy = _per_sample_mse(last[key], targets[key][:, t], 1)
            result["obs"][key]["model_mse"].append(_masked_mean(model, valid))
            result["obs"][key]["copy_last_mse"].append(_masked_mean(copy, valid))
        reward_err = (world_model.reward(feat).mean() - reward[:, t]).abs()
        cont_err = (world_model.cont(feat).mean() - cont_target[:, t]).abs()
        result["reward_abs_err"].append(_masked_mean(reward_err, valid))
        result["cont_abs_err"].append(_masked_mean(cont_err, valid))
    return result


# ------------------------------------------------------------------------------------ 2. free bits
@torch.no_grad()
def free_bits(world_model, batch: Mapping[str, Tensor], kl_free: float) -> dict[str, Any]:
    """Share of (b, t) steps of ``batch`` whose dynamics KL (``kl_terms(post logit, prior logit)[0]``: summed over
    the latents) is below ``kl_free``: there ``max(kl_free, KL)`` is constant and the prior gets no gradient from
    L_dyn. Posterior from ``observe(sample=False)``. Deterministic latents (``stochastic: false``) clip each squared
    logit error instead; the share is then of the (b, t) mean squared error, an approximation."""
    is_first = batch["is_first"].bool()
    prev_action = world_model.previous_actions(batch["action"].float(), is_first)
    embed = world_model.encode({key: batch[key] for key in world_model.obs_keys})
    post, _ = world_model.dynamics.observe(embed, prev_action, is_first, sample=False)
    kl = world_model.kl_terms(post["logit"], post["prior_logit"])[0].float()  # (B, T)
    return {
        "kl_free": float(kl_free),
        "steps": int(kl.numel()),
        "kl_under_free_share": float((kl < kl_free).float().mean()),
        "kl_mean": float(kl.mean()),
        "kl_median": float(kl.median()),
        "kl_p90": float(torch.quantile(kl.flatten(), 0.9)),
        "stochastic": bool(world_model.dynamics.stochastic),
    }


# ---------------------------------------------------------------------------- 3. action sensitivity
def _mean_pairwise_rms(predictions: Tensor) -> float:
    """predictions (K, N, ...): mean over the K(K-1)/2 pairs of the mean over N of the RMS difference."""
    count = predictions.shape[0]
    flat = predictions.float().flatten(2)
    values = [(flat[k] - flat[m]).pow(2).mean(-1).sqrt().mean() for k in range(count) for m in range(k + 1, count)]
    return float(torch.stack(values).mean()) if values else float("nan")


@torch.no_grad()
def action_sensitivity(
    world_model, batch: Mapping[str, Tensor], actions: Tensor, max_states: int | None = 256
) -> dict[str, Any]:
    """How much one prior step depends on the action, against how much the data moves in one step.

    From the posterior states s_t of ``batch`` (``observe(sample=False)``) at steps t whose next step t+1 is in the
    same episode (at most ``max_states``, evenly spaced), one ``img_step(sample=False)`` with each of the K
    ``actions`` (K, action_dim) gives K predictions of o_{t+1} (decoder means) and r_{t+1} (two-hot means).
    ``spread``: mean over action pairs of the per-state RMS difference of the predictions; ``data_step``: the mean
    per-state RMS of o_{t+1} - o_t (|r_{t+1} - r_t| for the reward); ``ratio`` = spread / data_step (None when the
    data does not move). A ratio near 0 means the prior ignores the action.
    """
    is_first = batch["is_first"].bool()
    keys = world_model.obs_keys
    prev_action = world_model.previous_actions(batch["action"].float(), is_first)
    embed = world_model.encode({key: batch[key] for key in keys})
    post, _ = world_model.dynamics.observe(embed, prev_action, is_first, sample=False)
    valid = ~is_first[:, 1:]  # (B, T-1): step t+1 continues the episode of step t
    b, t = valid.nonzero(as_tuple=True)
    if max_states is not None and b.numel() > max_states:
        pick = torch.linspace(0, b.numel() - 1, max_states).round().long()
        b, t = b[pick], t[pick]
    states = b.numel()
    result: dict[str, Any] = {"states": int(states), "actions": int(actions.shape[0]), "obs": {}, "reward": {}}
    if states == 0 or actions.shape[0] < 2:
        return result
    start = {key: value[b, t] for key, value in post.items() if key != "prior_logit"}
    rollout = world_model.dynamics.rollout_context()
    predictions: dict[str, list[Tensor]] = {key: [] for key in keys}
    rewards = []
    for action in actions.to(embed.device).float():
        state = world_model.dynamics.img_step(start, action.expand(states, -1), sample=False, context=rollout)
        feat = world_model.features(state)
        for key, mean in _decoded_means(world_model, feat).items():
            predictions[key].append(mean)
        rewards.append(world_model.reward(feat).mean())
    for key in keys:
        target = obs_target(key, batch[key])
        data = (target[b, t + 1] - target[b, t]).flatten(1).pow(2).mean(-1).sqrt().mean()
        result["obs"][key] = _spread(_mean_pairwise_rms(torch.stack(predictions[key])), float(data))
    reward = batch["reward"].float()
    data = (reward[b, t + 1] - reward[b, t]).abs().mean()
    result["reward"] = _spread(_mean_pairwise_rms(torch.stack(rewards).unsqueeze(-1)), float(data))
    return result


def _spread(spread: float, data_step: float) -> dict[str, float | None]:
    ratio = spread / data_step if data_step > 0 else None
    return {"spread": _finite(spread), "data_step": _finite(data_step), "ratio": _finite(ratio)}


# -------------------------------------------------------------------------------- 4. state gap
def buckets_for(batch_length: int) -> list[tuple[int, int | None]]:
    """Positions in the episode, following the training window length T: [0,T), [T,2T), [2T,4T), [4T, end)."""
    length = int(batch_length)
    return [(0, length), (length, 2 * length), (2 * length, 4 * length), (4 * length, None)]


def _bucket_name(low: int, high: int | None) -> str:
    return f"{low}_{'inf' if high is None else high}"


@torch.no_grad()
def _episode_states(world_model, episode: Mapping[str, Tensor], batch_length: int, chunk: int) -> dict[str, Tensor]:
    """Deterministic (z, h) of one episode (L, ...) observed from its start, and at every step t from the window of
    ``batch_length`` steps ending at t (its first step an episode start, as the replay forces)."""
    dynamics = world_model.dynamics
    keys = world_model.obs_keys
    is_first = episode["is_first"].bool().clone()
    is_first[0] = True
    steps = is_first.shape[0]
    embed = world_model.encode({key: episode[key] for key in keys})  # (L, E)
    prev_action = world_model.previous_actions(episode["action"].float()[None], is_first[None])[0]
    post, _ = dynamics.observe(embed[None], prev_action[None], is_first[None], sample=False)
    # Windows: pad T-1 steps in front (episode starts: the window's first real step resets the state anyway), so
    # window t covers padded steps t..t+T-1 = episode steps t-T+1..t; its first step is forced to be a start.
    length = int(batch_length)
    pad = length - 1
    embed_pad = torch.cat([embed.new_zeros(pad, embed.shape[-1]), embed], 0)
    action_pad = torch.cat([prev_action.new_zeros(pad, prev_action.shape[-1]), prev_action], 0)
    first_pad = torch.cat([torch.ones(pad, dtype=torch.bool, device=is_first.device), is_first], 0)
    windows_embed = embed_pad.unfold(0, length, 1).permute(0, 2, 1)  # (L, T, E)
    windows_action = action_pad.unfold(0, length, 1).permute(0, 2, 1)
    windows_first = first_pad.unfold(0, length, 1).clone()  # (L, T)
    windows_first[:, 0] = True
    window_z, window_h = [], []
    for begin in range(0, steps, chunk):
        end = min(steps, begin + chunk)
        window_post, _ = dynamics.observe(
            windows_embed[begin:end].contiguous(),
            windows_action[begin:end].contiguous(),
            windows_first[begin:end],
            sample=False,
        )
        window_z.append(window_post["stoch"][:, -1])
        window_h.append(window_post["deter"][:, -1])
    return {
        "episode_z": post["stoch"][0],
        "episode_h": post["deter"][0],
        "window_z": torch.cat(window_z, 0),
        "window_h": torch.cat(window_h, 0),
    }


@torch.no_grad()
def state_gap(
    world_model,
    episodes: Sequence[Mapping[str, Tensor]],
    batch_length: int,
    acting_context: str = "episode",
    chunk: int = 256,
) -> dict[str, Any]:
    """Acting-vs-window state gap against the position in the episode, over ``episodes`` (each (L, ...) tensors
    from an episode start).

    h_episode: h at step t from observing the episode from its start (acting with ``acting_context=episode``);
    h_window: h at step t from the window of ``batch_length`` steps ending at t (training). Both deterministic
    (``observe(sample=False)``). Per position bucket (:func:`buckets_for`): mean of ||h_episode - h_window|| /
    ||h_window|| (``rel_gap``), the decoder's observation MSE with [z, h] of each (z: that observation's posterior
    mode), the gap of the configured acting state (h_episode or h_window) to h_window (``acting_gap``: 0 for
    ``window`` by construction) and the number of steps. Positions before T are observed from the episode start by
    both, so their gap is 0 up to float error.
    """
    if acting_context not in ("episode", "window"):
        raise ValueError(f"acting_context={acting_context!r} is invalid: allowed is episode | window")
    keys = world_model.obs_keys
    positions, rel_gaps, acting_gaps = [], [], []
    errors: dict[str, dict[str, list[Tensor]]] = {key: {"episode": [], "window": []} for key in keys}
    for episode in episodes:
        states = _episode_states(world_model, episode, batch_length, chunk)
        h_episode, h_window = states["episode_h"].float(), states["window_h"].float()
        norm = h_window.norm(dim=-1).clamp_min(1e-8)
        rel_gaps.append((h_episode - h_window).norm(dim=-1) / norm)
        acting = h_episode if acting_context == "episode" else h_window
        acting_gaps.append((acting - h_window).norm(dim=-1) / norm)
        positions.append(torch.arange(h_window.shape[0], device=h_window.device))
        for source in ("episode", "window"):
            feat = world_model.features({"stoch": states[f"{source}_z"], "deter": states[f"{source}_h"]})
            means = _decoded_means(world_model, feat)
            for key in keys:
                errors[key][source].append(_per_sample_mse(means[key], obs_target(key, episode[key]), 1))
    result: dict[str, Any] = {
        "acting_context": acting_context,
        "batch_length": int(batch_length),
        "episodes": len(episodes),
        "episode_lengths": [int(next(iter(episode.values())).shape[0]) for episode in episodes],
        "buckets": [],
    }
    if not episodes:
        return result
    position = torch.cat(positions)
    rel_gap, acting_gap = torch.cat(rel_gaps), torch.cat(acting_gaps)
    obs_errors = {key: {source: torch.cat(values) for source, values in parts.items()} for key, parts in errors.items()}
    for low, high in buckets_for(batch_length):
        mask = (position >= low) & (position < high if high is not None else torch.ones_like(position, dtype=bool))
        mask = mask.float()
        bucket = {
            "name": _bucket_name(low, high),
            "low": low,
            "high": high,
            "steps": int(mask.sum()),
            "rel_gap": _masked_mean(rel_gap, mask),
            "rel_gap_max": float((rel_gap * mask).max()) if mask.any() else None,
            "acting_gap": _masked_mean(acting_gap, mask),
            "obs_mse": {
                key: {
                    "episode": _masked_mean(obs_errors[key]["episode"], mask),
                    "window": _masked_mean(obs_errors[key]["window"], mask),
                }
                for key in keys
            },
        }
        result["buckets"].append(bucket)
    return result


# ------------------------------------------------------------------------------------ replay data
def sample_windows(replay, count: int, length: int, seed: int) -> dict[str, np.ndarray] | None:
    """Up to ``count`` distinct windows of ``length`` steps from ``replay`` (uniform over its items, numpy
    Generator ``seed``: deterministic), each field (B, T, ...), ``is_first`` forced at every window's first step as
    the replay's sampler does. None when the replay holds no window."""
    stored = replay.steps // replay.num_streams
    per_stream = max(0, stored - length + 1)
    items = per_stream * replay.num_streams
    if items == 0:
        return None
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(items, size=min(count, items), replace=False))
    streams, starts = chosen % replay.num_streams, chosen // replay.num_streams  # item order of the replay
    windows = [replay.read(int(stream), int(start), int(start) + length) for stream, start in zip(streams, starts)]
    batch = {key: np.stack([window[key] for window in windows]) for key in windows[0]}
    batch["is_first"][:, 0] = True
    return batch


def find_episodes(is_first: np.ndarray, is_last: np.ndarray) -> tuple[list[tuple[int, int]], bool]:
    """Episodes of one stream's flags (stored order): ([(start, stop)], complete).

    A complete episode runs from an ``is_first`` row to its ``is_last`` row (inclusive) or up to the row before the
    next ``is_first``. When there is none, the longest contiguous run between episode starts (the head of the
    stream, cut by the ring, or the running episode) is returned instead, with ``complete=False``.
    """
    is_first, is_last = np.asarray(is_first, bool), np.asarray(is_last, bool)
    steps = is_first.shape[0]
    starts = np.flatnonzero(is_first).tolist()
    complete = []
    for index, start in enumerate(starts):
        following = starts[index + 1] if index + 1 < len(starts) else steps
        lasts = np.flatnonzero(is_last[start:following])
        if lasts.size:
            complete.append((start, start + int(lasts[0]) + 1))
        elif index + 1 < len(starts):
            complete.append((start, following))
    if complete:
        return complete, True
    bounds = [0, *[start for start in starts if start > 0], steps]
    runs = [(begin, end) for begin, end in zip(bounds[:-1], bounds[1:]) if end > begin]
    return ([max(runs, key=lambda run: run[1] - run[0])] if runs else []), False


def load_episodes(replay, count: int) -> tuple[list[dict[str, np.ndarray]], bool, list[dict[str, int]]]:
    """The ``count`` longest complete episodes over every stream of ``replay`` (ties: older first), or the longest
    contiguous run if no stream holds a complete one: (episodes, complete, where each came from)."""
    found: list[tuple[int, int, int, bool]] = []  # (stream, start, stop, complete)
    for stream in range(replay.num_streams):
        flags = replay.read(stream, fields=("is_first", "is_last"))
        runs, complete = find_episodes(flags["is_first"], flags["is_last"])
        found += [(stream, start, stop, complete) for start, stop in runs]
    complete = any(entry[3] for entry in found)
    candidates = [entry for entry in found if entry[3] == complete]
    candidates.sort(key=lambda entry: (-(entry[2] - entry[1]), entry[0], entry[1]))
    if not complete:
        candidates = candidates[:1]
    chosen = candidates[: max(0, int(count))]
    episodes = [replay.read(stream, start, stop) for stream, start, stop, _ in chosen]
    where = [{"stream": stream, "start": start, "length": stop - start} for stream, start, stop, _ in chosen]
    return episodes, complete, where


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device | str) -> dict[str, Tensor]:
    return {key: torch.as_tensor(np.asarray(value), device=device) for key, value in arrays.items()}


# ------------------------------------------------------------------------------------- loading
@dataclass
class LoadedRun:
    """A run directory's newest checkpoint, rebuilt: the agent with its weights, each level's replay (read-only;
    None for a level without its own world model), the resolved config and where it came from."""

    run_dir: Path
    checkpoint: Path
    step: int
    config: dict[str, Any]
    payload: dict[str, Any]
    agent: Any
    replays: list[Any] = field(default_factory=list)
    obs_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_actions: int = 0
    warnings: list[str] = field(default_factory=list)


def _replay_layout(folder: Path) -> dict[str, Any]:
    layout_file = folder / "replay.json"
    if not layout_file.is_file():
        raise DiagnoseError(
            f"replay folder {folder} is missing (or has no replay.json): diagnose reads the run's replay next to its "
            f"checkpoints; copy the whole run directory, replay/ included"
        )
    try:
        return json.loads(layout_file.read_text())
    except (OSError, ValueError) as error:
        raise DiagnoseError(f"{layout_file} is unreadable ({error}); the replay folder is damaged") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the agent of ``run_dir``'s newest good checkpoint and open every level's replay read-only with the
    checkpoint's replay state. Observation shapes and the action count come from level 0's replay layout, so the
    environment need not be installed. Raises :class:`DiagnoseError` with what to do."""
    from hieros.agent.hierarchy import Hierarchy
    from hieros.registry import Registry
    from hieros.replay import Replay
    from hieros.training.checkpoint import CheckpointDir, from_storable

    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise DiagnoseError(f"run directory {run_dir} does not exist: pass the folder a training run wrote")
    folder = run_dir / "checkpoints"
    warnings: list[str] = []
    loaded = CheckpointDir(folder).load_latest(report=warnings.append, map_location="cpu")
    if loaded is None:
        raise DiagnoseError(
            f"no usable checkpoint in {folder}: train first (python -m hieros hydra.run.dir={run_dir}) or pass the "
            f"directory of a run that has written one (training.checkpoint_every)"
        )
    payload, config = loaded.payload, loaded.payload["config"]
    layout = _replay_layout(run_dir / "replay" / "level0")
    fields = layout.get("fields", {})
    obs_shapes = {name: tuple(entry["shape"]) for name, entry in fields.items() if name not in NON_OBS_FIELDS}
    if "action" not in fields or not obs_shapes:
        raise DiagnoseError(f"{run_dir / 'replay' / 'level0' / 'replay.json'} lists no observation or action field")
    num_actions = int(fields["action"]["shape"][0])
    registry = Registry.default()
    try:
        agent = Hierarchy(config, registry, obs_shapes, num_actions)
    except (KeyError, TypeError, ValueError) as error:
        raise DiagnoseError(
            f"the config stored in {loaded.path} does not build an agent with this version of hieros "
            f"({type(error).__name__}: {error}); diagnose it with the hieros version that trained it"
        ) from None
    try:
        agent.load_state_dict(payload["agent"])
    except RuntimeError as error:
        raise DiagnoseError(
            f"checkpoint {loaded.path} does not fit the agent its config builds ({str(error).splitlines()[0]}); "
            f"it was written by another version of hieros"
        ) from None
    agent = agent.to(device).eval()
    training = config["training"]
    replays = []
    for index, spec in enumerate(agent.replay_specs()):
        if spec is None:
            replays.append(None)
            continue
        directory = run_dir / "replay" / f"level{index}"
        _replay_layout(directory)
        state = payload.get(f"replay/level{index}")
        if state is None:
            raise DiagnoseError(f"checkpoint {loaded.path} holds no replay state for level {index}")
        try:
            replay = Replay(
                spec,
                capacity=training["replay_capacity"],
                num_streams=training["num_envs"],
                window=training["batch_length"],
                sampler=registry.build("sampler", config["sampler"]),
                directory=directory,
                read_only=True,
            )
            replay.load_state_dict(from_storable(state))
        except (ValueError, FileNotFoundError) as error:
            raise DiagnoseError(f"cannot open the replay of level {index} in {directory}: {error}") from None
        replays.append(replay)
    return LoadedRun(
        run_dir=run_dir,
        checkpoint=loaded.path,
        step=int(payload.get("counters", {}).get("step", loaded.step)),
        config=config,
        payload=payload,
        agent=agent,
        replays=replays,
        obs_shapes=obs_shapes,
        num_actions=num_actions,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------- the report
def _test_actions(level, index: int, num_codes: int, seed: int) -> Tensor:
    """Level 0: every one-hot action; higher levels: ``num_codes`` random one-hot subgoal codes."""
    latents, classes = level.actor_critic.action_shape
    if index == 0:
        return torch.eye(classes)
    generator = torch.Generator().manual_seed(seed)
    choice = torch.randint(classes, (num_codes, latents), generator=generator)
    return torch.nn.functional.one_hot(choice, classes).float().flatten(1)


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
