"""The seeding rule every hieros environment follows, in one place.

``reset(seed=s)`` reseeds the environment (and its game); the first ``reset()`` without a seed uses the seed given
to the constructor, so a freshly built environment is reproducible without an explicit seed; later ``reset()`` calls
without a seed continue the environment's own random stream.

The environments a run builds besides its training environments (env i of a vector env gets ``seed + i``, see
:func:`~hieros.envs.vector.make_vector_env`) are seeded with the run's seed plus the offsets below. Changing a value
changes the results of every fixed-seed run that uses it.
"""

from __future__ import annotations

import gymnasium

EVAL_ENV_SEED_OFFSET = 100_000  # evaluation envs of a training run (periodic and final): run seed + this
VIDEO_ENV_SEED_OFFSET = 200_000  # the subgoal-video env of a training run: run seed + this (+ the step at reset)
CHECKPOINT_EVAL_SEED_OFFSET = 300_000  # hieros-eval's envs when no seed is given: the run's seed + this
RESTART_SEED_STRIDE = 1_000_003  # run_episodes' n-th restart after every env hit eval_max_steps: seed + n * this


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
