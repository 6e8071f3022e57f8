"""Actor-critic of one level, trained on imagined trajectories (paper eq. 1 and 3; spec section 6).

* Input per eq. 3: [z, h, symlog(r_hat, c_hat, H(p(z|m)))] followed by the goal input (absent at the top level).
* Actor: REINFORCE with an entropy bonus. Level 0 acts with one categorical over the A actions; a higher level
  emits a subgoal of ``latents`` categoricals of ``classes`` (log-prob and entropy averaged over them, spec 5.1).
* One critic per reward term (extrinsic, subgoal, novelty), two-hot symlog values, each with a slow EMA copy
  used as a regulariser. lambda-returns use the reward and continue of the NEXT state (DreamerV3; the original
  used those of the current state, spec section 6).
* The advantage combines the per-critic advantages with the weights w of eq. 1: ``advantage_combine:
  weighted_mean`` divides the weighted sum by sum(w) (the original, DreamerV3/Director; spec section 6), so adding
  an intrinsic term never inflates the actor's step size; ``weighted_sum`` is eq. 1 read literally.
* Metrics ``{term}_return_share``: |w_term * mean return_term| / sum over terms, the share of what the actor
  optimises that each reward term makes up (issue: intrinsic rewards must not swamp the task at level 0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hieros.nets.distributions import OneHotCategorical, TwoHot, symlog
from hieros.nets.float32 import Float32Module
from hieros.nets.layers import MLP

VALUE_BINS = 255


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, discount: float, lam: float) -> Tensor:
    """lambda-returns over an imagined trajectory of H states (time first).

    reward, cont, value: (H, N), where reward[t] and cont[t] belong to state s_t (so r_{t+1} = reward[t+1]).
    R_{H-1} = V(s_{H-1});  R_t = r_{t+1} + gamma c_{t+1} [(1 - lambda) V(s_{t+1}) + lambda R_{t+1}].
    Returns R_0..R_{H-2}: (H-1, N).
    """
    discounts = discount * cont[1:]
    interm = reward[1:] + discounts * (1.0 - lam) * value[1:]
    returns = [value[-1]]
    for t in reversed(range(reward.shape[0] - 1)):  # backward recursion over a 16-step horizon
        returns.append(interm[t] + discounts[t] * lam * returns[-1])
    return torch.stack(returns[1:][::-1])


class PercentileNormalizer(Float32Module):
    """DreamerV3 return normalisation: EMA of the 5th and 95th return percentiles, scale = max(1, P95 - P5).
    Its statistics stay float32 under every precision: a 1% EMA step is below bf16's resolution."""

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95) -> None:
        super().__init__()
        self.decay, self.low, self.high = decay, low, high
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        flat = returns.detach().float().flatten()
        lo, hi = torch.quantile(flat, self.low), torch.quantile(flat, self.high)
        # The first update takes the percentiles as they are, later ones the EMA; chosen on the device, not by a
        # Python branch on ``initialized`` (a host sync per update, issue 14). Same values as the branch.
        keep = torch.where(self.initialized, self.decay, 0.0)
        take = torch.where(self.initialized, 1 - self.decay, 1.0)
        self.lo.mul_(keep).add_(take * lo)
        self.hi.mul_(keep).add_(take * hi)
        self.initialized.fill_(True)

    def scale(self) -> Tensor:
        return torch.clamp(self.hi - self.lo, min=1.0)


class ActorCritic(nn.Module):
    """Actor and per-term critics of one level.

    ``action_shape`` = (latents, classes): (1, A) for level 0, (8, 8) for a higher level's subgoal.
    ``reward_weights`` names the reward terms this level has (eq. 1) and their weights.
    """

    def __init__(
        self,
        feature_dim: int,
        goal_dim: int,
        action_shape: tuple[int, int],
        reward_weights: Mapping[str, float],
        model: Mapping,
        config: Mapping,
    ) -> None:
        super().__init__()
        self.config = dict(config)
        self.action_shape = tuple(action_shape)
        self.goal_dim = goal_dim
        self.reward_weights = dict(reward_weights)
        in_dim = feature_dim + 3 + goal_dim
        latents, classes = self.action_shape
        self.actor = MLP(in_dim, latents * classes, model["units"], model["mlp_layers"], out_scale=1.0)
        self.critics = nn.ModuleDict(
            {
                term: MLP(in_dim, VALUE_BINS, model["units"], model["mlp_layers"], out_scale=0.0)
                for term in reward_weights
            }
        )
        self.slow_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.normalizers = nn.ModuleDict(
            {term: PercentileNormalizer(config["return_norm_decay"]) for term in reward_weights}
        )

    @property
    def action_dim(self) -> int:
        return self.action_shape[0] * self.action_shape[1]

    # ----------------------------------------------------------------- inputs
    @staticmethod
    def inputs(features: Tensor, reward: Tensor, cont: Tensor, prior_ent: Tensor, goal: Tensor | None) -> Tensor:
        """Eq. 3: [z, h, symlog(r_hat), symlog(c_hat), symlog(H)] + goal, all detached from the world model."""
        extras = symlog(torch.stack([reward, cont, prior_ent], -1))
        parts = [features, extras] + ([goal] if goal is not None else [])
        return torch.cat(parts, -1).detach()

    def policy(self, inputs: Tensor) -> OneHotCategorical:
        logits = self.actor(inputs).reshape(*inputs.shape[:-1], *self.action_shape)
        return OneHotCategorical(logits, unimix=self.config["unimix"])

    def act(self, inputs: Tensor, greedy: bool = False) -> Tensor:
        """A flattened one-hot action (..., latents*classes); greedy takes the hard argmax of every categorical."""
        dist = self.policy(inputs)
        action = dist.mode() if greedy else dist.sample()
        return action.flatten(-2)

    def value(self, term: str, inputs: Tensor, slow: bool = False) -> TwoHot:
        critic = self.slow_critics[term] if slow else self.critics[term]
        return TwoHot(critic(inputs))

    @torch.no_grad()
    def update_slow_critics(self) -> None:
        fraction = self.config["slow_critic_fraction"]
        for online, slow in zip(self.critics.parameters(), self.slow_critics.parameters()):
            slow.mul_(1.0 - fraction).add_(fraction * online.detach())

    # ------------------------------------------------------------------ losses
    def losses(
        self, inputs: Tensor, actions: Tensor, rewards: Mapping[str, Tensor], cont: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Actor and critic losses on an imagined trajectory.

        inputs (H, N, I): actor/critic inputs of s_0..s_{H-1}; actions (H, N, latents*classes): a_t taken at s_t;
        rewards[term] (H, N): the term's reward of each state; cont (H, N): continue probability of each state
        (cont[0] from the data). Returns (actor loss, critic loss per term, metrics).
        """
        horizon, starts = cont.shape
        if inputs.shape[:2] != (horizon, starts) or actions.shape != (horizon, starts, self.action_dim):
            raise ValueError(
                f"actor-critic losses: inputs (H, N, I) and actions (H, N, {self.action_dim}) must match cont (H, N) "
                f"= {(horizon, starts)}; got {tuple(inputs.shape)} and {tuple(actions.shape)}"
            )
        if any(tuple(rewards[term].shape) != (horizon, starts) for term in self.reward_weights):
            raise ValueError(f"actor-critic losses: every reward term must be (H, N) = {(horizon, starts)}")
        cfg = self.config
        discount = cfg["discount"]
        # w_t = c_0 prod_{k=1..t} gamma c_k (DreamerV3): the discounted probability that s_t is still in the
        # episode; c_0 comes from the data, so a terminal start state carries no weight.
        weight = torch.cumprod(torch.cat([cont[:1], discount * cont[1:]], 0), 0).detach()[:-1]
        metrics: dict[str, Tensor] = {}
        advantage = torch.zeros_like(weight)
        weighted_returns: dict[str, Tensor] = {}
        returns = {}
        value_dists = {}
        for term, term_weight in self.reward_weights.items():
            value_dists[term] = self.value(term, inputs.detach())  # one critic pass: targets and loss share it
            value = value_dists[term].mean().detach()  # (H, N)
            ret = lambda_returns(rewards[term], cont, value, discount, cfg["return_lambda"]).detach()
            returns[term] = ret
            term_adv = ret - value[:-1].detach()
            if cfg["return_norm"] == "percentile":
                normalizer = self.normalizers[term]
                normalizer.update(ret)
                term_adv = term_adv / normalizer.scale()
                metrics[f"{term}_return_scale"] = normalizer.scale().detach()
            advantage = advantage + term_weight * term_adv
            weighted_returns[term] = (term_weight * ret.mean()).abs().detach()
            metrics[f"{term}_adv"] = term_adv.mean().detach()
            metrics[f"{term}_return"] = ret.mean().detach()
            metrics[f"imag_{term}_reward"] = rewards[term][1:].mean().detach()
        if cfg["advantage_combine"] == "weighted_mean":
            advantage = advantage / sum(self.reward_weights.values())
        total = sum(weighted_returns.values()) + 1e-8
        metrics.update({f"{term}_return_share": value / total for term, value in weighted_returns.items()})
        dist = self.policy(inputs[:-1])
        latents, classes = self.action_shape
        log_prob = dist.log_prob(actions[:-1].unflatten(-1, (latents, classes))).mean(-1)  # (H-1, N)
        entropy = dist.entropy().mean(-1)
        actor_loss = -(weight * (log_prob * advantage.detach() + cfg["entropy"] * entropy)).mean()
        metrics.update(final_adv=advantage.mean().detach(), actor_entropy=entropy.mean().detach())
        critic_losses = {}
        for term, ret in returns.items():
            dist_v = TwoHot(value_dists[term].logits[:-1])
            slow_target = self.value(term, inputs[:-1].detach(), slow=True).mean().detach()
            loss = -dist_v.log_prob(ret) - cfg["slow_critic_weight"] * dist_v.log_prob(slow_target)
            critic_losses[term] = (weight * loss).mean()
            metrics[f"value_{term}"] = dist_v.mean().mean().detach()
        return actor_loss, critic_losses, metrics
