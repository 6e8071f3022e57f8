"""Plain helpers that several test modules import by name (``from helpers import ...``).

pytest's default ``prepend`` import mode puts this folder (no ``__init__.py``) first on ``sys.path`` when it imports the
test modules next to it, so ``helpers`` resolves to this file. Shared fixtures are in ``conftest.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from hieros.agent.hierarchy import Hierarchy

if TYPE_CHECKING:
    from omegaconf import DictConfig


# A tiny CartPole run with two levels (k = 2) and a checkpoint every 40 steps: the command-line and in-process tests
# of checkpoints, resumes and adverse inputs share it (add training.steps and logger settings per test).
TINY_TWO_LEVEL_RUN = [
    "model=tiny",
    "env=gym",
    "fabric=cpu",
    "hierarchy.layers=2",
    "hierarchy.k=2",
    "training.batch_size=4",
    "training.batch_length=16",
    "training.min_windows=4",
    "training.train_ratio=4",
    "training.replay_capacity=1000",
    "training.log_every=10",
    "training.eval_every=0",
    "training.final_eval_episodes=1",
    "training.eval_modes=[greedy]",
    "training.checkpoint_every=40",
    "training.torch_threads=1",
]


# A run of a few seconds: CartPole, one level, the tiny smoke model, checkpoints at 20 and 40, one final episode, no
# periodic evaluation or media (MLflow and sweep tests; add their own logger settings).
TINY_ONE_LEVEL_RUN = [
    "+experiment=smoke",
    "env=gym",
    "env.id=CartPole-v1",
    "hierarchy.layers=1",
    "training.steps=40",
    "training.log_every=20",
    "training.checkpoint_every=20",
    "training.eval_every=0",
    "training.final_eval_episodes=1",
    "training.eval_modes=[greedy]",
    "training.torch_threads=1",
    "logger.media_every=0",
    "logger.sync_seconds=2",
]


def _compose(*overrides: str) -> DictConfig:
    """The ``hieros.conf`` config with Hydra ``overrides``; inside an already initialised Hydra it composes there."""
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides))
    with initialize_config_module(version_base="1.3", config_module="hieros.conf"):
        return compose("config", overrides=list(overrides))


def config_composer(*base: str, cache: bool = False) -> Callable[..., DictConfig]:
    """``compose_config(*overrides)``: the ``hieros.conf`` config with the overrides ``base`` and then ``overrides``.

    ``cache``: memoised on the overrides, one cache per call of this function (per test module); a repeated call
    returns the same config object, so callers must not change it.
    """

    def compose_config(*overrides: str) -> DictConfig:
        return _compose(*base, *overrides)

    return functools.cache(compose_config) if cache else compose_config


def random_batch(agent: Hierarchy, index: int, rng: np.random.Generator, batch: int = 2) -> dict[str, torch.Tensor]:
    """A training batch of ``batch`` windows of 8 steps for level ``index`` of ``agent``, as tensors on the CPU: every
    field of the level's replay spec filled from ``rng`` (one-hot goal codes, False flags, normal values otherwise),
    ``is_first`` set on each window's first step."""
    data = {}
    for key, (shape, dtype) in agent.replay_specs()[index].items():
        if key == "goal_code":
            value = np.eye(shape[-1], dtype=np.uint8)[rng.integers(shape[-1], size=(batch, 8, shape[0]))]
        elif dtype == np.dtype(bool):
            value = np.zeros((batch, 8), bool)
        else:
            value = rng.normal(size=(batch, 8, *shape)).astype(dtype)
        data[key] = value
    data["is_first"][:, 0] = True
    return Hierarchy.to_tensors(data, torch.device("cpu"))
