"""Run records: ``metrics.jsonl`` in the run directory and its mirror in MLflow; :func:`make_tracker` builds the
tracker a run logs to (``logger.name``: ``mlflow`` | ``none``).

The run directory is the ground truth. The loop appends one JSON line per report to ``metrics.jsonl``
(:class:`~hieros.training.metrics_file.MetricsFile`) and writes files (config, scores, media) into the run directory;
:class:`~hieros.training.mlflow_mirror.MlflowTracker` mirrors both into one MLflow run from a background thread, so
no MLflow call ever runs inside the loop (what it sends: :mod:`~hieros.training.mlflow_mirror`; the run's tags and
params: :mod:`~hieros.training.run_tags`; the store, its URI and limits: :mod:`~hieros.training.mlflow_store`).

``<run_dir>/mlflow_run_id`` holds the run id (a rerun in the same directory re-attaches to the run) and
``<run_dir>/mlflow_sync.json`` how far the mirror got. When the store is unreachable at start, the run fails with a
message naming the URI (``logger.on_unreachable=fail``) or trains on (``local``): the mirror retries with back-off
and catches up from the offset when the store comes back, or when the same command is run again (a finished run
then only syncs). Nothing is lost while the run directory exists. After a crash, the metric points between the last
checkpoint and the crash stay in MLflow next to the points of the rerun of those steps (MLflow cannot delete metric
points); ``metrics.jsonl`` is truncated to the checkpoint and holds only the rerun.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class TrackingUnreachableError(RuntimeError):
    """The MLflow tracking store could not be reached at start (``logger.on_unreachable=fail``)."""


class Tracker:
    """No tracking store (``logger=none``): the run directory keeps metrics.jsonl and scores.json."""

    run_id: str | None = None
    uri: str | None = None
    media_every: int = 0
    wants_media = False
    started = False

    def start(self) -> None:
        self.started = True

    def rewind_metrics(self, offset: int, step: int = 0) -> None:
        pass

    def poke(self) -> None:
        pass

    def log_model(self, agent, step: int, final: bool = False) -> None:
        """Keep the agent as a model of the run (``logger.log_model``); nothing without a tracking store."""

    def describe(self) -> str:
        return "off (logger=none): metrics.jsonl and scores.json in the run directory"

    def close(self, status: str = "FINISHED", reason: str | None = None) -> None:
        pass


def make_tracker(
    config: Mapping[str, Any], run_dir: Path, report: Callable[[str], None], run_id_hint: str | None = None
) -> Tracker:
    # imported here: mlflow_mirror subclasses Tracker from this module
    from hieros.training.mlflow_mirror import MlflowTracker

    logger_cfg = config.get("logger") or {}
    name = logger_cfg.get("name", "none")
    if name == "none":
        return Tracker()
    if name == "mlflow":
        return MlflowTracker(run_dir, config, logger_cfg, report=report, run_id_hint=run_id_hint)
    raise ValueError(f"logger.name={name!r} is invalid: allowed is mlflow | none")
