"""Subgoal autoencoder of one level (paper eq. 2, 4, 5; spec sections 5.4 and 5.5) and the intrinsic rewards.

Encoder h -> ``latents`` categoricals of ``classes`` (8x8), decoder code -> h-space with a linear output.
Loss = reconstruction + beta * KL(q(g|h) || uniform). It is trained on the imagined h of each training step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hieros.nets.distributions import OneHotCategorical, symlog
from hieros.nets.layers import MLP


class SubgoalAutoencoder(nn.Module):
    def __init__(self, deter: int, config: Mapping) -> None:
        super().__init__()
        self.config = dict(config)
        self.latents, self.classes = config["latents"], config["classes"]
        code_dim = self.latents * self.classes
        self.encoder = MLP(deter, code_dim, config["encoder_units"], config["layers"], act="gelu", out_scale=1.0)
        self.decoder = MLP(code_dim, deter, config["decoder_units"], config["layers"], act="gelu", out_scale=1.0)

    def distribution(self, h: Tensor) -> OneHotCategorical:
        """q(g | h) of eq. 4: (..., latents, classes)."""
        logits = self.encoder(h).reshape(*h.shape[:-1], self.latents, self.classes)
        return OneHotCategorical(logits, unimix=self.config["unimix"])

    def encode(self, h: Tensor, sample: bool | None = None) -> Tensor:
        """A one-hot code (..., latents, classes); sampled (paper eq. 5) or straight-through argmax (original)."""
        sample = self.config["code"] == "sample" if sample is None else sample
        dist = self.distribution(h)
        return dist.sample() if sample else dist.mode()

    def decode(self, code: Tensor) -> Tensor:
        """f_psi(g): (..., latents, classes) -> (..., D)."""
        return self.decoder(code.flatten(-2))

    def loss(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 5: ||f(g) - h||^2 (mean over dimensions) + beta * KL(q(g|h) || uniform) (mean over latents)."""
        h = h.detach()
        dist = self.distribution(h)
        code = dist.sample() if self.config["code"] == "sample" else dist.mode()
        reconstruction = (self.decode(code) - h).pow(2).mean(-1).mean()
        kl = (dist.probs * (dist.logits + math.log(self.classes))).sum(-1).mean()
        loss = reconstruction + self.config["beta"] * kl
        metrics = {"subgoal_autoencoder_loss": loss.detach(), "reconstruction_loss": reconstruction.detach()}
        metrics["kl_loss"] = kl.detach()
        return loss, metrics

    @torch.no_grad()
    def novelty(self, h: Tensor, variant: str = "symlog_mse") -> Tensor:
        """r_nov of eq. 2 from the reconstruction error of the argmax code, h (..., D) -> (...).

        * ``symlog_mse`` (default): symlog(mean_d (h_d - f(g(h))_d)^2), like with like. Dimension-independent:
          eq. 2's L2 norm grows with sqrt(D), which at D = 64 gave 1.5-2.3 per imagined step against an extrinsic
          reward of ~0.02 and swamped the task (issue 13); this form is the original's scale.
        * ``l2``: ||h - f(g(h))||_2, eq. 2 read literally.
        * ``original``: symlog(mean_d (h_d - f(g(symlog h))_d)^2), the original's scale mismatch (spec 5.4).
        """
        if variant == "original":
            reconstruction = self.decode(self.encode(symlog(h), sample=False))
            return symlog((h - reconstruction).pow(2).mean(-1))
        error = h - self.decode(self.encode(h, sample=False))
        if variant == "l2":
            return error.norm(dim=-1)
        return symlog(error.pow(2).mean(-1))


def subgoal_reward(goal: Tensor, h: Tensor, variant: str = "director") -> Tensor:
    """r_g of eq. 2 as Director's cosine_max: <g, h> / max(||g||, ||h||)^2 (spec section 5.4).

    ``variant='original'``: symlog(max(0, <g, s> / max(||g||, ||s||)^2)) with s = symlog(h).
    goal, h: (..., D) -> (...).
    """
    if variant == "original":
        h = symlog(h)
    goal_norm = goal.norm(dim=-1, keepdim=True) + 1e-12
    h_norm = h.norm(dim=-1, keepdim=True) + 1e-12
    norm = torch.maximum(goal_norm, h_norm)
    reward = ((goal / norm) * (h / norm)).sum(-1)
    if variant == "original":
        return symlog(reward.clamp(min=0.0))
    return reward
