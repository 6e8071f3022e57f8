"""MLflow sweep structure: one parent run per multirun, every job a child run of it.

:class:`MlflowSweepCallback` (``hydra.callbacks`` in ``conf/config.yaml``):

* ``on_multirun_start`` runs on the submitting host before the sweeper expands the grid and before any job starts.
  It creates the store (a sqlite schema is created once here, not raced by parallel jobs), the experiment and ONE
  parent run, tagged with the sweep folder, the command line, its overrides, the launcher, the git commit and
  MLflow's source tags, with the sweep's grid (:func:`sweep_grid`) as params ``sweep.<key>`` and as the JSON tag
  ``sweep.params``, and writes ``<sweep dir>/mlflow_parent.json`` (run id, tracking URI, swept keys). The callback
  keeps that record; Hydra pickles the callback into every job (hydra-submitit-launcher pickles it with the
  launcher, so a requeued job gets the same record back).
* ``on_job_start`` runs in the job, in its folder: it writes the record to ``<job dir>/mlflow_parent.json``, which
  the job's tracker reads (:func:`hieros.training.run_tags.sweep_parent_run_id`) to tag its run
  ``mlflow.parentRunId`` and to name it by its values of the swept keys (``hierarchy.layers=2,seed=1``). Nothing is exported into the job's environment; ``HIEROS_PARENT_RUN_ID`` overrides the
  whole mechanism (no parent is created; every job becomes a child of that run).
* ``on_multirun_end`` (or at exit of the submitting process when the sweep raised): marks the parent ``FINISHED``
  when every child run finished and every job folder of the sweep holds a run, else ``FAILED``; the tag ``jobs``
  counts the children by status, and the metrics ``final_eval/<mode>_score_mean``/``_min``/``_max`` aggregate the
  children's final scores (:func:`aggregate_scores`, over the children that have one).

Launching the same sweep again with the same ``hydra.sweep.dir`` re-attaches to its parent (each job resumes from
its checkpoint or, if it finished, only syncs). Nothing happens with ``logger=none`` or for a single run.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hieros.files import write_json_atomic
from hieros.training.mlflow_mirror import RUN_ID_FILE
from hieros.training.mlflow_store import (
    MAX_KEY,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    PARAMS_PER_BATCH,
    get_or_create_experiment,
    is_remote,
    resolve_tracking_uri,
    retry,
    sqlite_path,
)
from hieros.training.run_tags import PARENT_RUN_ENV, SWEEP_PARENT_FILE, git_info, read_sweep_parent, source_tags

SCORE_PREFIX, SCORE_SUFFIX = "final_eval/", "_score"  # the children's metrics aggregated on the parent


def sweep_grid(config: DictConfig) -> dict[str, str]:
    """The sweep's grid, {key: its values as written}: the sweeper's ``params`` (e.g. an experiment file's seeds and
    games), then the sweep overrides of the command line, which win for the same key (as Hydra's basic sweeper)."""
    parser = OverridesParser.create()
    grid: dict[str, str] = {}
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    for key, value in params.items():
        text = ",".join(map(str, value)) if OmegaConf.is_list(value) else str(value)
        try:
            (override,) = parser.parse_overrides([f"{key}={text}"])
            grid[override.key_or_group] = text
        except Exception:  # noqa: BLE001 - a sweeper with its own value syntax: the key as written
            grid[str(key).lstrip("+~")] = text
    for override in parser.parse_overrides([str(item) for item in config.hydra.overrides.task]):
        if override.is_sweep_override():
            grid[override.key_or_group] = str(override.input_line).split("=", 1)[1]
    return grid


def aggregate_scores(runs) -> dict[str, float]:
    """``<key>_mean``/``_min``/``_max`` of every ``final_eval/<mode>_score`` over the runs that have it."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run.data.metrics.items():
            if key.startswith(SCORE_PREFIX) and key.endswith(SCORE_SUFFIX):
                values.setdefault(key, []).append(float(value))
    aggregates = {}
    for key, found in sorted(values.items()):
        aggregates.update({f"{key}_mean": sum(found) / len(found), f"{key}_min": min(found), f"{key}_max": max(found)})
    return aggregates


def write_record(folder: Path, record: dict[str, str]) -> None:
    """``<folder>/mlflow_parent.json``, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / SWEEP_PARENT_FILE, record, indent=1)


def child_runs(client, parent_id: str) -> list:
    """Every run in the store tagged as a child of ``parent_id`` (any experiment)."""
    experiment_ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiment_ids += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            break
    runs = []
    for start in range(0, len(experiment_ids), 100):
        query = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        runs += client.search_runs(experiment_ids[start : start + 100], query, max_results=10000)
    return runs


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders below a sweep folder: those holding Hydra's ``.hydra/`` record or an MLflow run id."""
    found = {path.parent for name in (".hydra", RUN_ID_FILE) for path in sweep_dir.rglob(name)}
    return sorted(path for path in found if ".submitit" not in path.parts)


class MlflowSweepCallback(Callback):
    """Creates the parent run of a multirun, hands it to every job and finishes it (see the module docstring)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] | None = None  # run_id, tracking_uri, sweep_dir of this sweep's parent run
        self._finished = False

    # ------------------------------------------------------------------ submitting host: start
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        logger_cfg = OmegaConf.select(config, "logger")
        if logger_cfg is None or logger_cfg.get("name") != "mlflow" or os.environ.get(PARENT_RUN_ENV):
            return
        from mlflow.tracking import MlflowClient

        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().resolve()
        uri = resolve_tracking_uri(logger_cfg.get("tracking_uri"), config.paths.root)
        if (database := sqlite_path(uri)) is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        location = logger_cfg.get("artifact_location")
        location = None if (is_remote(uri) or not location) else str(Path(location).expanduser().resolve())
        experiment_name = str(config.get("experiment_name", "default"))
        experiment_id = retry(lambda: get_or_create_experiment(client, experiment_name, location))

        grid = sweep_grid(config)
        run_id = self._existing_parent(client, sweep_dir, uri)
        if run_id is None:
            tags = self._tags(config, sweep_dir)
            run = retry(lambda: client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"]))
            run_id = run.info.run_id
        self._log_grid(client, run_id, grid)
        self.parent = {"run_id": run_id, "tracking_uri": uri, "sweep_dir": str(sweep_dir), "sweep_keys": sorted(grid)}
        self._finished = False
        write_record(sweep_dir, self.parent)
        atexit.register(self._finish_at_exit)
        print(f"hieros: MLflow parent run {run_id} (experiment {experiment_name!r} at {uri}) for sweep {sweep_dir}")

    @staticmethod
    def _existing_parent(client, sweep_dir: Path, uri: str) -> str | None:
        """The parent of an earlier launch of this same sweep folder (re-attached: back to RUNNING)."""
        record = read_sweep_parent(sweep_dir)
        if record is None or record.get("tracking_uri") != uri:
            return None
        try:
            run = client.get_run(record["run_id"])
        except Exception:  # noqa: BLE001 - deleted for good or not in this store
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        retry(lambda: client.update_run(run.info.run_id, status="RUNNING"))
        return run.info.run_id

    @staticmethod
    def _log_grid(client, run_id: str, grid: dict[str, str]) -> None:
        """The grid as params ``sweep.<key>`` (the ones the parent lacks: params are immutable) and tag ``sweep.params``."""
        from mlflow.entities import Param

        existing = client.get_run(run_id).data.params
        params = [
            Param(f"sweep.{key}"[:MAX_KEY], value[:MAX_PARAM_VALUE])
            for key, value in grid.items()
            if f"sweep.{key}"[:MAX_KEY] not in existing
        ]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            chunk = params[start : start + PARAMS_PER_BATCH]
            retry(lambda c=chunk: client.log_batch(run_id, params=c))
        retry(lambda: client.set_tag(run_id, "sweep.params", json.dumps(grid)[:MAX_TAG_VALUE]))

    @staticmethod
    def _tags(config: DictConfig, sweep_dir: Path) -> dict[str, str]:
        hydra_cfg = config.hydra
        tags = {
            **source_tags(),
            "mlflow.runName": f"sweep {sweep_dir.name}",
            "hieros.sweep": "parent",
            "sweep_dir": str(sweep_dir),
            "overrides": " ".join(str(item) for item in hydra_cfg.overrides.task),
            "command": shlex.join([sys.executable, *sys.argv]),
            "launcher": str(hydra_cfg.runtime.choices.get("hydra/launcher", "")),
        }
        git = git_info()
        tags.update(git)
        if "git_sha" in git:
            tags["mlflow.source.git.commit"] = git["git_sha"]
        return {key: value[:MAX_TAG_VALUE] for key, value in tags.items()}

    # ------------------------------------------------------------------ in the job
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        from hydra.core.hydra_config import HydraConfig

        write_record(Path(HydraConfig.get().runtime.output_dir), self.parent)

    # ------------------------------------------------------------------ submitting host: end
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()

    def _finish_at_exit(self) -> None:
        self._finish()  # the sweep raised before on_multirun_end (a no-op after it)

    def _finish(self) -> None:
        if self.parent is None or self._finished:
            return
        self._finished = True
        from mlflow.tracking import MlflowClient

        run_id = self.parent["run_id"]
        client = MlflowClient(tracking_uri=self.parent["tracking_uri"])
        try:
            children = child_runs(client, run_id)
            statuses = {run.info.run_id: run.info.status for run in children}
            for job in job_dirs(Path(self.parent["sweep_dir"])):  # a job that died before creating its run
                path = job / RUN_ID_FILE
                child = path.read_text().strip() if path.is_file() else ""
                if child not in statuses:
                    statuses[child or str(job)] = "NO RUN"
            counts = {status: list(statuses.values()).count(status) for status in sorted(set(statuses.values()))}
            status = "FINISHED" if statuses and set(counts) == {"FINISHED"} else "FAILED"
            retry(lambda: client.set_tag(run_id, "jobs", json.dumps(counts)))
            self._log_aggregates(client, run_id, aggregate_scores(children))
            retry(lambda: client.set_terminated(run_id, status=status))
        except Exception as error:  # noqa: BLE001 - never hide the sweep's own outcome
            print(f"hieros: could not finish MLflow parent run {run_id} ({type(error).__name__}: {error})")
            return
        print(f"hieros: MLflow parent run {run_id} {status}: child runs by status {counts}")

    @staticmethod
    def _log_aggregates(client, run_id: str, aggregates: dict[str, float]) -> None:
        if not aggregates:
            return
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key[:MAX_KEY], value, stamp, 0) for key, value in aggregates.items()]
        retry(lambda: client.log_batch(run_id, metrics=metrics))
