"""The learner's schedule (spec 5.1): level 0 learns on every call, level i on every k^i-th level-0 update once its
replay holds enough windows, each owned world model warms its learning rate up over its own updates, and a shared
world model trains the higher levels in level 0's imagination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.fabric import Fabric
from omegaconf import OmegaConf

from helpers import random_batch
from hieros.agent.hierarchy import Hierarchy
from hieros.agent.learner import Learner
from hieros.registry import Registry


def make_learner(*overrides: str, warmup: int = 4) -> Learner:
    with initialize_config_module(version_base="1.3", config_module="hieros.conf"):
        cfg = compose("config", overrides=["model=tiny", "env=gym", "hierarchy.layers=3", "hierarchy.k=2", *overrides])
    agent = Hierarchy(OmegaConf.to_container(cfg, resolve=True), Registry.default(), {"vector": (4,)}, 2)
    return Learner(agent, warmup_steps=warmup)


@pytest.fixture(scope="module")
def fabric() -> Fabric:
    return Fabric(accelerator="cpu", devices=1, precision="32-true")


def test_levels_learn_every_k_to_the_i_updates_once_their_replay_is_ready(fabric):
    torch.manual_seed(0)
    learner = make_learner("agent.actor_critic.imag_starts=8", "agent.actor_critic.imag_horizon=3")
    rng = np.random.default_rng(0)
    asked: list[int] = []
    ready = {0: 1, 1: 1, 2: 5}  # level 2's replay has enough windows from the 5th call on

    call = [0]

    def sample(index: int):
        asked.append(index)
        return random_batch(learner.agent, index, rng) if call[0] >= ready[index] else None

    trained = []
    for number in range(1, 9):
        call[0] = number
        trained.append(sorted(learner.train_step(sample, fabric)))
    assert trained[0] == ["train/level0/"]  # update 1: nothing else due
    assert trained[1] == ["train/level0/", "train/level1/"]  # update 2: level 1 due (k = 2)
    assert trained[3] == ["train/level0/", "train/level1/"]  # update 4: level 2 due but its replay is not ready
    assert trained[7] == ["train/level0/", "train/level1/", "train/level2/"]  # update 8: both due and ready
    assert learner.updates == [8, 4, 1]
    assert asked.count(2) == 2  # level 2 is only asked when due (updates 4 and 8)
    # warm-up: each world model's learning rate after n of its own updates is lr * min(1, (n + 1) / 4)
    lr = learner.optimizers[0]["world_model"].defaults["lr"]
    rates = [opts["world_model"].param_groups[0]["lr"] for opts in learner.optimizers]
    assert rates == pytest.approx([lr, lr, lr * 2 / 4])


def test_a_shared_world_model_trains_the_higher_levels_from_level_0s_batch(fabric):
    torch.manual_seed(0)
    learner = make_learner(
        "hierarchy.shared_world_model=true", "agent.actor_critic.imag_starts=16", "agent.actor_critic.imag_horizon=2"
    )
    assert len(learner.schedulers) == 1 and "world_model" not in learner.optimizers[1]
    rng = np.random.default_rng(1)
    asked: list[int] = []

    def sample(index: int):
        asked.append(index)
        return random_batch(learner.agent, index, rng)

    for _ in range(4):
        learner.train_step(sample, fabric)
    assert set(asked) == {0} and learner.updates == [4, 2, 1]
    assert sorted(learner.stateful()) == sorted(
        [f"optimizer/level{i}/{name}" for i, opts in enumerate(learner.optimizers) for name in opts] + ["scheduler/0"]
    )
