"""Learning regression test: the real agent must learn the bandit chain in well under a minute on a CPU.

The depth-1 agent (``model=tiny``, S5 world model) trains through the real loop (:func:`hieros.training.loop.train`)
on the ``chain`` env (``src/hieros/envs/chain.py``): 20-step episodes ending in a truncation, reward 1 for action 1
and 0 for action 0; the observation is [t / 20, one-hot of the previous action]. The final checkpoint is loaded into a
fresh agent and checked for what the task teaches, one test per learned piece:

* the policy takes the rewarded action (fails with the actor loss's sign flipped, and with the reward the actor-critic
  imagines zeroed or negated);
* the world model, stepping its prior from real posterior states, predicts reward ~1 after action 1 and ~0 after
  action 0 (fails without the reward loss, with the reward head's output zeroed, and with the action zeroed in the
  dynamics' input: in imagination nothing but that input tells the model which action was taken);
* the critic values an episode's start state at the discounted return of the learned policy, rate / (1 - gamma)
  ~ 10 (the agent sees a truncated task as endless); gamma = 0.9 gives an effective horizon of 10 steps, inside the
  16-step imagination, and a bootstrapped share of 0.9^15 ~ 0.2, so a critic trained towards zeros (value 0) or
  towards the immediate reward (value ~1) fails by far;
* the returns of the last training episodes beat a random policy's (10).

The overrides below only make learning fast enough for the budget (~170 updates): higher learning rates (world model
6e-3, critic 1e-2, actor 3e-4: a faster actor drifts to either action by chance before the reward model has learned
which one pays), a faster slow critic (0.1 per update), percentile return scaling, 64 imagination starts and a
10-update warm-up. The previous action in the observation is what lets the world model learn the reward within the
budget: without it the tiny S5 model (then 8x8 latents), whose state integrates its inputs slowly, took ~450 updates
(lr 1e-3) to let the reward depend on the action; with it the posterior encodes the action at once and the prior
learns to predict it from the action input (~70 updates). Measured on 2 shared CPU cores (``pytest
tests/test_learning_regression.py``): ~30-45 s including composition; seeds 0, 1 and 2 all give greedy return 20 /
20, p(rewarded action) 0.99, predicted reward 1.00 / 0.00 and start-state values 85-92 % of the target (see the
asserts for the margins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from hieros.agent.hierarchy import Hierarchy
from hieros.config import validate
from hieros.envs.vector import make_vector_env
from hieros.registry import Registry
from hieros.training.checkpoint import CheckpointDir
from hieros.training.loop import train
from hieros.training.threads import torch_threads

SEED = 0  # seeds 0, 1 and 2 were checked to pass with the margins below
LENGTH, ACTIONS, REWARDED = 20, 2, 1
DISCOUNT, HORIZON = 0.9, 16
OVERRIDES = [
    f"seed={SEED}",
    "env=chain",
    f"env.length={LENGTH}",
    f"env.actions={ACTIONS}",
    f"env.rewarded_action={REWARDED}",
    "env.terminal=false",
    "env.observe_action=true",
    "model=tiny",
    "sequence_model=s5",
    "hierarchy.layers=1",
    "fabric=cpu",
    "logger=none",
    "training.steps=800",  # agent steps summed over the 4 envs: 200 policy calls
    "training.num_envs=4",
    "training.train_ratio=64",  # 64 / (8 x 32) = 0.25 updates per agent step: ~170 updates
    "training.batch_size=8",
    "training.batch_length=32",
    "training.min_windows=8",
    "training.replay_capacity=5000",
    "training.log_every=200",
    "training.eval_every=0",
    "training.final_eval_episodes=8",
    "training.eval_num_envs=4",
    "training.eval_modes=[sampled,greedy]",
    "training.checkpoint_every=0",  # the loop still writes the final checkpoint, which the tests load
    "training.torch_threads=1",
    "training.progress=plain",
    "agent.world_model.lr=6e-3",
    "agent.world_model.warmup_steps=10",
    f"agent.actor_critic.discount={DISCOUNT}",
    f"agent.actor_critic.imag_horizon={HORIZON}",
    "agent.actor_critic.imag_starts=64",
    "agent.actor_critic.actor_lr=3e-4",
    "agent.actor_critic.critic_lr=1e-2",
    "agent.actor_critic.slow_critic_fraction=0.1",
    "agent.actor_critic.return_norm=percentile",
]
PROBE_ENVS = 8  # episodes of the sampled policy the learned quantities are measured on


def _compose():
    with initialize_config_module("hieros.conf", version_base="1.3"):
        return compose("config", overrides=OVERRIDES)


@torch.no_grad()
def _probe(agent: Hierarchy, cfg, registry: Registry) -> dict[str, np.ndarray]:
    """One episode per probe env with the sampled policy. Per step t = 0..LENGTH-1 and env, from the posterior state
    the actor read: the policy's probability of the rewarded action, the critic's value, the world model's predicted
    reward one prior step ahead after each action, and the reward the env paid."""
    level = agent.levels[0]
    wm, ac = level.world_model, level.actor_critic
    envs = make_vector_env(registry, cfg.env, PROBE_ENVS, seed=SEED + 500)
    try:
        acting = agent.initial_acting_state(PROBE_ENVS, torch.device("cpu"))
        obs = envs.reset(seed=SEED + 500)
        torch.manual_seed(SEED)
        steps: dict[str, list] = {"prob": [], "value": [], "predicted": [], "reward": [], "first": []}
        for _ in range(LENGTH):
            actions, _, acting = agent.act(obs, acting, "sampled")
            state = acting.levels[0].latent
            inputs = level.policy_inputs(state, None)
            steps["prob"].append(ac.policy(inputs).probs[:, 0, REWARDED])
            steps["value"].append(ac.value("extrinsic", inputs).mean())
            context = wm.dynamics.rollout_context()
            predicted = []
            for action in range(ACTIONS):
                onehot = torch.nn.functional.one_hot(torch.full((PROBE_ENVS,), action), ACTIONS).float()
                following = wm.dynamics.img_step(state, onehot, sample=False, context=context)
                predicted.append(wm.reward(wm.features(following)).mean())
            steps["predicted"].append(torch.stack(predicted, -1))
            steps["first"].append(torch.as_tensor(obs["is_first"]))
            obs = envs.step(actions)
            steps["reward"].append(torch.as_tensor(obs["reward"]))
        assert obs["is_last"].all()  # exactly one whole episode per env
    finally:
        envs.close()
    return {key: torch.stack(value).numpy() for key, value in steps.items()}  # (LENGTH, PROBE_ENVS, ...)


def train_and_probe(root: Path) -> dict:
    """Train in ``root / "run"`` through the real loop, load the final checkpoint into a fresh agent, probe it."""
    cfg = _compose()
    registry = Registry.default()
    validate(cfg, registry)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HIEROS_HOME", str(root / "home"))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        scores = train(cfg, registry, root / "run")
    latest = CheckpointDir(Path(root / "run" / "checkpoints")).load_latest()
    assert latest is not None and latest.payload["counters"]["step"] == cfg.training.steps
    config = latest.payload["config"]
    agent = Hierarchy(config, registry, {"vector": (1 + ACTIONS,)}, ACTIONS)
    agent.load_state_dict(latest.payload["agent"])
    agent.eval()
    with torch_threads(1):
        probe = _probe(agent, cfg, registry)
    assert probe["first"][0].all() and not probe["first"][1:].any()
    return {"scores": scores, "probe": probe, "updates": scores["updates"][0]}


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> dict:
    return train_and_probe(tmp_path_factory.mktemp("learning"))


def test_the_policy_takes_the_rewarded_action(learned):
    """Actor: the greedy policy of the loop's final evaluation and the sampled policy at the states it visits pick
    the rewarded action (measured: greedy 20 / 20 and p = 0.99; a flipped actor loss gives ~0)."""
    greedy = learned["scores"]["final_eval"]["greedy"]["mean"]
    prob = float(learned["probe"]["prob"].mean())
    assert greedy >= 0.8 * LENGTH and prob >= 0.8, (
        f"greedy evaluation return {greedy} of {LENGTH}, p(rewarded action) {prob:.3f} "
        f"after {learned['updates']} updates"
    )


def test_the_world_model_predicts_the_reward_of_each_action(learned):
    """Reward head and action input: one prior step from the posterior states of real episodes predicts reward ~1
    after the rewarded action and ~0 after the other (measured: 1.00 / 0.00)."""
    predicted = learned["probe"]["predicted"]  # (LENGTH, PROBE_ENVS, ACTIONS)
    rewarded, other = float(predicted[..., REWARDED].mean()), float(predicted[..., 1 - REWARDED].mean())
    message = f"predicted reward after the rewarded action {rewarded:.3f}, after the other {other:.3f}"
    assert rewarded - other > 0.5, message
    assert abs(rewarded - 1.0) < 0.3 and abs(other) < 0.3, message


def test_the_critic_values_the_discounted_return_of_the_policy(learned):
    """Critic target: the value of the episodes' start states approaches rate / (1 - gamma), the discounted return
    of the sampled policy in the task as the agent sees it (truncation: continue 1 throughout). Measured 85-92 % of
    it (still converging); a critic trained towards zeros gives 0 %, towards the immediate reward ~10 %."""
    probe = learned["probe"]
    rate = float(probe["reward"].mean())  # reward per step of the sampled policy in these episodes
    target = rate / (1.0 - DISCOUNT)
    start_value = float(probe["value"][0].mean())
    assert 0.6 * target <= start_value <= 1.25 * target, (
        f"start-state value {start_value:.2f}, discounted return of the policy {target:.2f} (reward rate {rate:.3f}); "
        f"values over the episode {np.round(probe['value'].mean(1), 2).tolist()}"
    )


def test_training_returns_beat_a_random_policy(learned):
    """The loop's own record: the mean return of the last 10 % of training episodes (random policy: 10)."""
    tail = learned["scores"]["train_return_last10pct"]
    assert tail is not None and tail >= 0.75 * LENGTH, f"training return over the last 10% of steps: {tail}"
