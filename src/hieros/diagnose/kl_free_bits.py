"""Section 2 of the diagnostics: the share of steps whose dynamics KL is under the free bits (:func:`free_bits`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


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
