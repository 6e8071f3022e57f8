"""Section 1 of the diagnostics: open-loop prediction error of the prior against the horizon (:func:`open_loop`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hieros.diagnose._measures import decoded_means, masked_mean, obs_target, per_sample_mse


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
    recon = decoded_means(world_model, feat)
    posterior = {f"{key}_mse": float(per_sample_mse(recon[key], targets[key][:, :context], 2).mean()) for key in keys}
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
        means = decoded_means(world_model, feat)
        for key in keys:
            model = per_sample_mse(means[key], targets[key][:, t], 1)
            copy = per_sample_mse(last[key], targets[key][:, t], 1)
            result["obs"][key]["model_mse"].append(masked_mean(model, valid))
            result["obs"][key]["copy_last_mse"].append(masked_mean(copy, valid))
        reward_err = (world_model.reward(feat).mean() - reward[:, t]).abs()
        cont_err = (world_model.cont(feat).mean() - cont_target[:, t]).abs()
        result["reward_abs_err"].append(masked_mean(reward_err, valid))
        result["cont_abs_err"].append(masked_mean(cont_err, valid))
    return result
