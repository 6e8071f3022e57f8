"""Section 4 of the diagnostics: the acting-vs-window gap of the deterministic state h by position in the episode
(:func:`state_gap`, :func:`buckets_for`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hieros.diagnose._measures import decoded_means, masked_mean, obs_target, per_sample_mse


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
            means = decoded_means(world_model, feat)
            for key in keys:
                errors[key][source].append(per_sample_mse(means[key], obs_target(key, episode[key]), 1))
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
            "rel_gap": masked_mean(rel_gap, mask),
            "rel_gap_max": float((rel_gap * mask).max()) if mask.any() else None,
            "acting_gap": masked_mean(acting_gap, mask),
            "obs_mse": {
                key: {
                    "episode": masked_mean(obs_errors[key]["episode"], mask),
                    "window": masked_mean(obs_errors[key]["window"], mask),
                }
                for key in keys
            },
        }
        result["buckets"].append(bucket)
    return result
