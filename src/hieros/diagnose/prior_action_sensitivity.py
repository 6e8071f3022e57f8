"""Section 3 of the diagnostics: how much one prior step depends on the action (:func:`action_sensitivity`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hieros.diagnose._measures import decoded_means, finite, obs_target


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
        for key, mean in decoded_means(world_model, feat).items():
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
    return {"spread": finite(spread), "data_step": finite(data_step), "ratio": finite(ratio)}
