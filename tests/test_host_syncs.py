"""The update makes no host syncs (issue 14): nothing in a level's train_step reads a tensor back to Python."""

from __future__ import annotations

import pytest
import torch

from hieros.bench import agent as bench
from hieros.bench._syncs import HostSyncCounter


def test_counter_sees_item_bool_and_nonzero() -> None:
    x = torch.arange(4.0)
    with HostSyncCounter() as syncs:
        x.sum().item()
        bool(x[0] > 1)
        (x > 1).nonzero()
        x * 2  # not a sync
    assert syncs.by_op == {"_local_scalar_dense": 2, "nonzero": 1}


@pytest.mark.parametrize(("sequence_model", "return_norm"), [("s5", "percentile"), ("rssm", "none")])
def test_every_levels_update_is_free_of_host_syncs(sequence_model: str, return_norm: str, single_thread) -> None:
    setup = dict(bench._QUICK)
    hierarchy = bench._hierarchy(sequence_model, setup)
    fabric = bench._fabric()
    for index, level in enumerate(hierarchy.levels):
        level.actor_critic.config["return_norm"] = return_norm
        batch, optimizers = bench._batch(hierarchy, index, setup), level.make_optimizers()
        level.train_step(batch, optimizers, fabric)  # the first step creates the optimizer state
        with HostSyncCounter() as syncs:
            level.train_step(batch, optimizers, fabric)
        assert syncs.by_op == {}, f"level {index} ({sequence_model}) update syncs: {dict(syncs.by_op)}"
