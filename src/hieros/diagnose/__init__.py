"""World-model diagnostics of a training run (``hieros-diagnose RUN_DIR``, ``python -m hieros.diagnose RUN_DIR``).

The computations are pure functions of a :class:`~hieros.agent.world_model.WorldModel` and tensors, all without
gradients and with deterministic latents (``sample=False``: the mode of every categorical):

* :func:`open_loop` (:mod:`~hieros.diagnose.open_loop_error`): observe the first ``context`` steps of replay windows
  with the posterior, then roll the prior forward with the window's own previous actions; observation, reward and
  continue errors per horizon step, next to the error of copying the last observed frame.
* :func:`free_bits` (:mod:`~hieros.diagnose.kl_free_bits`): the share of (b, t) steps whose dynamics KL is below
  ``kl_free`` (the prior gets no gradient there) and the mean KL.
* :func:`action_sensitivity` (:mod:`~hieros.diagnose.prior_action_sensitivity`): how far one prior step's decoded
  observation (and reward) moves between different actions, against how far the data moves in one step.
* :func:`state_gap` (:mod:`~hieros.diagnose.acting_state_gap`): over whole episodes, the deterministic state h from
  observing the episode from its start (what acting with ``sequence_model.acting_context=episode`` reads) against h
  from the training window of ``batch_length`` steps ending at the same step (what training sees), per position in
  the episode.

:func:`load_run` (:mod:`~hieros.diagnose.loading`) rebuilds the agent from a run directory's newest checkpoint and
opens its replays read-only; :mod:`~hieros.diagnose.replay_data` draws windows and episodes from them;
:func:`diagnose_run` (:mod:`~hieros.diagnose.report`) runs every section per level and returns one JSON-ready dict;
:func:`scalars` flattens it into MLflow metric names. The error measures the sections share are in
:mod:`~hieros.diagnose._measures`. The CLI (console tables, JSON file, MLflow) is in :mod:`hieros.diagnose.__main__`.
"""

from __future__ import annotations

from hieros.diagnose._measures import obs_target
from hieros.diagnose.acting_state_gap import buckets_for, state_gap
from hieros.diagnose.kl_free_bits import free_bits
from hieros.diagnose.loading import NON_OBS_FIELDS as NON_OBS_FIELDS  # importable from here, not in __all__
from hieros.diagnose.loading import DiagnoseError, LoadedRun, load_run
from hieros.diagnose.open_loop_error import open_loop
from hieros.diagnose.prior_action_sensitivity import action_sensitivity
from hieros.diagnose.replay_data import find_episodes, load_episodes, sample_windows, to_tensors
from hieros.diagnose.report import diagnose_run, scalars

__all__ = [
    "DiagnoseError",
    "LoadedRun",
    "action_sensitivity",
    "buckets_for",
    "diagnose_run",
    "find_episodes",
    "free_bits",
    "load_episodes",
    "load_run",
    "obs_target",
    "open_loop",
    "sample_windows",
    "scalars",
    "state_gap",
    "to_tensors",
]
