"""One level of the hierarchy (paper section 2.1, Figure 1): world model, actor-critic, subgoal autoencoder.

:meth:`Subactor.train_step` is one update of the level, in the original's order (spec section 5.1):
world model -> actor and critics on trajectories imagined from every posterior state of the batch -> subgoal
autoencoder on the imagined h.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hieros.agent.actor_critic import ActorCritic
from hieros.agent.subgoal import SubgoalAutoencoder, subgoal_reward
from hieros.agent.world_model import WorldModel
from hieros.sequence_models.base import State


def _adamw(params, cfg: Mapping, lr: float) -> torch.optim.AdamW:
    # fused: one kernel per step on CPU and CUDA that keeps the step counters on the device. The default
    # (for-loop on CPU) and foreach=True both read every parameter's step count back to the host for the bias
    # correction: 2 host syncs per parameter tensor, 222 of the 244 syncs of a tiny level-0 update (issue 14).
    optimizer = torch.optim.AdamW(params, lr=lr, eps=cfg["eps"], weight_decay=cfg.get("weight_decay", 0.0), fused=True)
    optimizer.register_load_state_dict_pre_hook(_complex_moments_as_real)
    return optimizer


def _complex_moments_as_real(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """Load hook for checkpoints from before issue 14: they hold Adam moments of the complex S5 parameters (now
    stored as real (..., 2) views, :mod:`hieros.nets.s5`) as complex tensors; Adam works on their real views, so
    the real view of each moment is exactly the state of the new parameter."""

    def as_real(value: Any) -> Any:
        return torch.view_as_real(value).contiguous() if isinstance(value, Tensor) and value.is_complex() else value

    # new dicts: the per-parameter dicts of ``Optimizer.state_dict()`` are the live state of the optimizer saved
    state = {
        index: {key: as_real(value) for key, value in param_state.items()}
        for index, param_state in state_dict.get("state", {}).items()
    }
    # and keep this optimizer's implementation (the old checkpoints say foreach=True, which is not fused)
    implementation = {key: optimizer.defaults[key] for key in ("fused", "foreach")}
    groups = [{**group, **implementation} for group in state_dict.get("param_groups", [])]
    return {**state_dict, "state": state, "param_groups": groups}


class Subactor(nn.Module):
    """Level ``level`` of the hierarchy.

    ``action_shape``: (1, A) at level 0, (latents, classes) of the subgoal code above. ``goal_encoding`` is None at
    the top level (no goal input); otherwise it maps the code from the level above to this actor's goal input.
    ``needs_decoder``: a level above sends subgoal codes that this level's autoencoder decodes into its h-space.
    """

    def __init__(
        self,
        level: int,
        *,
        obs_shapes: Mapping[str, tuple[int, ...]],
        action_shape: tuple[int, int],
        make_dynamics: Callable[[int, int], Any],
        goal_encoding: Any | None,
        reward_weights: Mapping[str, float],
        cfg: Mapping,
        world_model: WorldModel | None = None,
        needs_decoder: bool = False,
    ) -> None:
        super().__init__()
        self.level = level
        self.cfg = cfg
        action_dim = action_shape[0] * action_shape[1]
        self.owns_world_model = world_model is None
        if world_model is None:
            world_model = WorldModel(
                obs_shapes,
                action_dim,
                lambda embed_dim: make_dynamics(embed_dim, action_dim),
                cfg["model"],
                cfg["agent"]["world_model"],
            )
        self.world_model = world_model
        deter = world_model.dynamics.deter_dim
        ae_cfg = cfg["agent"]["subgoal_autoencoder"]
        self.goal_encoding = goal_encoding
        self.goal_shape = (ae_cfg["latents"], ae_cfg["classes"])
        goal_dim = goal_encoding.input_dim(*self.goal_shape, deter) if goal_encoding is not None else 0
        self.actor_critic = ActorCritic(
            world_model.dynamics.feature_dim,
            goal_dim,
            action_shape,
            reward_weights,
            cfg["model"],
            cfg["agent"]["actor_critic"],
        )
        self.autoencoder = SubgoalAutoencoder(deter, ae_cfg)
        self.hierarchy_cfg = cfg["hierarchy"]
        self.needs_decoder = needs_decoder
        self.update_fns = self._update_functions()

    def _update_functions(self) -> dict[str, Callable]:
        """The pure computations of :meth:`train_step` (no optimizer step inside), compiled or not."""
        return {
            "world_model_loss": self.world_model.loss,
            "imagine": self.imagine,
            "actor_critic_losses": self.actor_critic.losses,
            "autoencoder_loss": self.autoencoder.loss,
        }

    def compile_updates(self, backend: str = "inductor") -> None:
        """``torch.compile`` the pure computations of :meth:`train_step` as whole graphs (``fullgraph=True``: a
        graph break is an error, not a silent fallback) with static shapes; the backward passes and the fused
        optimizer steps run outside them. ``backend="eager"`` only traces (a check for graph breaks)."""
        self.update_fns = {
            name: torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
            for name, fn in self._update_functions().items()
        }

    @property
    def needs_autoencoder(self) -> bool:
        """The autoencoder decodes subgoals from the level above and scores novelty; a lone level needs neither."""
        return self.needs_decoder or "novelty" in self.actor_critic.reward_weights

    @property
    def has_goal(self) -> bool:
        return self.goal_encoding is not None

    # ------------------------------------------------------------ optimizers
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        agent = self.cfg["agent"]
        ac = agent["actor_critic"]
        optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.owns_world_model:
            optimizers["world_model"] = _adamw(
                self.world_model.parameters(), agent["world_model"], agent["world_model"]["lr"]
            )
        optimizers["actor"] = _adamw(self.actor_critic.actor.parameters(), ac, ac["actor_lr"])
        for term, critic in self.actor_critic.critics.items():
            optimizers[f"critic_{term}"] = _adamw(critic.parameters(), ac, ac["critic_lr"])
        ae = agent["subgoal_autoencoder"]
        optimizers["autoencoder"] = _adamw(self.autoencoder.parameters(), ae, ae["lr"])
        return optimizers

    def grad_clips(self) -> dict[str, float]:
        agent = self.cfg["agent"]
        clips = {"actor": agent["actor_critic"]["grad_clip"], "autoencoder": agent["subgoal_autoencoder"]["grad_clip"]}
        clips.update({f"critic_{term}": agent["actor_critic"]["grad_clip"] for term in self.actor_critic.critics})
        clips["world_model"] = agent["world_model"]["grad_clip"]
        return clips

    # ---------------------------------------------------------------- acting
    def goal_input(self, code: Tensor | None) -> Tensor | None:
        """The goal input of this level's actor for a subgoal code (..., latents, classes) from the level above."""
        if self.goal_encoding is None:
            return None
        decoded = self.autoencoder.decode(code) if self.goal_encoding.decodes else None
        return self.goal_encoding(code, decoded)

    def policy_inputs(self, state: State, goal: Tensor | None) -> Tensor:
        return self.policy_inputs_and_heads(state, goal)[0]

    def policy_inputs_and_heads(self, state: State, goal: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 3 actor input, plus the predicted reward r_hat and continue probability c_hat it contains."""
        wm = self.world_model
        feat = wm.features(state)
        reward, cont = wm.reward(feat).mode(), wm.cont(feat).mean()
        return self.actor_critic.inputs(feat, reward, cont, state["prior_ent"], goal), reward, cont

    # -------------------------------------------------------------- training
    def intrinsic_rewards(self, deter: Tensor, goal_code: Tensor | None) -> dict[str, Tensor]:
        """r_g and r_nov of eq. 2 for imagined h (H, N, D); ``goal_code`` (H, N, latents, classes) is the subgoal
        in effect at each imagined step; the decoded goal lives in this level's h-space."""
        rewards = {}
        weights = self.actor_critic.reward_weights
        if "subgoal" in weights:
            goal = self.autoencoder.decode(goal_code).detach()  # (H, N, D)
            rewards["subgoal"] = subgoal_reward(goal, deter, self.hierarchy_cfg["subgoal_reward"])
        if "novelty" in weights:
            rewards["novelty"] = self.autoencoder.novelty(deter, self.hierarchy_cfg["novelty_reward"])
        return rewards

    def imagine(self, start: State, goal_code: Tensor | None, start_cont: Tensor, horizon: int):
        """Imagine from N start states; returns (actor-critic inputs (H, N, I), actions, rewards, cont, states).

        ``goal_code`` (H, N, latents, classes): the subgoal in effect at each imagined step (see
        :func:`goal_schedule`); None at the top level."""
        wm, ac = self.world_model, self.actor_critic
        goal = self.goal_input(goal_code)
        goal = goal.detach() if goal is not None else None

        recorded: list[tuple[Tensor, Tensor, Tensor]] = []

        def policy(state: State, t: int) -> Tensor:
            inputs, reward, cont = self.policy_inputs_and_heads(state, None if goal is None else goal[t])
            recorded.append((inputs, reward, cont))
            return ac.act(inputs)

        with torch.no_grad():  # REINFORCE: no gradient flows through the imagined dynamics
            states, actions = wm.dynamics.imagine(start, policy, horizon)
            inputs, reward, cont = (torch.stack(parts) for parts in zip(*recorded))  # (H, N, ...)
            cont = torch.cat([start_cont.unsqueeze(0), cont[1:]], 0)  # c_0 from the data (DreamerV3)
            rewards = {"extrinsic": reward, **self.intrinsic_rewards(states["deter"], goal_code)}
        return inputs, actions, rewards, cont, states

    def train_step(
        self, batch: Mapping[str, Tensor], optimizers: Mapping[str, torch.optim.Optimizer], fabric
    ) -> tuple[dict[str, Tensor], State, Tensor]:
        """One update of this level from a replay batch: world model, then actor-critic and autoencoder on
        trajectories imagined from every posterior state of the batch. Returns (metrics, the imagination starts
        used (N, ...), their continue flags from the data (N,))."""
        metrics: dict[str, Tensor] = {}
        with fabric.autocast():
            wm_loss, post, wm_metrics = self.update_fns["world_model_loss"](batch)
        metrics.update(wm_metrics)
        clip = self.grad_clips()["world_model"]
        metrics["model_grad_norm"] = self._step(optimizers["world_model"], wm_loss, self.world_model, clip, fabric)
        start = {key: value.detach().flatten(0, 1) for key, value in post.items() if key != "prior_logit"}
        start_cont = 1.0 - batch["is_terminal"].float().flatten(0, 1)
        pick = torch.arange(start_cont.shape[0], device=start_cont.device)
        count = self.cfg["agent"]["actor_critic"]["imag_starts"]
        if 0 < count < start_cont.shape[0]:  # a random subset of the B*T starts (CPU-scale runs)
            pick = torch.randperm(start_cont.shape[0], device=start_cont.device)[:count]
            start = {key: value[pick] for key, value in start.items()}
            start_cont = start_cont[pick]
        self.actor_critic.update_slow_critics()
        horizon = self.cfg["agent"]["actor_critic"]["imag_horizon"]
        goal_code = None
        if self.has_goal:
            hold = self.hierarchy_cfg["imagination_goal"] == "hold"
            goal_code = goal_schedule(batch["goal_code"].float(), batch["is_first"], pick, horizon, hold)
        with fabric.autocast():
            inputs, actions, rewards, cont, states = self.update_fns["imagine"](start, goal_code, start_cont, horizon)
        metrics.update(self.train_behavior(inputs, actions, rewards, cont, states["deter"], optimizers, fabric))
        return metrics, start, start_cont

    def train_behavior(
        self,
        inputs: Tensor,
        actions: Tensor,
        rewards: Mapping[str, Tensor],
        cont: Tensor,
        imagined_h: Tensor,
        optimizers: Mapping[str, torch.optim.Optimizer],
        fabric,
    ) -> dict[str, Tensor]:
        """Actor, critics and subgoal autoencoder on one imagined trajectory (time first: (H, N, ...))."""
        ac, clips = self.actor_critic, self.grad_clips()
        with fabric.autocast():
            actor_loss, critic_losses, metrics = self.update_fns["actor_critic_losses"](inputs, actions, rewards, cont)
        metrics["actor_loss"] = actor_loss.detach()
        metrics.update({f"value_{term}_loss": loss.detach() for term, loss in critic_losses.items()})
        # One backward pass for the actor and every critic: their losses share no parameter and no gradient path
        # (inputs, advantages and critic targets are detached), so each network gets exactly its own loss's
        # gradient; one pass is cheaper, and a compiled graph with several outputs can only be differentiated once.
        names = ["actor", *(f"critic_{term}" for term in critic_losses)]
        modules = [ac.actor, *(ac.critics[term] for term in critic_losses)]
        norms = self._step_jointly(
            actor_loss + sum(critic_losses.values()),
            [(optimizers[name], module, clips[name]) for name, module in zip(names, modules)],
            fabric,
        )
        metrics["actor_grad_norm"] = norms[0]
        metrics.update({f"value_{term}_grad_norm": norm for term, norm in zip(critic_losses, norms[1:])})
        if self.needs_autoencoder:
            with fabric.autocast():
                ae_loss, ae_metrics = self.update_fns["autoencoder_loss"](imagined_h.flatten(0, -2))
            metrics.update({key if key.startswith("subgoal") else f"subgoal_{key}": v for key, v in ae_metrics.items()})
            metrics["subgoal_autoencoder_grad_norm"] = self._step(
                optimizers["autoencoder"], ae_loss, self.autoencoder, clips["autoencoder"], fabric
            )
        return metrics

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: Tensor, module: nn.Module, clip: float, fabric) -> Tensor:
        return Subactor._step_jointly(loss, [(optimizer, module, clip)], fabric)[0]

    @staticmethod
    def _step_jointly(
        loss: Tensor, parts: Sequence[tuple[torch.optim.Optimizer, nn.Module, float]], fabric
    ) -> list[Tensor]:
        """One backward pass of ``loss``, then per (optimizer, module, clip): clip the module's gradient norm and
        step. Returns each module's gradient norm before clipping.

        With a loss scaler (``16-mixed``) the backward pass runs on the scaled loss; each optimizer's gradients are
        unscaled before clipping and its step is skipped when they hold inf/NaN (``scaler.step``); the scale is
        updated once, after all steps: one backward pass is one scaler iteration. (Fabric's ``optimizer.step`` would
        update it after each optimizer, and its ``clip_gradients`` refuses fused AdamW under a scaler, which
        ``GradScaler.unscale_`` + ``step`` handle.)"""
        scaler = getattr(fabric.strategy.precision, "scaler", None)
        for optimizer, _, _ in parts:
            optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        norms = []
        for optimizer, module, clip in parts:
            if scaler is None:
                norm = fabric.clip_gradients(module, optimizer, max_norm=clip, error_if_nonfinite=False)
                optimizer.step()
            else:
                plain = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside Fabric's wrapper
                scaler.unscale_(plain)
                norm = nn.utils.clip_grad_norm_(module.parameters(), max_norm=clip, error_if_nonfinite=False)
                scaler.step(plain)
            norms.append(norm.detach() if isinstance(norm, Tensor) else torch.tensor(float("nan")))
        if scaler is not None:
            scaler.update()
        return norms


def goal_schedule(goal_code: Tensor, is_first: Tensor, starts: Tensor, horizon: int, hold: bool) -> Tensor:
    """The subgoal in effect at each imagined step, for imagination started from the posterior states ``starts``.

    goal_code (B, T, latents, classes) and is_first (B, T) of the replay window; starts (N,) flat indices b*T + t.
    Returns (H, N, latents, classes). Acting refreshes a level's subgoal every k steps (the level above acts again);
    with ``hold=False`` (default) imagined step j uses the code the data had j steps after the start, so the subgoal
    changes when it changed in the data, held at the window's end and at the end of the start's episode. ``hold``:
    the start's code for all H steps (the original, spec 5.3).
    """
    batch, length = is_first.shape
    b, t = starts // length, starts % length
    offsets = torch.arange(horizon, device=starts.device)
    if hold:
        return goal_code[b, t].unsqueeze(0).expand(horizon, *goal_code[b, t].shape)
    # last index of the episode segment that contains t, within the window: the step before the next is_first
    positions = torch.arange(length, device=is_first.device).expand(batch, length)
    marks = torch.where(is_first, positions, torch.full_like(positions, length))
    next_first = torch.cat([marks[:, 1:], torch.full_like(marks[:, :1], length)], 1)
    next_first = next_first.flip(1).cummin(1).values.flip(1)  # smallest s > t with is_first[b, s], else T
    last = next_first[b, t] - 1  # (N,)
    index = torch.minimum(t.unsqueeze(0) + offsets.unsqueeze(1), last.unsqueeze(0))  # (H, N)
    return goal_code[b.unsqueeze(0).expand_as(index), index]
