"""The seeding rule every hieros environment follows, in one place.

``reset(seed=s)`` reseeds the environment (and its game); the first ``reset()`` without a seed uses the seed given
to the constructor, so a freshly built environment is reproducible without an explicit seed; later ``reset()`` calls
without a seed continue the environment's own random stream.
"""

from __future__ import annotations

import gymnasium


class SeededEnv(gymnasium.Env):
    """A :class:`gymnasium.Env` with a constructor seed; subclasses call :meth:`begin_reset` first in ``reset``."""

    def __init__(self, seed: int) -> None:
        self._seed = int(seed)
        self._seeded = False

    def begin_reset(self, seed: int | None) -> int | None:
        """Seed ``np_random`` as the rule says; returns the seed to pass on to the game (None: keep its stream)."""
        if seed is None and not self._seeded:
            seed = self._seed
        gymnasium.Env.reset(self, seed=seed)
        self._seeded = True
        return seed
