"""The agent's formulas against hand-computed values, and the hierarchy's data flow between levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import config_composer, random_batch
from hieros.agent.actor_critic import ActorCritic, lambda_returns
from hieros.agent.hierarchy import Hierarchy
from hieros.agent.reward_weights import level_reward_weights
from hieros.agent.subgoal import SubgoalAutoencoder, subgoal_reward

compose_config = config_composer("model=tiny", "env=gym")  # fixture registry: conftest.py


# ------------------------------------------------------------------ formulas
def test_lambda_returns_use_next_state_reward_and_continue():
    reward = torch.tensor([[9.0], [1.0], [2.0], [3.0]])  # reward[0] belongs to s_0 and must be ignored
    cont = torch.tensor([[0.0], [1.0], [0.5], [1.0]])  # cont[0] likewise
    value = torch.tensor([[7.0], [4.0], [5.0], [6.0]])
    gamma, lam = 0.9, 0.8
    r3 = 6.0
    r2 = 3.0 + gamma * 1.0 * ((1 - lam) * 6.0 + lam * r3)
    r1 = 2.0 + gamma * 0.5 * ((1 - lam) * 5.0 + lam * r2)
    r0 = 1.0 + gamma * 1.0 * ((1 - lam) * 4.0 + lam * r1)
    expected = torch.tensor([[r0], [r1], [r2]])
    torch.testing.assert_close(lambda_returns(reward, cont, value, gamma, lam), expected)


def test_lambda_one_is_discounted_monte_carlo_with_bootstrap():
    reward = torch.tensor([[0.0], [1.0], [1.0]])
    cont = torch.ones(3, 1)
    value = torch.tensor([[0.0], [0.0], [10.0]])
    out = lambda_returns(reward, cont, value, 0.5, 1.0)
    torch.testing.assert_close(out, torch.tensor([[1.0 + 0.5 * (1.0 + 0.5 * 10.0)], [1.0 + 0.5 * 10.0]]))


def test_subgoal_reward_is_directors_cosine_max():
    goal = torch.tensor([3.0, 4.0])  # |g| = 5
    h = torch.tensor([1.0, 0.0])  # |h| = 1
    assert subgoal_reward(goal, h).item() == pytest.approx(3.0 / 25.0, rel=1e-6)
    assert subgoal_reward(goal, goal).item() == pytest.approx(1.0, rel=1e-6)
    assert subgoal_reward(goal, -goal).item() == pytest.approx(-1.0, rel=1e-6)
    # the original clamps at 0 and symlogs, on symlog(h)
    assert subgoal_reward(goal, -goal, "original").item() == 0.0
    s = torch.sign(h) * torch.log1p(h.abs())
    expected = math.log1p((goal @ s).item() / max(5.0, s.norm().item()) ** 2)
    assert subgoal_reward(goal, h, "original").item() == pytest.approx(expected, rel=1e-6)


def test_novelty_variants_measure_the_reconstruction_error_in_h_space():
    cfg = compose_config()
    autoencoder = SubgoalAutoencoder(6, OmegaConf.to_container(cfg, resolve=True)["agent"]["subgoal_autoencoder"])
    h = torch.randn(5, 6)
    error = h - autoencoder.decode(autoencoder.encode(h, sample=False))
    torch.testing.assert_close(autoencoder.novelty(h, "l2"), error.norm(dim=-1))
    mse = error.pow(2).mean(-1)
    torch.testing.assert_close(autoencoder.novelty(h), torch.sign(mse) * torch.log1p(mse.abs()))  # default


def test_default_novelty_does_not_grow_with_the_state_size():
    """Eq. 2's L2 norm grows with sqrt(D) (issue 13: it swamped the task reward); symlog_mse does not."""
    ae_cfg = OmegaConf.to_container(compose_config(), resolve=True)["agent"]["subgoal_autoencoder"]
    torch.manual_seed(0)
    small, large = SubgoalAutoencoder(64, ae_cfg), SubgoalAutoencoder(1024, ae_cfg)
    h_small, h_large = torch.randn(256, 64), torch.randn(256, 1024)
    l2_ratio = large.novelty(h_large, "l2").mean() / small.novelty(h_small, "l2").mean()
    mse_ratio = large.novelty(h_large).mean() / small.novelty(h_small).mean()
    assert l2_ratio > 3.0  # ~sqrt(16)
    assert 0.7 < mse_ratio < 1.4


def test_autoencoder_kl_to_uniform_is_zero_for_uniform_codes():
    cfg = OmegaConf.to_container(compose_config(), resolve=True)["agent"]["subgoal_autoencoder"]
    autoencoder = SubgoalAutoencoder(4, cfg)
    for parameter in autoencoder.encoder.parameters():
        torch.nn.init.zeros_(parameter)
    _, metrics = autoencoder.loss(torch.randn(3, 4))
    assert metrics["kl_loss"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("combine", ["weighted_sum", "weighted_mean"])
def test_combined_advantage_weights_terms_as_eq1(combine):
    cfg = compose_config("agent.actor_critic.return_norm=none", f"agent.actor_critic.advantage_combine={combine}")
    weights = {"extrinsic": 1.0, "subgoal": 0.3, "novelty": 0.1}
    ac = ActorCritic(5, 0, (1, 3), weights, cfg.model, OmegaConf.to_container(cfg.agent.actor_critic, resolve=True))
    horizon, n = 4, 2
    inputs = torch.randn(horizon, n, 5 + 3)
    actions = torch.nn.functional.one_hot(torch.randint(3, (horizon, n)), 3).float()
    rewards = {term: torch.rand(horizon, n) for term in weights}
    cont = torch.ones(horizon, n)
    _, _, metrics = ac.losses(inputs, actions, rewards, cont)
    # critics are zero-initialised: V = 0, so each advantage is the term's lambda-return
    discount, lam = cfg.agent.actor_critic.discount, cfg.agent.actor_critic.return_lambda
    zero = torch.zeros(horizon, n)
    returns = {t: lambda_returns(rewards[t], cont, zero, discount, lam) for t in weights}
    combined = sum(w * returns[t] for t, w in weights.items())
    if combine == "weighted_mean":  # divided by the sum of the weights (original, DreamerV3, Director)
        combined = combined / sum(weights.values())
    assert metrics["final_adv"].item() == pytest.approx(combined.mean().item(), rel=1e-5)
    for term in weights:
        assert metrics[f"{term}_adv"].item() == pytest.approx(returns[term].mean().item(), rel=1e-5)
    shares = {t: abs(w * returns[t].mean().item()) for t, w in weights.items()}
    for term in weights:
        assert metrics[f"{term}_return_share"].item() == pytest.approx(shares[term] / sum(shares.values()), rel=1e-4)


def test_reward_terms_per_level():
    three = compose_config("hierarchy.novelty_levels=all")  # the paper: novelty on every level
    assert level_reward_weights(three, 0) == {"extrinsic": 1.0, "subgoal": 0.3, "novelty": 0.1}
    assert level_reward_weights(three, 1) == {"extrinsic": 1.0, "subgoal": 0.3, "novelty": 0.1}
    assert level_reward_weights(three, 2) == {"extrinsic": 1.0, "novelty": 0.1}  # the top has no subgoal
    default = compose_config()  # the original sweep: no novelty at level 0
    assert level_reward_weights(default, 0) == {"extrinsic": 1.0, "subgoal": 0.3}
    assert level_reward_weights(default, 1) == {"extrinsic": 1.0, "subgoal": 0.3, "novelty": 0.1}
    assert level_reward_weights(compose_config("hierarchy.layers=1"), 0) == {"extrinsic": 1.0}


# ------------------------------------------------------------------ hierarchy
class ScriptedEpisodes:
    """Vector observations with episode ends at chosen steps (DreamerV3 flags), reward = step index."""

    def __init__(self, ends: set[int], terminal: set[int]) -> None:
        self.ends, self.terminal = ends, terminal

    def obs(self, t: int, first: bool) -> dict[str, np.ndarray]:
        return {
            "vector": np.full((1, 4), t, np.float32),
            "reward": np.array([0.0 if first else float(t)], np.float32),
            "is_first": np.array([first]),
            "is_last": np.array([t in self.ends]),
            "is_terminal": np.array([t in self.terminal]),
        }


def run_scripted(hierarchy: Hierarchy, steps: int, ends: set[int], terminal: set[int]):
    script = ScriptedEpisodes(ends, terminal)
    acting = hierarchy.initial_acting_state(1, torch.device("cpu"))
    rows_per_level = [[] for _ in hierarchy.levels]
    goals = []
    first = True
    for t in range(steps):
        obs = script.obs(t, first)
        _, rows, acting = hierarchy.act(obs, acting, "sampled")
        for level, row in enumerate(rows):
            if row is not None:
                rows_per_level[level].append((t, row))
        goals.append(acting.levels[0].goal_code.clone())
        first = bool(obs["is_last"][0])
    return rows_per_level, goals


def test_levels_observe_every_k_pow_i_steps_and_at_episode_ends(registry):
    cfg = compose_config("hierarchy.layers=3", "hierarchy.k=2")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    # episode 1: steps 0..10 (is_last at 10, terminal); episode 2 starts at 11 (is_first)
    rows, _ = run_scripted(hierarchy, 20, ends={10}, terminal={10})
    level_steps = [[t for t, _ in level_rows] for level_rows in rows]
    assert level_steps[0] == list(range(20))
    assert level_steps[1] == [0, 2, 4, 6, 8, 10, 11, 13, 15, 17, 19]
    assert level_steps[2] == [0, 4, 8, 10, 11, 15, 19]
    for level_rows in rows:
        by_step = dict(level_rows)
        assert bool(by_step[10]["is_last"][0]) and bool(by_step[10]["is_terminal"][0])
        assert bool(by_step[11]["is_first"][0]) and bool(by_step[0]["is_first"][0])
        assert not any(bool(row["is_first"][0]) for t, row in level_rows if t not in (0, 11))


def test_higher_level_reward_sums_its_interval_and_keeps_the_terminal_reward(registry):
    cfg = compose_config("hierarchy.layers=2", "hierarchy.k=4")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    rows, _ = run_scripted(hierarchy, 12, ends={6}, terminal={6})
    level1 = {t: float(row["reward"][0]) for t, row in rows[1]}
    # rewards are t on non-first steps; episode 1 = steps 0..6, episode 2 starts at 7
    assert level1[0] == 0.0
    assert level1[4] == 1 + 2 + 3 + 4
    assert level1[6] == 5 + 6  # the episode end inside the interval still reaches level 1 with its reward
    assert level1[7] == 0.0
    assert level1[11] == 8 + 9 + 10 + 11


def test_mean_aggregation_divides_by_the_interval(registry):
    cfg = compose_config("hierarchy.layers=2", "hierarchy.k=4", "hierarchy.extrinsic_aggregation=mean")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    rows, _ = run_scripted(hierarchy, 5, ends=set(), terminal=set())
    assert float(dict(rows[1])[4]["reward"][0]) == pytest.approx((1 + 2 + 3 + 4) / 4)


def test_subgoal_is_held_between_the_higher_levels_actions(registry):
    cfg = compose_config("hierarchy.layers=2", "hierarchy.k=4")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    rows, goals = run_scripted(hierarchy, 12, ends=set(), terminal=set())
    for t in range(12):
        block_start = t - t % 4
        torch.testing.assert_close(goals[t], goals[block_start])
    level1_actions = {t: row["action"] for t, row in rows[1]}
    level0_goals = {t: row["goal_code"] for t, row in rows[0]}
    for t in range(12):
        np.testing.assert_array_equal(level0_goals[t].reshape(-1), level1_actions[t - t % 4].reshape(-1))


def test_k_states_observation_stacks_the_lower_latents(registry):
    cfg = compose_config("hierarchy.layers=2", "hierarchy.k=4")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    feature_dim = hierarchy.levels[0].world_model.dynamics.feature_dim
    rows, _ = run_scripted(hierarchy, 9, ends=set(), terminal=set())
    level1 = dict(rows[1])
    first = level1[0]["vector"].reshape(4, feature_dim)
    assert np.all(first[:3] == 0) and np.any(first[3] != 0)  # before the episode start: zeros
    assert np.all(np.any(level1[8]["vector"].reshape(4, feature_dim) != 0, axis=1))
    kth = compose_config("hierarchy.layers=2", "hierarchy.higher_obs=kth_state")
    hierarchy = Hierarchy(OmegaConf.to_container(kth, resolve=True), registry, {"vector": (4,)}, 2)
    assert hierarchy.replay_specs()[1]["vector"][0] == (feature_dim,)


def test_episode_start_clears_the_higher_levels_window(registry):
    cfg = compose_config("hierarchy.layers=2", "hierarchy.k=4")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    feature_dim = hierarchy.levels[0].world_model.dynamics.feature_dim
    rows, _ = run_scripted(hierarchy, 8, ends={5}, terminal=set())
    start = dict(rows[1])[6]["vector"].reshape(4, feature_dim)
    assert np.all(start[:3] == 0)


def test_greedy_subgoals_are_hard_one_hot(registry):
    cfg = compose_config("hierarchy.layers=2")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    acting = hierarchy.initial_acting_state(1, torch.device("cpu"))
    _, _, acting = hierarchy.act(ScriptedEpisodes(set(), set()).obs(0, True), acting, "greedy")
    code = acting.levels[0].goal_code
    assert set(code.unique().tolist()) <= {0.0, 1.0} and torch.all(code.sum(-1) == 1)


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_every_depth_trains_each_level(registry, layers, tmp_path):
    from lightning.fabric import Fabric

    cfg = compose_config(
        f"hierarchy.layers={layers}",
        "hierarchy.k=2",
        "training.batch_length=8",
        "training.batch_size=4",
        "training.min_windows=4",
    )
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    rng = np.random.default_rng(0)
    for level in hierarchy.levels:
        batch = random_batch(hierarchy, level.level, rng, batch=4)
        before = [p.detach().clone() for p in level.parameters()]
        metrics, _, _ = level.train_step(batch, level.make_optimizers(), fabric)
        assert all(np.isfinite(float(v)) for v in metrics.values())
        changed = sum(not torch.equal(a, b) for a, b in zip(before, level.parameters()))
        assert changed > 0


# ------------------------------------------------------------ shared world model (G.8)
def shared_hierarchy(registry, layers: int = 3, k: int = 2) -> Hierarchy:
    cfg = compose_config(f"hierarchy.layers={layers}", f"hierarchy.k={k}", "hierarchy.shared_world_model=true")
    return Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)


def test_shared_world_model_levels_act_on_level0_latents_and_store_nothing(registry):
    hierarchy = shared_hierarchy(registry)
    assert hierarchy.replay_specs()[1:] == [None, None]
    assert all(level.world_model is hierarchy.levels[0].world_model for level in hierarchy.levels)
    assert "world_model" not in hierarchy.levels[1].make_optimizers()
    rows, goals = run_scripted(hierarchy, 6, ends=set(), terminal=set())
    assert len(rows[0]) == 6 and rows[1] == [] and rows[2] == []
    torch.testing.assert_close(goals[0], goals[1])  # k = 2: level 1's subgoal is held for two steps


def test_shared_subsampling_sums_rewards_and_multiplies_continues_over_each_interval(registry):
    hierarchy = shared_hierarchy(registry, layers=2, k=2)
    level = hierarchy.levels[1]
    n, horizon = 3, 8
    reward = torch.arange(horizon, dtype=torch.float32).unsqueeze(1).expand(horizon, n)
    cont = torch.full((horizon, n), 0.5)
    deter = torch.randn(horizon, n, level.world_model.dynamics.deter_dim)
    feature_dim = hierarchy.levels[0].world_model.dynamics.feature_dim
    decisions = [(torch.randn(n, feature_dim + 3), torch.zeros(n, 64), None) for _ in range(horizon // 2)]
    trajectory = {"reward": reward, "cont": cont, "deter": deter, "decisions": [[], decisions]}
    inputs, actions, rewards, interval_cont = hierarchy._subsample(1, trajectory, torch.ones(n))
    assert inputs.shape[0] == 4
    # decision j at t = 2j; its interval is t = 2j-1, 2j
    torch.testing.assert_close(rewards["extrinsic"][1:, 0], torch.tensor([1.0 + 2, 3.0 + 4, 5.0 + 6]))
    torch.testing.assert_close(interval_cont[1:, 0], torch.full((3,), 0.25))
    assert interval_cont[0, 0] == 1.0
    torch.testing.assert_close(rewards["novelty"], level.autoencoder.novelty(deter[::2]))


def test_shared_world_model_trains_the_higher_levels(registry):
    from lightning.fabric import Fabric

    hierarchy = shared_hierarchy(registry, layers=3, k=2)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    start = {key: value.detach() for key, value in hierarchy.levels[0].world_model.dynamics.initial(32).items()}
    optimizers = [level.make_optimizers() for level in hierarchy.levels]
    before = [p.detach().clone() for p in hierarchy.levels[2].actor_critic.actor.parameters()]
    metrics = hierarchy.train_shared_levels(start, torch.ones(32), 4, optimizers, fabric)
    assert sorted(metrics) == [1, 2]  # update 4 is due for k^1 = 2 and k^2 = 4
    assert all(np.isfinite(float(v)) for level_metrics in metrics.values() for v in level_metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, hierarchy.levels[2].actor_critic.actor.parameters()))
    assert sorted(hierarchy.train_shared_levels(start, torch.ones(32), 2, optimizers, fabric)) == [1]


# ------------------------------------------------------ acting state (issue 13)
@pytest.mark.parametrize("context", ["window", "episode"])
def test_window_acting_reads_the_state_a_training_window_ending_there_computes(registry, context):
    """acting_context=window: at every step, also far past batch_length into an episode, the state the actor reads
    equals the one the world model computes on the replay window of the last T rows (first step forced is_first),
    as in training. ``episode`` (the original) matches only while the episode is shorter than the window."""
    length = 8
    cfg = compose_config(
        "hierarchy.layers=1",
        f"sequence_model.acting_context={context}",
        f"training.batch_length={length}",
        "agent.world_model.stochastic=false",  # deterministic latents: states comparable exactly
    )
    torch.manual_seed(0)
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    wm = hierarchy.levels[0].world_model
    acting = hierarchy.initial_acting_state(1, torch.device("cpu"))
    rows, deters, first = [], [], True
    for t in range(30):  # one episode: steps 0..29, no end
        obs = {
            "vector": np.random.default_rng(t).normal(size=(1, 4)).astype(np.float32),
            "reward": np.zeros(1, np.float32),
            "is_first": np.array([first]),
            "is_last": np.array([False]),
            "is_terminal": np.array([False]),
        }
        first = False
        _, step_rows, acting = hierarchy.act(obs, acting, "sampled")
        rows.append(step_rows[0])
        deters.append(acting.levels[0].latent["deter"][0].clone())
    gaps = []
    for t in range(30):
        window = rows[max(0, t - length + 1) : t + 1]
        batch = {key: torch.as_tensor(np.concatenate([row[key] for row in window]))[None] for key in window[0]}
        batch["is_first"][:, 0] = True  # as the replay forces on every sampled window
        with torch.no_grad():
            post, _ = wm.dynamics.observe(
                wm.encode(batch), wm.previous_actions(batch["action"], batch["is_first"]), batch["is_first"]
            )
        gaps.append((deters[t] - post["deter"][0, -1]).abs().max().item())
    assert max(gaps[:length]) < 1e-4  # inside the first window both start at the episode start
    if context == "window":
        assert max(gaps) < 1e-4
    else:
        assert max(gaps[length:]) > 1e-3  # the episode-long state differs from every training window's


def test_goal_schedule_follows_the_data_within_the_episode_or_holds():
    from hieros.agent.subactor import goal_schedule

    batch, length, horizon = 2, 6, 4
    goal_code = torch.arange(batch * length, dtype=torch.float32).reshape(batch, length, 1, 1)  # code = b*T + t
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 4] = True  # window 1: a new episode starts at t = 4
    starts = torch.tensor([0, 3, 5, length + 2, length + 5])
    data = goal_schedule(goal_code, is_first, starts, horizon, hold=False)[..., 0, 0]  # (H, N)
    expected = torch.tensor(
        [
            [0, 1, 2, 3],  # follows the data
            [3, 4, 5, 5],  # held at the window's end
            [5, 5, 5, 5],
            [8, 9, 9, 9],  # held at the end of its episode (t = 3), not the next episode's code
            [11, 11, 11, 11],
        ],
        dtype=torch.float32,
    ).T
    torch.testing.assert_close(data, expected)
    hold = goal_schedule(goal_code, is_first, starts, horizon, hold=True)[..., 0, 0]
    torch.testing.assert_close(hold, goal_code[..., 0, 0].flatten()[starts].expand(horizon, -1))


def test_percentile_normalizer_takes_the_first_percentiles_then_an_ema():
    from hieros.agent.actor_critic import PercentileNormalizer

    normalizer = PercentileNormalizer(decay=0.9)
    first, second = torch.linspace(0.0, 10.0, 101), torch.linspace(-5.0, 25.0, 101)
    normalizer.update(first)
    assert normalizer.lo.item() == pytest.approx(0.5) and normalizer.hi.item() == pytest.approx(9.5)
    normalizer.update(second)
    assert normalizer.lo.item() == pytest.approx(0.9 * 0.5 + 0.1 * -3.5, rel=1e-5)
    assert normalizer.hi.item() == pytest.approx(0.9 * 9.5 + 0.1 * 23.5, rel=1e-5)
    assert normalizer.scale().item() == pytest.approx(normalizer.hi.item() - normalizer.lo.item())
    normalizer.lo.fill_(0.0), normalizer.hi.fill_(0.5)
    assert normalizer.scale().item() == 1.0  # max(1, P95 - P5)


def test_act_returns_the_next_acting_state_and_leaves_the_given_one(registry):
    cfg = compose_config("hierarchy.layers=2", "hierarchy.k=2")
    hierarchy = Hierarchy(OmegaConf.to_container(cfg, resolve=True), registry, {"vector": (4,)}, 2)
    start = hierarchy.initial_acting_state(1, torch.device("cpu"))
    before = start.clone()
    _, _, after = hierarchy.act(ScriptedEpisodes(set(), set()).obs(0, True), start, "sampled")
    assert after is not start and int(after.episode_step) == 1 and int(start.episode_step) == 0
    for old, kept in zip(before.levels, start.levels):  # nothing of the given state was written to
        for key in old.latent:
            assert torch.equal(old.latent[key], kept.latent[key])
        assert torch.equal(old.prev_action, kept.prev_action)
    assert not torch.equal(after.levels[0].latent["deter"], start.levels[0].latent["deter"])
    assert after.levels[0].prev_action.sum() == 1  # level 0 chose an action
