"""The MLflow mirror of a run directory: :class:`MlflowTracker` copies what the loop writes into one MLflow run from
a background thread, so no MLflow call ever runs inside the loop:

* metrics: the lines of ``metrics.jsonl`` past the synced byte offset, as ``log_batch`` calls (``step`` = agent
  steps, timestamp = the line's ``time``);
* artifacts: ``config.yaml`` and ``.hydra/overrides.yaml`` (under ``config/``), ``scores.json``, ``media/*`` (GIF and
  MP4), ``metrics.jsonl`` at the end, and optionally the checkpoints;
* params and tags (:mod:`~hieros.training.run_tags`), params logged once: a resumed run logs only the keys its run
  lacks;
* system metrics (``logger.system_metrics``): MLflow's ``SystemMetricsMonitor`` (``system/cpu_utilization_percentage``,
  memory, disk, network, GPU with ``nvidia-ml-py``) every ``logger.system_metrics_interval`` seconds, attached to the
  run each time the tracker attaches to it: a resumed or requeued run continues the ``system/*`` steps where they were;
* the agent as an MLflow logged model (``logger.log_model``; :mod:`~hieros.training.mlflow_model`): the loop saves it
  into ``<run_dir>/mlflow_models/`` (:meth:`MlflowTracker.log_model`), the mirror uploads it.

``<run_dir>/mlflow_run_id`` holds the run id (a rerun in the same directory re-attaches to the run) and
``<run_dir>/mlflow_sync.json`` how far the mirror got. The store itself (URI, reachability, limits, retries) is
:mod:`~hieros.training.mlflow_store`; how an unreachable store is handled is described in
:mod:`~hieros.training.tracking`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hieros.files import write_atomic, write_json_atomic
from hieros.training.mlflow_model import MODELS_DIR, model_folder, pending_models, save_agent, upload
from hieros.training.mlflow_store import (
    MAX_KEY,
    MAX_TAG_VALUE,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    REWINDS_TAG,
    get_or_create_experiment,
    is_remote,
    probe,
    resolve_tracking_uri,
    retry,
    stale_ranges,
)
from hieros.training.run_tags import flat_params, run_tags
from hieros.training.tracking import Tracker, TrackingUnreachableError

RUN_ID_FILE = "mlflow_run_id"
SYNC_FILE = "mlflow_sync.json"
RESERVED_KEYS = ("step", "time")  # fields of a metrics.jsonl line that are not metrics
MAX_BACKOFF_SECONDS = 600.0  # longest wait between two attempts to reach an unreachable store
CLOSE_TIMEOUT_SECONDS = 120  # how long close() waits for the mirror thread before leaving the sync to a rerun
MAX_FAILURE_TAG = 5000  # characters of the failure reason kept in the tag hieros.failure
LOG_MODEL_CHOICES = ("final", "periodic", "never")


class MlflowTracker(Tracker):
    """Mirrors a run directory into one MLflow run (see the module docstring)."""

    wants_media = True

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any],
        logger_cfg: Mapping[str, Any],
        report: Callable[[str], None] = print,
        run_id_hint: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.config = config
        self.report = report
        root = config.get("paths", {}).get("root", "hieros-runs")
        self.uri = resolve_tracking_uri(logger_cfg.get("tracking_uri"), root)
        location = logger_cfg.get("artifact_location")
        self.artifact_location = None if (is_remote(self.uri) or not location) else str(Path(location).resolve())
        self.on_unreachable = str(logger_cfg.get("on_unreachable", "fail"))
        if self.on_unreachable not in ("fail", "local"):
            raise ValueError(f"logger.on_unreachable={self.on_unreachable!r} is invalid: allowed is fail | local")
        self.media_every = int(logger_cfg.get("media_every", 0) or 0)
        self.log_checkpoints = bool(logger_cfg.get("log_checkpoints", False))
        self.sync_seconds = float(logger_cfg.get("sync_seconds", 30))
        self.system_metrics = bool(logger_cfg.get("system_metrics", True))
        self.system_metrics_interval = float(logger_cfg.get("system_metrics_interval", 10))
        self.log_model_when = str(logger_cfg.get("log_model", "final"))
        if self.log_model_when not in LOG_MODEL_CHOICES:
            raise ValueError(
                f"logger.log_model={self.log_model_when!r} is invalid: allowed is final | periodic | never"
            )
        self.experiment_name = str(config.get("experiment_name", "default"))
        self.client = None
        self.experiment_id: str | None = None
        self._monitor = None  # mlflow's SystemMetricsMonitor of the attached run
        self._model_failures: set[str] = set()  # saved agents whose upload failed (reported once each)
        self.run_id = self._stored_run_id() or run_id_hint
        self.sync = self._read_sync_state()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._backoff = self.sync_seconds
        self._next_attempt = 0.0
        self._last_error: str | None = None
        self._rewind: dict[str, int] | None = None  # a resume discarded points already sent (see rewind_metrics)

    # ----------------------------------------------------------- state files
    def _stored_run_id(self) -> str | None:
        path = self.run_dir / RUN_ID_FILE
        if not path.is_file():
            return None
        return path.read_text().strip() or None

    def _read_sync_state(self) -> dict[str, Any]:
        path = self.run_dir / SYNC_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("run_id") != self.run_id:
            state = {}
        return {
            "run_id": self.run_id,
            "metrics_offset": int(state.get("metrics_offset", 0)),
            "files": state.get("files", {}),
            "models": state.get("models", {}),
        }

    def _write_sync_state(self) -> None:
        write_json_atomic(self.run_dir / SYNC_FILE, self.sync, indent=1)

    def rewind_metrics(self, offset: int, step: int = 0) -> None:
        """metrics.jsonl was truncated to ``offset`` bytes, the lines of the checkpoint's ``step`` (resume): lines from
        there on are new. MLflow cannot delete points already sent past that step, so the rewind is recorded in the
        run's tag ``hieros.rewinds`` ([{"step": S, "time_ms": T}]): a point with step > S logged before T is stale
        (``hieros-report`` drops those when it reads metric histories)."""
        if int(self.sync["metrics_offset"]) > int(offset):
            self._rewind = {"step": int(step), "time_ms": int(time.time() * 1000)}
        self.sync["metrics_offset"] = min(int(self.sync["metrics_offset"]), int(offset))

    # ----------------------------------------------------------- start
    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)  # holds mlflow_run_id and the sync record
        problem = probe(self.uri)
        if problem is None:
            try:
                self._attach()
            except Exception as error:  # noqa: BLE001 - reachable but unusable counts as unreachable
                problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            message = f"MLflow tracking store {self.uri} is unreachable ({problem})"
            if self.on_unreachable == "fail":
                raise TrackingUnreachableError(
                    f"{message}. Start the store (e.g. `mlflow server ...`), point MLFLOW_TRACKING_URI or "
                    f"logger.tracking_uri at a reachable one, train without it (logger.on_unreachable=local: "
                    f"metrics stay in the run directory and are synced when the store is back), or use logger=none."
                )
            self.report(f"{message}; training on, metrics kept in {self.run_dir / 'metrics.jsonl'} and synced later")
            self._next_attempt = time.monotonic() + self._backoff
        self._thread = threading.Thread(target=self._work, name="hieros-mlflow-sync", daemon=True)
        self._thread.start()
        self.started = True

    def _attach(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        run = None
        if self.run_id:
            try:
                run = client.get_run(self.run_id)
            except Exception:  # noqa: BLE001 - not in this store (moved or deleted)
                self.report(f"MLflow run {self.run_id} is not in {self.uri}; creating a new run")
                run = None
            if run is not None and run.info.lifecycle_stage == "deleted":
                self.report(f"MLflow run {self.run_id} was deleted; creating a new run")
                run = None
        tags = run_tags(self.config, self.run_dir, self.uri, self.report)
        if run is None:
            experiment_id = retry(
                lambda: get_or_create_experiment(client, self.experiment_name, self.artifact_location)
            )
            run = retry(lambda: client.create_run(experiment_id, tags=tags, run_name=tags.get("mlflow.runName")))
            self.sync = {"run_id": run.info.run_id, "metrics_offset": 0, "files": {}, "models": {}}
            resumed = False
        else:
            resumed = True
        if run.info.status != "RUNNING":
            retry(lambda: client.update_run(run.info.run_id, status="RUNNING"))
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.sync["run_id"] = self.run_id
        write_atomic(self.run_dir / RUN_ID_FILE, self.run_id + "\n")
        self._write_sync_state()
        self._log_params_and_tags(client, run, tags)
        if self._rewind is not None:
            rewinds = [*stale_ranges(run.data.tags), self._rewind]
            retry(lambda: client.set_tag(self.run_id, REWINDS_TAG, json.dumps(rewinds)))
            self._rewind = None
        self.client = client
        self._backoff = self.sync_seconds
        self._start_system_metrics(resumed)

    def _start_system_metrics(self, resumed: bool) -> None:
        """MLflow's system metrics monitor on this run; ``resumed``: continue its ``system/*`` steps (a re-attach)."""
        if not self.system_metrics:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._stop_system_metrics()  # a re-attach after the store was unreachable: never two monitors on one run
        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=self.system_metrics_interval,
            resume_logging=resumed,
            tracking_uri=self.uri,
        )
        self._monitor.start()

    def _stop_system_metrics(self) -> None:
        """Stop the monitor and send what it sampled (before the run is marked terminated)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception as error:  # noqa: BLE001 - system metrics never stop a run
                self.report(f"MLflow system metrics of run {self.run_id} stopped with an error ({error})")

    def _log_params_and_tags(self, client, run, tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        existing = dict(run.data.params)
        params = flat_params(self.config)
        missing = [Param(key, value) for key, value in params.items() if key not in existing]
        changed = {key: value for key, value in params.items() if key in existing and existing[key] != value}
        tag_list = [RunTag(key, value) for key, value in tags.items()]
        if changed:
            tag_list.append(RunTag("hieros.resumed_with", json.dumps(changed)[:MAX_TAG_VALUE]))
        for start in range(0, max(len(missing), len(tag_list)), PARAMS_PER_BATCH):
            params_chunk = missing[start : start + PARAMS_PER_BATCH]
            tags_chunk = tag_list[start : start + PARAMS_PER_BATCH]
            retry(lambda p=params_chunk, t=tags_chunk: client.log_batch(self.run_id, params=p, tags=t))

    # ----------------------------------------------------------- background mirror
    def poke(self) -> None:
        """Ask the mirror to sync soon (new media or a report); never blocks."""
        self._wake.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.sync_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._sync_once(final=False)

    def _sync_once(self, final: bool) -> bool:
        """One round: attach if offline, then send new metric lines and changed files. True when all is synced."""
        with self._lock:
            try:
                if self.client is None:
                    if not final and time.monotonic() < self._next_attempt:
                        return False
                    problem = probe(self.uri)
                    if problem is not None:
                        raise ConnectionError(problem)
                    self._attach()
                    self.report(f"MLflow store {self.uri} reachable again: syncing run {self.run_id}")
                elif is_remote(self.uri) and (problem := probe(self.uri)) is not None:
                    raise ConnectionError(problem)
                self._send_metrics()
                self._send_files(final)
                self._send_models()
                self._write_sync_state()
                self._last_error = None
                return True
            except Exception as error:  # noqa: BLE001 - keep training; retry later
                message = f"{type(error).__name__}: {error}"
                if message != self._last_error:
                    self.report(f"MLflow sync to {self.uri} failed ({message}); will retry, nothing is lost")
                self._last_error = message
                if self.client is None or isinstance(error, ConnectionError):
                    self.client = None
                    self._next_attempt = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
                return False

    def _send_metrics(self) -> None:
        from mlflow.entities import Metric

        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        with open(path, "rb") as handle:
            handle.seek(self.sync["metrics_offset"])
            data = handle.read()
        end = data.rfind(b"\n") + 1  # only complete lines
        batch: list[Metric] = []
        unsent_bytes = 0
        for line in data[:end].splitlines(keepends=True):
            unsent_bytes += len(line)
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                continue
            stamp = int(float(record.get("time") or time.time()) * 1000)
            for key, value in record.items():
                if key in RESERVED_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                batch.append(Metric(key[:MAX_KEY], float(value), stamp, step))
            if len(batch) >= METRICS_PER_BATCH:
                self._log_metrics(batch)
                self.sync["metrics_offset"] += unsent_bytes
                batch, unsent_bytes = [], 0
        self._log_metrics(batch)
        self.sync["metrics_offset"] += unsent_bytes

    def _log_metrics(self, metrics: list) -> None:
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    def _artifact_files(self, final: bool) -> list[tuple[Path, str]]:
        """(local file, artifact folder) of everything mirrored now."""
        files = [(self.run_dir / "config.yaml", "config"), (self.run_dir / ".hydra" / "overrides.yaml", "config")]
        files.append((self.run_dir / "scores.json", ""))
        media = self.run_dir / "media"
        if media.is_dir():
            files += [(path, "media") for path in sorted(media.iterdir()) if path.suffix in (".gif", ".mp4")]
        if self.log_checkpoints:
            checkpoints = self.run_dir / "checkpoints"
            if checkpoints.is_dir():
                files += [(path, "checkpoints") for path in sorted(checkpoints.glob("step_*.ckpt"))]
        if final:
            files.append((self.run_dir / "metrics.jsonl", ""))
        return [(path, folder) for path, folder in files if path.is_file()]

    def _send_files(self, final: bool) -> None:
        for path, folder in self._artifact_files(final):
            try:
                stat = path.stat()
            except FileNotFoundError:  # a checkpoint pruned meanwhile
                continue
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
            key = str(path.relative_to(self.run_dir))
            if self.sync["files"].get(key) == signature:
                continue
            try:
                self.client.log_artifact(self.run_id, str(path), folder or None)
            except FileNotFoundError:
                continue
            self.sync["files"][key] = signature

    # ----------------------------------------------------------- the agent as a logged model
    def log_model(self, agent, step: int, final: bool = False) -> None:
        """In the loop, at a checkpoint (``final``: after the final evaluation): save the agent for the mirror to log
        as a model when ``logger.log_model`` asks for it (final: only the final one; periodic: every checkpoint)."""
        if self.log_model_when == "never" or (self.log_model_when == "final" and not final):
            return
        folder = model_folder(self.run_dir, step)
        if folder.exists() or folder.name in self.sync["models"]:  # this step's agent is saved or logged already
            return
        try:
            save_agent(agent, folder, step)
        except Exception as error:  # noqa: BLE001 - the checkpoint holds the agent anyway
            self.report(f"could not save the agent for MLflow at step {step} ({type(error).__name__}: {error})")
            return
        self.poke()

    def _send_models(self) -> None:
        """Upload the agents the loop saved (oldest first); each one's folder is deleted once it is logged."""
        import shutil

        pending = pending_models(self.run_dir)
        if not pending:
            return
        params, metrics = flat_params(self.config), self.run_dir / "metrics.jsonl"
        for step, folder in pending:
            if folder.name not in self.sync["models"]:
                try:
                    model_id = retry(
                        lambda f=folder, s=step: upload(
                            self.client, self.run_id, self.experiment_id, f, s, params, metrics
                        )
                    )
                except Exception as error:  # noqa: BLE001 - left in the run directory for the next sync
                    if folder.name not in self._model_failures:
                        self.report(f"could not log the agent of step {step} as an MLflow model ({error}); will retry")
                    self._model_failures.add(folder.name)
                    continue
                self.sync["models"][folder.name] = model_id
                self._write_sync_state()
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # empty once everything is logged
            (self.run_dir / MODELS_DIR).rmdir()

    def pending(self) -> str | None:
        path = self.run_dir / "metrics.jsonl"
        size = path.stat().st_size if path.is_file() else 0
        left = size - int(self.sync["metrics_offset"])
        return f"{left} bytes of metrics.jsonl" if left > 0 or self.client is None else None

    # ----------------------------------------------------------- describe / close
    def describe(self) -> str:
        if self.run_id is None:
            return f"MLflow {self.uri} (offline; run created when the store is reachable)"
        return f"MLflow run {self.run_id} in experiment {self.experiment_name!r} at {self.uri}"

    def close(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Stop the mirror, sync everything (metrics.jsonl included) and mark the run ``status``; ``reason`` (why a
        run FAILED) goes into the tag ``hieros.failure``."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=CLOSE_TIMEOUT_SECONDS)
            if self._thread.is_alive():  # stuck in a store call: leave the rest to the next run of the command
                self.report(f"MLflow store {self.uri} does not answer; re-run the same command later to sync")
                return
            self._thread = None
        if self._sync_once(final=True) and self.client is not None:
            self._stop_system_metrics()
            try:
                if reason:
                    retry(lambda: self.client.set_tag(self.run_id, "hieros.failure", reason[:MAX_FAILURE_TAG]))
                retry(lambda: self.client.set_terminated(self.run_id, status=status))
            except Exception as error:  # noqa: BLE001
                self.report(f"could not mark MLflow run {self.run_id} {status} ({error})")
        else:
            self.report(
                f"MLflow store {self.uri} unreachable: {self.pending() or 'some records'} not synced yet; they stay in "
                f"{self.run_dir} -- run the same command again once the store is back to sync them"
            )
