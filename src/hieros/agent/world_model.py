"""The world model of one level (paper section 2.2, eq. 6-9; spec sections 3.1 and 3.4).

Encoder -> sequence model (S5WM, RSSM or GRU, from the registry) -> heads for the observation, the reward
(two-hot symlog) and the continue flag. Level 0 sees images; higher levels see vectors of the lower level's latents.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from hieros.nets.distributions import MSE, Bernoulli, SymlogMSE, TwoHot, kl_categorical
from hieros.nets.layers import MLP, ConvDecoder, ConvEncoder, VectorDecoder, VectorEncoder, normalize_image
from hieros.sequence_models.base import LatentDynamics, State

REWARD_BINS = 255


def build_dynamics(registry, cfg: Mapping, embed_dim: int, action_dim: int) -> LatentDynamics:
    """A level's sequence model from the full config (``sequence_model``, ``model`` sizes, world-model latents): the
    one place that maps config keys to the constructor, used by the hierarchy, the benchmarks and the tests."""
    model, wm = cfg["model"], cfg["agent"]["world_model"]
    return registry.build(
        "sequence_model",
        cfg["sequence_model"],
        embed_dim=embed_dim,
        action_dim=action_dim,
        deter=model["deter"],
        stoch=model["stoch"],
        classes=model["classes"],
        hidden=model["hidden"],
        unimix=wm["unimix"],
        stochastic=wm["stochastic"],
    )


def build_world_model(registry, cfg: Mapping, obs_shapes: Mapping[str, tuple[int, ...]], action_dim: int) -> WorldModel:
    """A level's world model from the full config, as :class:`~hieros.agent.subactor.Subactor` builds it."""
    return WorldModel(
        obs_shapes,
        action_dim,
        lambda embed_dim: build_dynamics(registry, cfg, embed_dim, action_dim),
        cfg["model"],
        cfg["agent"]["world_model"],
    )


class WorldModel(nn.Module):
    """One level's world model.

    ``obs_shapes`` maps each observation key to its shape: ``image`` (H, W, 3) uint8 or ``vector`` (D,).
    ``make_dynamics(embed_dim)`` builds the sequence model once the embedding size is known.
    """

    def __init__(
        self,
        obs_shapes: Mapping[str, tuple[int, ...]],
        action_dim: int,
        make_dynamics,
        model: Mapping,
        config: Mapping,
    ) -> None:
        super().__init__()
        self.obs_keys = sorted(obs_shapes)
        self.action_dim = action_dim
        self.config = dict(config)
        encoders, decoders = {}, {}
        for key in self.obs_keys:
            shape = tuple(obs_shapes[key])
            if len(shape) == 3:
                encoders[key] = ConvEncoder(shape[-1], model["cnn_depth"], image_size=shape[0])
            elif len(shape) == 1:
                encoders[key] = VectorEncoder(shape[0], model["vector_units"], model["vector_layers"])
            else:
                raise ValueError(f"observation {key!r} has shape {shape}: expected (H, W, C) images or (D,) vectors")
        self.encoders = nn.ModuleDict(encoders)
        self.embed_dim = sum(encoder.out_dim for encoder in encoders.values())
        self.dynamics: LatentDynamics = make_dynamics(self.embed_dim)
        feat = self.dynamics.feature_dim
        for key in self.obs_keys:
            shape = tuple(obs_shapes[key])
            if len(shape) == 3:
                decoders[key] = ConvDecoder(feat, shape[-1], model["cnn_depth"], image_size=shape[0])
            else:
                decoders[key] = VectorDecoder(feat, shape[0], model["vector_units"], model["vector_layers"])
        self.decoders = nn.ModuleDict(decoders)
        self.reward_head = MLP(feat, REWARD_BINS, model["units"], model["mlp_layers"], out_scale=0.0)
        self.cont_head = MLP(feat, 1, model["units"], model["mlp_layers"], out_scale=1.0)

    # ------------------------------------------------------------------ heads
    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([self.encoders[key](obs[key]) for key in self.obs_keys], -1)

    def features(self, state: State) -> Tensor:
        return self.dynamics.features(state)

    def reward(self, features: Tensor) -> TwoHot:
        return TwoHot(self.reward_head(features))

    def cont(self, features: Tensor) -> Bernoulli:
        return Bernoulli(self.cont_head(features).squeeze(-1))

    def decode(self, features: Tensor) -> dict[str, MSE]:
        out = {}
        for key, decoder in self.decoders.items():
            prediction = decoder(features)
            out[key] = MSE(prediction, dims=3) if prediction.dim() >= 4 and key == "image" else SymlogMSE(prediction)
        return out

    # ------------------------------------------------------------------- loss
    def previous_actions(self, action: Tensor, is_first: Tensor) -> Tensor:
        """The action fed with z_{t-1}: a_{t-1} (default, as acting and imagination do; spec 3.4), zero at
        is_first; or a_t with ``action_alignment: original`` (the original code's off-by-one)."""
        if self.config["action_alignment"] == "original":
            prev = action
        else:
            prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
        return prev * (~is_first).unsqueeze(-1).to(prev.dtype)

    def _check_batch(self, batch: Mapping[str, Tensor]) -> None:
        """Shapes of a training window: is_first, is_terminal, reward (B, T); action (B, T, A); observations
        (B, T, ...). Static shapes only, so ``torch.compile`` traces it away."""
        window = tuple(batch["is_first"].shape)
        expected = {"is_first": window, "is_terminal": window, "reward": window, "action": (*window, self.action_dim)}
        for key, shape in expected.items():
            if len(window) != 2 or tuple(batch[key].shape) != shape:
                raise ValueError(f"world-model batch: {key} must be {shape} (B, T, ...), got {tuple(batch[key].shape)}")
        for key in self.obs_keys:
            if tuple(batch[key].shape[:2]) != window:
                raise ValueError(
                    f"world-model batch: {key} must start with (B, T) = {window}, got {tuple(batch[key].shape)}"
                )

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, State, dict[str, Tensor]]:
        """Eq. 6-9 on a (B, T) window. Returns (loss, posterior states, metrics)."""
        self._check_batch(batch)
        cfg = self.config
        is_first = batch["is_first"]
        embed = self.encode(batch)
        post, prior = self.dynamics.observe(embed, self.previous_actions(batch["action"], is_first), is_first)
        feat = self.features(post)
        losses = {}
        for key, dist in self.decode(feat).items():
            target = normalize_image(batch[key]) if key == "image" else batch[key].float()
            weight = None
            if key == "image" and cfg["image_loss"] == "weighted_mse":
                # pixels that are on (target > 0, i.e. > 127 of 255) weigh image_on_weight: a small object (MinAtar's
                # 1-cell player) otherwise adds too little error to make the posterior encode it (issue 13)
                weight = torch.where(target > 0, cfg["image_on_weight"], 1.0)
            losses[f"{key}_loss"] = -dist.log_prob(target) if weight is None else -dist.log_prob(target, weight)
        losses["reward_loss"] = -self.reward(feat).log_prob(batch["reward"])
        losses["cont_loss"] = -self.cont(feat).log_prob(1.0 - batch["is_terminal"].float())
        dyn_loss, rep_loss = self.kl_losses(post["logit"], post["prior_logit"], cfg["kl_free"])
        scales = {"reward_loss": cfg["reward_scale"], "cont_loss": cfg["cont_scale"]}
        prediction = sum(loss * scales.get(name, cfg["image_scale"]) for name, loss in losses.items())
        total = prediction.mean() + cfg["dyn_scale"] * dyn_loss + cfg["rep_scale"] * rep_loss
        metrics = {name: loss.mean().detach() for name, loss in losses.items()}
        with torch.no_grad():
            kl = self.kl_terms(post["logit"], post["prior_logit"])[1].mean()
        metrics.update(
            dyn_loss=dyn_loss.detach(),
            rep_loss=rep_loss.detach(),
            kl=kl,
            prior_ent=post["prior_ent"].mean().detach(),
            post_ent=self.dynamics.entropy(post["logit"]).mean().detach(),
            model_loss=total.detach(),
        )
        return total, post, metrics

    def kl_terms(self, post_logit: Tensor, prior_logit: Tensor) -> tuple[Tensor, Tensor]:
        """KL[sg(q) || p] (dynamics) and KL[q || sg(p)] (representation), summed over the latents: (B, T) each.

        Deterministic latents (``stochastic: false``) use squared errors between the logits instead (spec
        section 4), averaged over the S*C elements.
        """
        if not self.dynamics.stochastic:
            dyn, rep = self._squared_errors(post_logit, prior_logit)
            return dyn.flatten(-2).mean(-1), rep.flatten(-2).mean(-1)
        dyn = kl_categorical(post_logit.detach(), prior_logit).sum(-1)
        rep = kl_categorical(post_logit, prior_logit.detach()).sum(-1)
        return dyn, rep

    def kl_losses(self, post_logit: Tensor, prior_logit: Tensor, free: float) -> tuple[Tensor, Tensor]:
        """L_dyn and L_rep of eq. 8-9 with free bits: mean over (b, t) of max(free, KL) (scalars).

        Deterministic latents clip each squared logit error at ``free`` before averaging, as the original does.
        """
        if not self.dynamics.stochastic:
            dyn, rep = self._squared_errors(post_logit, prior_logit)
        else:
            dyn, rep = self.kl_terms(post_logit, prior_logit)
        return torch.clamp(dyn, min=free).mean(), torch.clamp(rep, min=free).mean()

    @staticmethod
    def _squared_errors(post_logit: Tensor, prior_logit: Tensor) -> tuple[Tensor, Tensor]:
        """Element-wise (sg(q) - p)^2 and (q - sg(p))^2 of the raw logits: (B, T, S, C) each."""
        return (post_logit.detach() - prior_logit).pow(2), (post_logit - prior_logit.detach()).pow(2)

    # ------------------------------------------------------- open-loop video
    @torch.no_grad()
    def open_loop_video(self, batch: Mapping[str, Tensor], context: int = 5, max_sequences: int = 6) -> np.ndarray:
        """Paper Figure 2: posterior over ``context`` steps, then imagination with the window's own actions.

        Returns uint8 frames (T, 3H, N*W, 3): truth | model | error rows, N sequences side by side.
        """
        if "image" not in self.decoders:
            raise ValueError("open-loop video needs image observations (level 0 of an image environment)")
        batch = {key: value[:max_sequences] for key, value in batch.items()}
        is_first = batch["is_first"]
        prev_action = self.previous_actions(batch["action"], is_first)
        embed = self.encode({key: batch[key][:, :context] for key in self.obs_keys})
        post, _ = self.dynamics.observe(embed, prev_action[:, :context], is_first[:, :context])
        recon = self.decoders["image"](self.features(post))
        state = {key: value[:, -1] for key, value in post.items() if key != "prior_logit"}
        imagined, rollout = [], self.dynamics.rollout_context()
        for t in range(context, is_first.shape[1]):
            state = self.dynamics.img_step(state, prev_action[:, t], sample=False, context=rollout)
            imagined.append(self.decoders["image"](self.features(state)))
        model = torch.cat([recon, torch.stack(imagined, 1)], 1) if imagined else recon
        truth = batch["image"].float() / 255.0
        model = (model + 0.5).clamp(0, 1)
        error = ((model - truth) + 1.0) / 2.0
        video = torch.cat([truth, model, error], 2)  # (N, T, 3H, W, C)
        video = video.permute(1, 2, 0, 3, 4).flatten(2, 3)  # (T, 3H, N*W, C)
        return (video * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
