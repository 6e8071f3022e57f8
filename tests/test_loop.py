"""Pieces of the training loop: metric means between reports and step cadences."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from hieros.training.loop import MetricMeans, crossed


def test_metric_means_equal_nanmean_per_key():
    rng = np.random.default_rng(0)
    means = MetricMeans()
    values: dict[str, list[float]] = {}
    for update in range(7):
        metrics = {"loss": rng.normal(), "norm": float("nan") if update % 3 == 0 else rng.normal()}
        for key, value in metrics.items():
            values.setdefault(f"train/{key}", []).append(value)
        means.add({key: torch.tensor(value) for key, value in metrics.items()}, prefix="train/")
    means.add({"episode/score": 3.0})
    means.add({"episode/score": 5.0, "episode/length": 10})
    result = means.pop()
    assert result["train/loss"] == pytest.approx(np.mean(values["train/loss"]), rel=1e-6)
    assert result["train/norm"] == pytest.approx(np.nanmean(values["train/norm"]), rel=1e-6)
    assert result["episode/score"] == 4.0 and result["episode/length"] == 10.0
    means.add({"only_nan": float("nan")})
    assert means.pop() == {}  # a metric with no finite value is not reported; pop clears


def test_cadence_fires_once_per_multiple_crossed():
    assert [step for step in range(1, 31) if crossed(step - 1, step, 10)] == [10, 20, 30]
    assert [step for step in range(4, 41, 4) if crossed(step - 4, step, 10)] == [12, 20, 32, 40]  # 4 envs per step
    assert not any(crossed(step - 1, step, 0) for step in range(1, 50))


def test_the_loop_does_not_mention_levels():
    """Issue 14: what learns when, and what each level stores, belongs to the agent, its learner and its replays."""
    import hieros.training.loop as loop

    source = inspect.getsource(loop).lower()
    assert "level" not in source
