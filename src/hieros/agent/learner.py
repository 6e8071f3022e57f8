"""What trains the hierarchy: the optimisers, learning-rate warm-ups and update counters of every level, and the
schedule by which the levels learn (spec section 5.1).

The training loop calls :meth:`Learner.train_step` once per level-0 update (as often as the train ratio says) and
never mentions levels. One call, with k = ``hierarchy.k`` and u = level-0 updates so far (after this one)::

    level 0   world model -> imagination -> actor, critics, autoencoder       every call
    level 1   the same, from level 1's replay                                  when u % k   == 0
    level 2   the same, from level 2's replay                                  when u % k^2 == 0
    ...
    shared_world_model (G.8): levels >= 1 learn in one joint imagination of level 0's model, from level 0's
    posterior states of this call's batch, when due (no replay of their own)

A level without enough stored windows yet (``sample`` returns None) skips its turn. Each owned world model warms its
learning rate up linearly over ``warmup_steps`` of its own updates.

Where the hierarchy's acting timing lives (who observes, acts and stores at which environment step) is drawn in
:mod:`hieros.agent.hierarchy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from hieros.agent.hierarchy import Hierarchy

BatchSampler = Callable[[int], Mapping[str, Tensor] | None]
"""``sample(level)``: a training batch of that level's replay as tensors, or None while it holds too few windows."""


class Learner:
    """The training state of a :class:`Hierarchy`: per level an optimiser per network, a learning-rate warm-up for
    each world model it owns, and the number of updates made."""

    def __init__(self, agent: Hierarchy, warmup_steps: int, fabric: Any = None) -> None:
        """``agent`` as ``fabric.setup_module`` returned it (or plain); with ``fabric`` every optimiser is set up
        through ``fabric.setup_optimizers`` (its steps then go through the precision plugin)."""
        self.agent = agent
        self.optimizers: list[dict[str, torch.optim.Optimizer]] = [level.make_optimizers() for level in agent.levels]
        warmup = max(1, int(warmup_steps))
        # One warm-up per owned world model; with a shared world model only level 0 owns one (and comes first).
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opts["world_model"], lambda update: min(1.0, (update + 1) / warmup))
            for opts in self.optimizers
            if "world_model" in opts
        ]
        if fabric is not None:
            self.optimizers = [
                {name: fabric.setup_optimizers(optimizer) for name, optimizer in optimizers.items()}
                for optimizers in self.optimizers
            ]
        self.updates = [0] * len(agent.levels)

    def train_step(self, sample: BatchSampler, fabric: Any) -> dict[str, dict[str, Tensor]]:
        """One level-0 update and every higher level that is due (module docstring). Returns the metrics of every
        level that learned, keyed by the level's metric prefix ``train/level<i>/``."""
        metrics: dict[str, dict[str, Tensor]] = {}
        batch = sample(0)
        if batch is None:
            return metrics
        start, start_cont = self._train_level(0, batch, fabric, metrics)
        if self.agent.shared_world_model:
            shared = self.agent.train_shared_levels(start, start_cont, self.updates[0], self.optimizers, fabric)
            for index, level_metrics in shared.items():
                self.updates[index] += 1
                metrics[metric_prefix(index)] = level_metrics
            return metrics
        for index in range(1, len(self.agent.levels)):
            if not self.agent.level_due(index, self.updates[0]):
                continue
            batch = sample(index)
            if batch is not None:
                self._train_level(index, batch, fabric, metrics)
        return metrics

    def _train_level(self, index: int, batch: Mapping[str, Tensor], fabric: Any, metrics: dict[str, dict]):
        """One update of level ``index``; adds its metrics, returns its imagination starts and their continues."""
        level_metrics, start, start_cont = self.agent.levels[index].train_step(batch, self.optimizers[index], fabric)
        if index < len(self.schedulers):
            self.schedulers[index].step()
        self.updates[index] += 1
        metrics[metric_prefix(index)] = level_metrics
        return start, start_cont

    def report(self) -> dict[str, int]:
        """Updates made so far per level: ``updates/level<i>``."""
        return {f"updates/level{index}": count for index, count in enumerate(self.updates)}

    # ------------------------------------------------------------------ checkpoint
    def stateful(self) -> dict[str, Any]:
        """The optimisers and schedulers under their checkpoint names (``optimizer/level<i>/<name>``,
        ``scheduler/<i>``); the update counters are plain values (:attr:`updates`)."""
        objects: dict[str, Any] = {}
        for index, optimizers in enumerate(self.optimizers):
            objects.update({f"optimizer/level{index}/{name}": opt for name, opt in optimizers.items()})
        objects.update({f"scheduler/{index}": scheduler for index, scheduler in enumerate(self.schedulers)})
        return objects


def metric_prefix(level: int) -> str:
    """Where a level's training metrics are reported: ``train/level<i>/``."""
    return f"train/level{level}/"
