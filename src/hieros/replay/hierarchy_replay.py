"""The replays of a hierarchy, one per level that owns a world model (spec §7.1).

Level i stores one row every k^i environment steps (what :meth:`~hieros.agent.hierarchy.Hierarchy.act` returns for
it); a level that shares level 0's world model (G.8) learns only in imagination and has no replay (None here). The
training loop hands this object the rows ``act`` returns and gives :meth:`HierarchyReplay.sample` to the
:class:`~hieros.agent.learner.Learner`, so neither needs to know how many levels there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hieros.replay.buffer import Replay
from hieros.samplers import Sampler

Spec = Mapping[str, tuple[tuple[int, ...], np.dtype]]


class HierarchyReplay(Sequence):
    """The replays of a hierarchy: per level a :class:`Replay` of ``window``-step windows (or None for a level without its own world model).

    Args:
        specs: per level the row fields ``{name: (shape, dtype)}``, or None (``Hierarchy.replay_specs()``).
        capacity, num_streams, window: as for :class:`Replay` (the same for every level).
        make_sampler: builds one fresh sampler per replay (samplers count what they drew).
        directory: level i's data lives in ``directory / f"level{i}"``; in memory when None.
        batch_size: windows per training batch.
        min_windows: a level is not sampled before it holds this many windows.
    """

    def __init__(
        self,
        specs: Sequence[Spec | None],
        *,
        capacity: int,
        num_streams: int,
        window: int,
        make_sampler: Callable[[], Sampler],
        directory: str | Path | None,
        batch_size: int,
        min_windows: int,
    ) -> None:
        self.num_streams = num_streams
        self.batch_size = batch_size
        self.min_windows = min_windows
        self._replays = [
            None
            if spec is None
            else Replay(
                spec,
                capacity=capacity,
                num_streams=num_streams,
                window=window,
                sampler=make_sampler(),
                directory=None if directory is None else Path(directory) / f"level{index}",
            )
            for index, spec in enumerate(specs)
        ]

    # ------------------------------------------------------------ sequence of levels
    def __getitem__(self, index):  # type: ignore[override]
        return self._replays[index]

    def __len__(self) -> int:
        return len(self._replays)

    def __iter__(self) -> Iterator[Replay | None]:
        return iter(self._replays)

    # ------------------------------------------------------------ store and sample
    def store(self, rows: Sequence[Mapping[str, Any] | None]) -> None:
        """Add the rows ``Hierarchy.act`` returned (per level a row for every stream, or None when the level did not
        observe this step)."""
        for replay, row in zip(self._replays, rows):
            if row is None or replay is None:
                continue
            row = dict(row)
            envs = row.pop("env")
            if len(envs) != self.num_streams:
                raise NotImplementedError(
                    "higher levels of several parallel environments out of step need a per-stream replay add; "
                    "use training.num_envs=1 with hierarchy.layers>1"
                )
            replay.add(row)

    @property
    def ready(self) -> bool:
        """Level 0 holds enough windows to train."""
        return self._has_enough(self._replays[0])

    def sample(self, index: int, rng: np.random.Generator, device: torch.device) -> dict[str, torch.Tensor] | None:
        """A training batch of level ``index`` as tensors on ``device``: each field (batch_size, window, ...); None
        while that level holds too few windows or has no replay."""
        replay = self._replays[index]
        if not self._has_enough(replay):
            return None
        batch = replay.sample(self.batch_size, rng)
        return {key: torch.as_tensor(value, device=device) for key, value in batch.items()}

    def _has_enough(self, replay: Replay | None) -> bool:
        return replay is not None and len(replay) >= self.min_windows

    # ------------------------------------------------------------ checkpoint and report
    def stateful(self) -> dict[str, Replay]:
        """The replays under their checkpoint names ``replay/level<i>``."""
        return {f"replay/level{index}": replay for index, replay in enumerate(self._replays) if replay is not None}

    def flush(self) -> None:
        for replay in self._replays:
            if replay is not None:
                replay.flush()

    def report(self) -> dict[str, int]:
        """Steps held per level: ``replay/level<i>_steps``."""
        return {
            f"replay/level{index}_steps": replay.steps
            for index, replay in enumerate(self._replays)
            if replay is not None
        }
