"""The HIEROS hierarchy: how the levels observe, act, store experience and train (paper section 2.1, spec 5).

Every environment step, for each environment (per-env counters, so parallel envs need not be in step):

1. **Observe, bottom-up.** Level 0 observes the environment. Level i observes on its action steps, every k^i
   environment steps counted from the episode start, and at every episode end. Its observation is the k latent
   states level i-1 produced since (``higher_obs: k_states``) or only the newest (``kth_state``, ablation G.5);
   its reward is the sum (or mean) of the environment rewards of the interval. Episode ends reach every level as
   ``is_last``/``is_terminal``, even inside an interval, and each episode start resets every level. The latent
   state a level acts on is carried from the episode start (``sequence_model.acting_context: episode``) or, by
   default for S5, recomputed over its last ``batch_length`` observations, exactly as a training window ending at
   this step computes it (``window``; issue 13).
2. **Act, top-down.** The top level samples a subgoal code (no goal input). Each level below that acts now
   receives the code of the level above, held until that level acts again, and samples its own output; level 0's
   output is the environment action.
3. **Store.** Each level appends one replay row per observation: (observation, action chosen there, reward,
   episode flags, the subgoal code in effect).
4. **Train** (:meth:`hieros.agent.learner.Learner.train_step`): level 0 once per update; level i every k^i updates
   of level 0, each from its own replay, once that replay holds enough windows.

Timeline for k = 2, three levels, one level-0 update per environment step, one episode from t = 0 (``o`` observes,
acts and stores a replay row; ``u`` trains; the loop calls :meth:`Hierarchy.act` then ``Learner.train_step`` per
step)::

    env step t        0   1   2   3   4   5   6   7   8
    level 0 acts      o   o   o   o   o   o   o   o   o    every step; its action goes to the environment
    level 1 acts      o       o       o       o       o    every k = 2 steps (and at an episode end)
    level 2 acts      o               o               o    every k^2 = 4 steps; its code is held below
    level 0 trains    u   u   u   u   u   u   u   u   u    update u = 1, 2, 3, ... (as the train ratio says)
    level 1 trains        u       u       u       u        when u % k == 0
    level 2 trains                u               u        when u % k^2 == 0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hieros.agent.acting_state import ActingState, LevelActingState
from hieros.agent.reward_weights import level_reward_weights
from hieros.agent.subactor import Subactor
from hieros.agent.world_model import build_dynamics
from hieros.nets.distributions import one_hot
from hieros.sequence_models.base import State


class Hierarchy(nn.Module):
    """The stack of subactors. ``obs_shapes`` and ``num_actions`` describe the environment."""

    def __init__(self, cfg: Mapping, registry, obs_shapes: Mapping[str, tuple[int, ...]], num_actions: int) -> None:
        super().__init__()
        self.cfg = cfg
        hierarchy = cfg["hierarchy"]
        self.num_levels, self.k = hierarchy["layers"], hierarchy["k"]
        self.higher_obs = hierarchy["higher_obs"]
        self.num_actions = num_actions
        ae = cfg["agent"]["subgoal_autoencoder"]
        self.code_shape = (ae["latents"], ae["classes"])

        def make_dynamics(embed_dim: int, action_dim: int):
            return build_dynamics(registry, cfg, embed_dim, action_dim)

        levels = []
        shapes = dict(obs_shapes)
        for level in range(self.num_levels):
            top = level == self.num_levels - 1
            action_shape = (1, num_actions) if level == 0 else self.code_shape
            goal_encoding = None if top else registry.build("goal_encoding", cfg["goal_encoding"])
            shared = levels[0].world_model if (level > 0 and hierarchy["shared_world_model"]) else None
            subactor = Subactor(
                level,
                obs_shapes=shapes,
                action_shape=action_shape,
                make_dynamics=make_dynamics,
                goal_encoding=goal_encoding,
                reward_weights=level_reward_weights(cfg, level),
                cfg=cfg,
                world_model=shared,
                needs_decoder=not top,
            )
            levels.append(subactor)
            feature_dim = subactor.world_model.dynamics.feature_dim
            shapes = {"vector": ((self.k if self.higher_obs == "k_states" else 1) * feature_dim,)}
        self.levels = nn.ModuleList(levels)
        self.shared_world_model = bool(hierarchy["shared_world_model"])

    # ------------------------------------------------------------ replay rows
    def replay_specs(self) -> list[dict[str, tuple[tuple[int, ...], np.dtype]] | None]:
        """Per level, the fields of a replay row (shape, dtype); None for a level without its own world model
        (``shared_world_model``: it learns only in imagination)."""
        specs: list[dict[str, tuple[tuple[int, ...], np.dtype]] | None] = []
        for level in self.levels:
            if not level.owns_world_model:
                specs.append(None)
                continue
            wm = level.world_model
            spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for key in wm.obs_keys:
                encoder = wm.encoders[key]
                if hasattr(encoder, "image_size"):
                    spec[key] = ((encoder.image_size, encoder.image_size, encoder.in_channels), np.dtype(np.uint8))
                else:
                    spec[key] = ((encoder.mlp.in_dim,), np.dtype(np.float32))
            spec["action"] = ((level.actor_critic.action_dim,), np.dtype(np.float32))
            spec["reward"] = ((), np.dtype(np.float32))
            for flag in ("is_first", "is_last", "is_terminal"):
                spec[flag] = ((), np.dtype(bool))
            if level.has_goal:
                spec["goal_code"] = (self.code_shape, np.dtype(np.uint8))
            specs.append(spec)
        return specs

    # ----------------------------------------------------------------- acting
    def initial_acting_state(self, num_envs: int, device: torch.device) -> ActingState:
        """Everything acting carries between steps, per level and environment (fresh for evaluation)."""
        state = ActingState(torch.zeros(num_envs, dtype=torch.long, device=device))
        for index, level in enumerate(self.levels):
            dyn = level.world_model.dynamics
            initial = dyn.initial(num_envs)  # acting keeps latents in float32 (complex64 S5 states) at any precision
            entry = LevelActingState(
                latent={key: _float32(value).detach().clone() for key, value in initial.items()},
                prev_action=torch.zeros(num_envs, level.actor_critic.action_dim, device=device),
                reward_sum=torch.zeros(num_envs, device=device),
            )
            if level.has_goal:
                entry.goal_code = torch.zeros(num_envs, *self.code_shape, device=device)
            if dyn.acting_context == "window" and level.owns_world_model:  # the last T steps, re-observed per act
                length = self.cfg["training"]["batch_length"]
                entry.history = {
                    "embed": torch.zeros(num_envs, length, level.world_model.embed_dim, device=device),
                    "action": torch.zeros(num_envs, length, level.actor_critic.action_dim, device=device),
                    "first": torch.ones(num_envs, length, dtype=torch.bool, device=device),
                }
            if index > 0 and level.owns_world_model:
                lower_dim = self.levels[index - 1].world_model.dynamics.feature_dim
                slots = self.k if self.higher_obs == "k_states" else 1
                entry.window = torch.zeros(num_envs, slots, lower_dim, device=device)
            state.levels.append(entry)
        return state

    @torch.no_grad()
    def act(
        self, obs: Mapping[str, np.ndarray], acting: ActingState, mode: str = "sampled"
    ) -> tuple[np.ndarray, list[dict[str, np.ndarray] | None], ActingState]:
        """One environment step for all envs. ``mode``: sampled | greedy | random.

        Returns the environment actions (N,) int64, per level the replay rows written this step
        ({field: (n_i, ...)} with an ``env`` index array) or None where the level did not observe, and the next
        acting state (``acting`` itself is left unchanged).
        """
        acting = acting.clone()
        device = acting.device
        is_first = torch.as_tensor(obs["is_first"], device=device)
        is_last = torch.as_tensor(obs["is_last"], device=device)
        is_terminal = torch.as_tensor(obs["is_terminal"], device=device)
        reward = torch.as_tensor(obs["reward"], device=device, dtype=torch.float32)
        step = torch.where(is_first, torch.zeros_like(acting.episode_step), acting.episode_step)
        observed: list[Tensor | None] = [None] * self.num_levels
        rows: list[dict[str, Tensor] | None] = [None] * self.num_levels

        for entry in acting.levels:  # every level accumulates the environment reward of its interval
            entry.reward_sum += reward

        # 1. observe, bottom-up
        lower_idx, lower_feat = None, None
        for index, level in enumerate(self.levels):
            entry = acting.levels[index]
            if entry.window is not None and lower_idx is not None:
                self._push_window(entry, lower_idx, lower_feat, is_first[lower_idx])
            due = (step % (self.k**index) == 0) | is_last
            idx = due.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            wm = level.world_model
            if not level.owns_world_model:  # shared world model: this level acts on level 0's latent state
                latent = {key: value[idx] for key, value in acting.levels[0].latent.items()}
                for key, value in latent.items():
                    entry.latent[key][idx] = value.to(entry.latent[key].dtype)
                entry.reward_sum[idx] = 0.0
                observed[index] = idx
                lower_idx, lower_feat = idx, wm.features(latent).float()
                continue
            obs_i = self._level_obs(index, obs, entry, idx, device)
            embed, prev_action = wm.encode(obs_i), entry.prev_action[idx]
            if entry.history is not None:  # acting_context=window: the state a training window ending here gives
                history = self._push_history(entry.history, idx, embed, prev_action, is_first[idx])
                latent = wm.dynamics.observe_window(history["embed"], history["action"], history["first"])
            else:  # acting_context=episode: carry the state from the episode start (the original)
                prev_latent = {key: value[idx] for key, value in entry.latent.items()}
                latent = wm.dynamics.obs_step(prev_latent, prev_action, embed, is_first[idx])
                latent.pop("prior_logit", None)
            for key, value in latent.items():
                entry.latent[key][idx] = value.to(entry.latent[key].dtype)  # bf16-true: the model's bf16 outputs
            level_reward = self._interval_reward(entry.reward_sum[idx], self.k**index)
            entry.reward_sum[idx] = 0.0
            rows[index] = {
                **{key: value for key, value in obs_i.items()},
                "reward": level_reward,
                "is_first": is_first[idx],
                "is_last": is_last[idx],
                "is_terminal": is_terminal[idx],
                "env": idx,
            }
            observed[index] = idx
            lower_idx, lower_feat = idx, wm.features(latent).float()

        # 2. act, top-down: a level's new output becomes the held goal of the level below
        for index in reversed(range(self.num_levels)):
            idx = observed[index]
            if idx is None:
                continue
            level, entry = self.levels[index], acting.levels[index]
            latent = {key: value[idx] for key, value in entry.latent.items()}
            goal_code = entry.goal_code[idx] if entry.goal_code is not None else None
            action = self._choose(level, latent, goal_code, mode)
            action = action * (~is_last[idx]).unsqueeze(-1).float()  # the env resets next step; no action matters
            entry.prev_action[idx] = action
            if index > 0:
                acting.levels[index - 1].goal_code[idx] = action.reshape(-1, *self.code_shape)
            if rows[index] is not None:
                rows[index]["action"] = action
                if level.has_goal:
                    rows[index]["goal_code"] = goal_code
        acting.episode_step = step + 1
        env_action = acting.levels[0].prev_action.argmax(-1)
        rows_np = [None if row is None else {key: value.cpu().numpy() for key, value in row.items()} for row in rows]
        for row in rows_np:
            if row is not None and "goal_code" in row:
                row["goal_code"] = row["goal_code"].astype(np.uint8)
        return env_action.cpu().numpy(), rows_np, acting

    def _level_obs(
        self, index: int, obs: Mapping[str, np.ndarray], entry: LevelActingState, idx: Tensor, device
    ) -> dict[str, Tensor]:
        if index == 0:
            keys = self.levels[0].world_model.obs_keys
            return {key: torch.as_tensor(obs[key], device=device)[idx] for key in keys}
        return {"vector": entry.window[idx].flatten(1)}

    @staticmethod
    def _push_history(history, idx: Tensor, embed: Tensor, prev_action: Tensor, first: Tensor) -> dict[str, Tensor]:
        """Append the newest step (embedding, a_{t-1}, is_first) to the envs ``idx``'s last-T-steps history;
        returns their updated histories (n, T, ...)."""
        updated = {}
        for key, new in (("embed", embed), ("action", prev_action), ("first", first)):
            window = torch.cat([history[key][idx][:, 1:], new.unsqueeze(1).to(history[key].dtype)], 1)
            history[key][idx] = window
            updated[key] = window
        return updated

    def _push_window(self, entry: LevelActingState, idx: Tensor, features: Tensor, first: Tensor) -> None:
        """Append the lower level's newest latent to this level's window (cleared at an episode start)."""
        window = entry.window[idx]
        window = window * (~first).float().reshape(-1, 1, 1)
        window = torch.cat([window[:, 1:], features.unsqueeze(1)], 1)
        entry.window[idx] = window

    def _choose(self, level: Subactor, latent: State, goal_code: Tensor | None, mode: str) -> Tensor:
        ac = level.actor_critic
        if mode == "random":
            latents, classes = ac.action_shape
            choice = torch.randint(classes, (latent["deter"].shape[0], latents), device=latent["deter"].device)
            return one_hot(choice, classes).flatten(1)
        inputs = level.policy_inputs(latent, level.goal_input(goal_code))
        return ac.act(inputs, greedy=mode == "greedy")

    # --------------------------------------------------------------- training
    def compile_updates(self, backend: str = "inductor") -> None:
        """``training.compile``: compile every level's update computations (:meth:`Subactor.compile_updates`)."""
        for level in self.levels:
            level.compile_updates(backend)

    def level_due(self, level: int, level0_updates: int) -> bool:
        """Level i trains on every k^i-th update of level 0 (spec section 5.1)."""
        return level0_updates % (self.k**level) == 0

    def train_shared_levels(
        self, start: State, start_cont: Tensor, level0_updates: int, optimizers, fabric
    ) -> dict[int, dict[str, Tensor]]:
        """Shared world model (G.8): train every due higher level on one joint imagination in level 0's model.

        From a subset of level 0's posterior states, all levels act together for ``imag_horizon * k^(L-1)`` steps:
        level i picks a subgoal every k^i steps (its goal is the held code of level i+1), level 0 acts every step.
        Level i then learns from the trajectory subsampled with stride k^i: its extrinsic reward is the sum (or
        mean) of level 0's predicted rewards over each interval and its continue the product of the continues.
        The number of starts is divided by k^(L-1) so the cost matches one ordinary imagination.
        """
        due = [i for i in range(1, self.num_levels) if self.level_due(i, level0_updates)]
        if not due:
            return {}
        horizon = self.cfg["agent"]["actor_critic"]["imag_horizon"] * self.k ** (self.num_levels - 1)
        count = max(16, start["deter"].shape[0] // self.k ** (self.num_levels - 1))
        pick = torch.randperm(start["deter"].shape[0], device=start["deter"].device)[:count]
        with fabric.autocast():
            trajectory = self._joint_imagine({key: value[pick] for key, value in start.items()}, horizon)
        metrics = {}
        for index in due:
            level = self.levels[index]
            level.actor_critic.update_slow_critics()
            with fabric.autocast(), torch.no_grad():
                inputs, actions, rewards, cont = self._subsample(index, trajectory, start_cont[pick])
            metrics[index] = level.train_behavior(
                inputs, actions, rewards, cont, trajectory["deter"], optimizers[index], fabric
            )
        return metrics

    @torch.no_grad()
    def _joint_imagine(self, state: State, horizon: int) -> dict[str, Any]:
        level0 = self.levels[0]
        dynamics = level0.world_model.dynamics
        codes: list[Tensor | None] = [None] * (self.num_levels + 1)
        steps: dict[str, list] = {"reward": [], "cont": [], "deter": []}
        decisions: list[list[tuple[Tensor, Tensor, Tensor | None]]] = [[] for _ in range(self.num_levels)]
        for t in range(horizon):
            feat = level0.world_model.features(state)
            reward, cont = level0.world_model.reward(feat).mode(), level0.world_model.cont(feat).mean()
            steps["reward"].append(reward)
            steps["cont"].append(cont)
            steps["deter"].append(state["deter"])
            for index in reversed(range(1, self.num_levels)):
                if t % self.k**index:
                    continue
                level = self.levels[index]
                goal_code = codes[index + 1].reshape(-1, *self.code_shape) if level.has_goal else None
                inputs = level.actor_critic.inputs(feat, reward, cont, state["prior_ent"], level.goal_input(goal_code))
                codes[index] = level.actor_critic.act(inputs)
                decisions[index].append((inputs, codes[index], goal_code))
            goal0 = level0.goal_input(codes[1].reshape(-1, *self.code_shape))
            inputs0 = level0.actor_critic.inputs(feat, reward, cont, state["prior_ent"], goal0)
            state = dynamics.img_step(state, level0.actor_critic.act(inputs0))
        return {key: torch.stack(value) for key, value in steps.items()} | {"decisions": decisions}

    def _subsample(self, index: int, trajectory: dict[str, Any], start_cont: Tensor):
        """Level ``index``'s view of a joint trajectory: its decision steps t_j = j k^i, with interval rewards."""
        stride = self.k**index
        level = self.levels[index]
        inputs, actions, goal_codes = (list(parts) for parts in zip(*trajectory["decisions"][index]))
        inputs, actions = torch.stack(inputs), torch.stack(actions)  # (M, n, ...)
        count = inputs.shape[0]
        reward = trajectory["reward"][: count * stride].reshape(count, stride, -1)
        cont = trajectory["cont"][: count * stride].reshape(count, stride, -1)
        # the interval (t_{j-1}, t_j] of decision j: level-0 steps t_{j-1}+1 .. t_j
        interval_reward = torch.cat([reward[:1, 0], reward[:-1, 1:].sum(1) + reward[1:, 0]], 0)
        interval_cont = torch.cat([start_cont.unsqueeze(0), cont[:-1, 1:].prod(1) * cont[1:, 0]], 0)
        interval_reward = self._interval_reward(interval_reward, stride)
        deter = trajectory["deter"][: count * stride : stride]
        goal = torch.stack(goal_codes) if level.has_goal else None
        rewards = {"extrinsic": interval_reward, **level.intrinsic_rewards(deter, goal)}
        return inputs, actions, rewards, interval_cont

    def _interval_reward(self, reward_sum: Tensor, stride: int) -> Tensor:
        """A level's extrinsic reward from the environment rewards summed over its interval of ``stride`` = k^i
        steps: the sum, or the mean (``hierarchy.extrinsic_aggregation``)."""
        if self.cfg["hierarchy"]["extrinsic_aggregation"] == "mean":
            return reward_sum / float(stride)
        return reward_sum

    @staticmethod
    def to_tensors(batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
        return {key: torch.as_tensor(value, device=device) for key, value in batch.items()}


def _float32(value: Tensor) -> Tensor:
    return value.float() if value.is_floating_point() else value
