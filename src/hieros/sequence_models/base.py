"""Latent dynamics shared by every sequence model (registry group ``sequence_model``).

A sequence model owns the latent state of a world model: the stochastic part z_t (S categoricals of C classes,
paper section 2.2), the deterministic part h_t, and whatever recurrent carry its core needs. Subclasses supply
only the deterministic core; this base class supplies the input projection, the posterior and prior heads, the
learned initial state, and ``observe`` / ``obs_step`` / ``img_step``, so the world model, the actor-critic and the
hierarchy never branch on the choice of S5, RSSM or GRU.

A latent state is a dict of tensors with batch dims ``(...)``:

* ``stoch`` (..., S, C): one-hot sample of z (the raw logits when ``stochastic=False``),
* ``deter`` (..., D): h_t,
* ``logit`` (..., S, C): unimixed log-probabilities of the distribution z was drawn from,
* ``prior_ent`` (...): entropy of the prior p(z_t | m_t) summed over the S latents (the actor input of eq. 3),
* ``carry``: the core's recurrent state (complex S5 states, GRU hidden states, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hieros.nets.distributions import OneHotCategorical
from hieros.nets.init import init_weights_, uniform_init_

State = dict[str, Tensor]


def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear (no bias) -> LayerNorm -> SiLU -> Linear: the posterior/prior heads of spec section 3.1."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False), nn.LayerNorm(hidden, eps=1e-3), nn.SiLU(), nn.Linear(hidden, out_dim)
    )


class LatentDynamics(nn.Module):
    """Stochastic latent dynamics around a deterministic sequence core.

    Subclasses implement :meth:`core_sequence` (a whole window, with resets), :meth:`core_step` (one step) and
    :meth:`initial_carry`. ``posterior_uses_deter`` selects DreamerV3's posterior q(z_t | h_t, e_t) (sequential
    observe) instead of the S5WM posterior q(z_t | o_t) (parallel observe).
    """

    posterior_uses_deter: bool = False

    def __init__(
        self,
        *,
        embed_dim: int,
        action_dim: int,
        deter: int,
        stoch: int,
        classes: int,
        hidden: int,
        core_input_dim: int,
        unimix: float = 0.01,
        stochastic: bool = True,
        acting_context: str = "episode",
    ) -> None:
        super().__init__()
        if acting_context not in ("episode", "window"):
            raise ValueError(f"acting_context={acting_context!r} is invalid: allowed is 'episode' or 'window'")
        # How acting builds the state the actor reads (see :meth:`observe_window`): ``episode`` carries the state
        # from the episode start (the original); ``window`` recomputes it over the last batch_length steps,
        # exactly as a training window ending at this step does.
        self.acting_context = acting_context
        self.embed_dim, self.action_dim = embed_dim, action_dim
        self.deter_dim, self.stoch, self.classes = deter, stoch, classes
        self.unimix, self.stochastic = unimix, stochastic
        self.stoch_flat = stoch * classes
        self.input_projection = nn.Sequential(
            nn.Linear(self.stoch_flat + action_dim, core_input_dim, bias=False),
            nn.LayerNorm(core_input_dim, eps=1e-3),
            nn.SiLU(),
        )
        posterior_in = embed_dim + (deter if self.posterior_uses_deter else 0)
        self.posterior_head = _head(posterior_in, hidden, self.stoch_flat)
        self.prior_head = _head(deter, hidden, self.stoch_flat)
        self.initial_weight = nn.Parameter(torch.zeros(deter))  # learned initial state, zero-init (spec 3.1)
        for module in (self.input_projection, self.posterior_head, self.prior_head):
            init_weights_(module)
        uniform_init_(self.posterior_head[-1], 1.0)
        uniform_init_(self.prior_head[-1], 1.0)

    @property
    def feature_dim(self) -> int:
        return self.stoch_flat + self.deter_dim

    # ------------------------------------------------------------- subclass API
    def initial_carry(self, batch_size: int, device: torch.device) -> Tensor:
        raise NotImplementedError

    def initial_deter(self) -> Tensor:
        """h_0 before any step (D,); GELU of the learned weight as in the S5WM (spec 3.1)."""
        return nn.functional.gelu(self.initial_weight)

    def core_sequence(self, inputs: Tensor, reset: Tensor, carry: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, U) inputs, (B, T) resets, carry before the window -> m (B, T, D), h (B, T, D), carry per step (B, T, ...)."""
        raise NotImplementedError

    def core_step(self, inputs: Tensor, carry: Tensor, context: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, U) inputs -> m (B, D), h (B, D), carry (B, ...). ``context``: from :meth:`rollout_context`."""
        raise NotImplementedError

    def rollout_context(self) -> Any:
        """Constants of the core for a rollout of many steps with fixed weights (S5: the discretised Λ̄, B̄),
        computed once and passed to every :meth:`core_step`; None where the core has none."""
        return None

    # ---------------------------------------------------------- distributions
    def _logits(self, flat: Tensor) -> Tensor:
        return flat.reshape(*flat.shape[:-1], self.stoch, self.classes)

    def distribution(self, logits: Tensor) -> OneHotCategorical:
        return OneHotCategorical(logits, unimix=self.unimix)

    def _latent(
        self, raw_logits: Tensor, sample: bool = True, entropy: bool = True
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(z, unimixed logits, entropy summed over the S latents or None) of a head's raw output.

        z is a straight-through one-hot sample (or the mode), or the raw logits when deterministic (entropy 0).
        """
        if not self.stochastic:
            return raw_logits, raw_logits, raw_logits.new_zeros(raw_logits.shape[:-2]) if entropy else None
        dist = self.distribution(raw_logits)
        z = dist.sample() if sample else dist.mode()
        return z, dist.logits, dist.entropy().sum(-1) if entropy else None

    def entropy(self, logits: Tensor) -> Tensor:
        """Entropy summed over the S latents of a state's ``logit`` (already unimixed log-probabilities)."""
        if not self.stochastic:
            return torch.zeros(logits.shape[:-2], device=logits.device, dtype=logits.dtype)
        return OneHotCategorical(logits, unimix=0.0).entropy().sum(-1)  # unimix is in the logits already

    # ------------------------------------------------------------------ state
    def initial(self, batch_size: int) -> State:
        """The learned initial latent state for ``batch_size`` sequences (S5 states are zero)."""
        device = self.initial_weight.device
        deter = self.initial_deter().expand(batch_size, self.deter_dim)
        prior = self._logits(self.prior_head(deter))
        stoch, logit, entropy = self._latent(prior, sample=False)
        return {
            "stoch": stoch,
            "deter": deter,
            "logit": logit,
            "prior_ent": entropy,
            "carry": self.initial_carry(batch_size, device),
        }

    def features(self, state: State) -> Tensor:
        """[z, h]: (..., S*C + D), the input of every head."""
        stoch = state["stoch"]
        return torch.cat([stoch.reshape(*stoch.shape[:-2], self.stoch_flat), state["deter"]], -1)

    # --------------------------------------------------------------- stepping
    def img_step(self, state: State, action: Tensor, sample: bool = True, context: Any = None) -> State:
        """Prior step: s_t = f(s_{t-1}, a_{t-1}) and z_t ~ p(z_t | m_t) (paper section 2.2).

        ``context``: :meth:`rollout_context`, to reuse across the steps of a rollout (computed here if None).
        """
        stoch = state["stoch"]
        inputs = self.input_projection(torch.cat([stoch.reshape(*stoch.shape[:-2], self.stoch_flat), action], -1))
        m, h, carry = self.core_step(inputs, state["carry"], context)
        z, logit, entropy = self._latent(self._logits(self.prior_head(m)), sample)
        return {"stoch": z, "deter": h, "logit": logit, "prior_ent": entropy, "carry": carry}

    def obs_step(self, state: State, action: Tensor, embed: Tensor, is_first: Tensor, sample: bool = True) -> State:
        """Posterior step for acting: reset where ``is_first``, prior step, then z_t from the observation."""
        state, action = self._reset(state, action, is_first)
        return self._posterior_step(state, action, embed, sample)

    def _posterior_step(self, state: State, action: Tensor, embed: Tensor, sample: bool) -> State:
        prior = self.img_step(state, action, sample)
        post_in = torch.cat([prior["deter"], embed], -1) if self.posterior_uses_deter else embed
        z, logit, _ = self._latent(self._logits(self.posterior_head(post_in)), sample, entropy=False)
        return {**prior, "stoch": z, "logit": logit, "prior_logit": prior["logit"]}

    def _reset(
        self, state: State, action: Tensor, is_first: Tensor, initial: State | None = None
    ) -> tuple[State, Tensor]:
        mask = is_first.to(action.dtype)
        if initial is None:
            initial = self.initial(is_first.shape[0])
        reset = {}
        for key, value in state.items():
            if key == "prior_logit":
                continue
            keep = (~is_first).reshape(-1, *([1] * (value.dim() - 1)))
            reset[key] = torch.where(keep, value, initial[key].to(value.dtype))
        return reset, action * (1.0 - mask).unsqueeze(-1)

    # ---------------------------------------------------------------- windows
    def observe(
        self, embed: Tensor, prev_action: Tensor, is_first: Tensor, state: State | None = None, sample: bool = True
    ) -> tuple[State, State]:
        """Posterior and prior states of a window.

        embed (B, T, E), prev_action (B, T, A) = a_{t-1} (zero where is_first), is_first (B, T) bool.
        Returns (post, prior), each a state dict with (B, T, ...) entries; ``post`` also carries ``prior_logit``.
        The S5WM and GRU posteriors depend on the observation only, so the whole window runs in parallel.
        ``sample=False`` takes the mode of every latent (deterministic; diagnostics).
        """
        batch, length = is_first.shape
        initial = self.initial(batch)
        if state is None:
            state = initial
        if self.posterior_uses_deter:
            return self._observe_sequential(embed, prev_action, is_first, state, sample)
        post_z, post_logit, _ = self._latent(self._logits(self.posterior_head(embed)), sample, entropy=False)
        # z_{t-1} for every t: the previous posterior sample, the initial stoch after a reset.
        prev_z = torch.cat([state["stoch"].unsqueeze(1), post_z[:, :-1]], 1)
        first = is_first.reshape(batch, length, 1, 1)
        prev_z = torch.where(first, initial["stoch"].unsqueeze(1).to(prev_z.dtype), prev_z)
        prev_action = prev_action * (~is_first).unsqueeze(-1).to(prev_action.dtype)
        inputs = self.input_projection(torch.cat([prev_z.flatten(-2), prev_action], -1))
        m, h, carry = self.core_sequence(inputs, is_first, state["carry"])
        prior_z, prior_logit, prior_ent = self._latent(self._logits(self.prior_head(m)), sample)
        post = {
            "stoch": post_z,
            "deter": h,
            "logit": post_logit,
            "prior_logit": prior_logit,
            "prior_ent": prior_ent,
            "carry": carry,
        }
        prior = {"stoch": prior_z, "deter": h, "logit": prior_logit, "prior_ent": prior_ent, "carry": carry}
        return post, prior

    def observe_window(self, embed: Tensor, prev_action: Tensor, is_first: Tensor) -> State:
        """The latent state at the last step of a window, computed as training computes it (acting_context=window).

        embed (N, T, E), prev_action (N, T, A), is_first (N, T) of the last T steps, the newest last. The first step
        is treated as an episode start, as the replay forces ``is_first`` at every sampled window's first step, so
        the state acting reads is one the model was trained on, whatever the position in the episode (issue 13:
        with ``episode`` the S5 state past ~batch_length steps drifts away from every state seen in training).
        Returns the posterior state (N, ...) of the newest step.
        """
        first = is_first.clone()
        first[:, 0] = True
        post, _ = self.observe(embed, prev_action, first)
        return {key: value[:, -1] for key, value in post.items() if key != "prior_logit"}

    def _observe_sequential(
        self, embed: Tensor, prev_action: Tensor, is_first: Tensor, state: State, sample: bool = True
    ) -> tuple[State, State]:
        posts = []
        initial = self.initial(is_first.shape[0])
        resets = is_first.any(0).tolist()  # one host sync; steps without any reset skip the masking
        for t in range(is_first.shape[1]):  # the posterior needs h_t: inherently sequential (DreamerV3 RSSM)
            action = prev_action[:, t]
            if resets[t]:
                state, action = self._reset(state, action, is_first[:, t], initial)
            state = self._posterior_step(state, action, embed[:, t], sample=sample)
            posts.append(state)
        post = {key: torch.stack([step[key] for step in posts], 1) for key in posts[0]}
        prior = {**post, "stoch": post["stoch"], "logit": post["prior_logit"]}
        prior = {key: value for key, value in prior.items() if key != "prior_logit"}
        return post, prior

    # ------------------------------------------------------------ imagination
    def imagine(self, start: State, policy: Callable[[State, int], Tensor], horizon: int) -> tuple[State, Tensor]:
        """Roll the prior forward from ``start`` (N, ...) with actions from ``policy(state, t)``.

        Returns the states s_0..s_{H-1} (H, N, ...) with s_0 = start, and the actions a_0..a_{H-1} (H, N, A),
        a_t chosen at s_t (spec section 6: horizon 16 = the start plus 15 imagined steps).
        """
        states, actions = [start], []
        state = start
        context = self.rollout_context()
        for t in range(horizon):
            action = policy(state, t)
            actions.append(action)
            if t + 1 < horizon:
                state = self.img_step(state, action, context=context)
                states.append(state)
        keys = [key for key in start if key in states[-1]]
        return {key: torch.stack([s[key] for s in states]) for key in keys}, torch.stack(actions)
