"""Run records: ``metrics.jsonl`` in the run directory and its mirror in MLflow.

The run directory is the ground truth. The loop appends one JSON line per report to ``metrics.jsonl``
(:class:`MetricsFile`) and writes files (config, scores, media) into the run directory; :class:`MlflowTracker`
mirrors both into one MLflow run from a background thread, so no MLflow call ever runs inside the loop:

* metrics: the lines of ``metrics.jsonl`` past the synced byte offset, as ``log_batch`` calls (``step`` = agent
  steps, timestamp = the line's ``time``);
* artifacts: ``config.yaml`` and ``.hydra/overrides.yaml`` (under ``config/``), ``scores.json``, ``media/*`` (GIF and
  MP4), ``metrics.jsonl`` at the end, and optionally the checkpoints;
* params (the flattened resolved config, logged once: a resumed run logs only the keys its run lacks) and tags
  (overrides, component choices, seed, game, depth, Hydra job number, SLURM job id and restarts, git commit, run
  directory, and ``mlflow.parentRunId``: ``HIEROS_PARENT_RUN_ID`` if set, else the parent run of the sweep the job
  belongs to, read from ``<run_dir>/mlflow_parent.json``, which the sweep callback writes; see
  :mod:`hieros.training.sweep`).

``<run_dir>/mlflow_run_id`` holds the run id (a rerun in the same directory re-attaches to the run) and
``<run_dir>/mlflow_sync.json`` how far the mirror got. When the store is unreachable at start, the run fails with a
message naming the URI (``logger.on_unreachable=fail``) or trains on (``local``): the mirror retries with back-off
and catches up from the offset when the store comes back, or when the same command is run again (a finished run
then only syncs). Nothing is lost while the run directory exists. After a crash, the metric points between the last
checkpoint and the crash stay in MLflow next to the points of the rerun of those steps (MLflow cannot delete metric
points); ``metrics.jsonl`` is truncated to the checkpoint and holds only the rerun.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hieros.files import write_atomic, write_json_atomic
from hieros.mappings import flatten

RUN_ID_FILE = "mlflow_run_id"
SYNC_FILE = "mlflow_sync.json"
PARENT_RUN_ENV = "HIEROS_PARENT_RUN_ID"
SWEEP_PARENT_FILE = "mlflow_parent.json"  # sweep parent run (in the sweep and job folders), by hieros.training.sweep
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH
RESERVED_KEYS = ("step", "time")


REWINDS_TAG = "hieros.rewinds"


def stale_ranges(tags: Mapping[str, str]) -> list[dict[str, int]]:
    """The rewinds recorded on a run (tag ``hieros.rewinds``): metric points with step > ``step`` logged before
    ``time_ms`` belong to a discarded stretch of training."""
    try:
        rewinds = json.loads(tags.get(REWINDS_TAG, "[]"))
    except ValueError:
        return []
    return [r for r in rewinds if isinstance(r, dict) and {"step", "time_ms"} <= set(r)]


def is_stale(step: int, timestamp_ms: int, rewinds: list[dict[str, int]]) -> bool:
    """Whether a metric point was discarded by a later resume (see :func:`stale_ranges`)."""
    return any(step > r["step"] and timestamp_ms < r["time_ms"] for r in rewinds)


class TrackingUnreachableError(RuntimeError):
    """The MLflow tracking store could not be reached at start (``logger.on_unreachable=fail``)."""


# --------------------------------------------------------------------------- metrics.jsonl
class MetricsFile:
    """``metrics.jsonl``: one JSON object per report, ``{"step": agent steps, "time": unix seconds, name: value}``.

    ``keep_bytes`` truncates the file first: a resumed run keeps exactly the lines written up to its checkpoint.
    A line is written whole or not at all: a failed write (disk full) cuts the file back to the previous line end.
    """

    def __init__(self, path: str | os.PathLike, keep_bytes: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._offset = min(int(keep_bytes), os.lseek(self._fd, 0, os.SEEK_END))
        os.ftruncate(self._fd, self._offset)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({key: _jsonable(value) for key, value in values.items()})
        data = (json.dumps(record) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._offset)
            raise
        self._offset += len(data)

    @property
    def offset(self) -> int:
        """Bytes of whole lines written so far: where a resumed run truncates to."""
        return self._offset

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


# --------------------------------------------------------------------------- helpers
def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI, or None for any other store."""
    return Path(uri[len("sqlite:///") :]).expanduser() if uri.startswith("sqlite:///") else None


def resolve_tracking_uri(uri: str | None, root: str | os.PathLike = "hieros-runs") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``uri``, else the sqlite store under ``root``; sqlite paths made absolute
    (so that the run, ``mlflow ui`` and the report find the same file from any directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri or f"sqlite:///{Path(root).expanduser().resolve()}/mlflow.db"
    path = sqlite_path(uri)
    return uri if path is None else f"sqlite:///{path.resolve()}"


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe(uri: str, timeout: float = 5.0) -> str | None:
    """None when the store answers, else why not (one line)."""
    if is_remote(uri):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                return None if response.status == 200 else f"GET /health answered {response.status}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            return f"{type(error).__name__}: {getattr(error, 'reason', error)}"
    try:
        from mlflow.tracking import MlflowClient

        with _sqlite_init_lock(uri):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure means the store cannot be used
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a sqlite store between processes of this host: MLflow creates and migrates the
    schema on first contact, and two runs doing that at once fail with 'duplicate column name'."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, values as text (lists as Python literals), truncated to
    MLflow's limits."""
    params = {}
    for key, value in flatten(config).items():
        text = "None" if value is None else str(value)
        params[key[:MAX_KEY]] = text[:MAX_PARAM_VALUE]
    return params


def git_info(start: Path | None = None) -> dict[str, str]:
    """``git_sha`` and ``git_dirty`` of the repository holding the hieros sources (empty if there is none)."""
    folder = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        if sha.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git_sha": sha.stdout.strip(), "git_dirty": str(bool(status.stdout.strip())).lower()}


def _hydra_config():
    """The Hydra config of the running job, or None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # noqa: BLE001 - not started by Hydra
        return None


def _is_multirun(hydra_cfg) -> bool:
    return hydra_cfg is not None and hydra_cfg.mode is not None and str(hydra_cfg.mode).endswith("MULTIRUN")


def read_sweep_parent(folder: str | os.PathLike) -> dict[str, str] | None:
    """``<folder>/mlflow_parent.json`` (``run_id``, ``tracking_uri``), or None when absent or unreadable."""
    try:
        record = json.loads((Path(folder) / SWEEP_PARENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("run_id") else None


def sweep_parent_run_id(run_dir: Path, uri: str, report: Callable[[str], None] = print) -> str | None:
    """The parent run of the sweep this job belongs to (``<run_dir>/mlflow_parent.json``), when it lives in the
    same store ``uri``."""
    record = read_sweep_parent(run_dir)
    if record is None:
        return None
    if record.get("tracking_uri") != uri:
        report(
            f"the sweep's MLflow parent run {record['run_id']} is in {record.get('tracking_uri')}, this job logs to "
            f"{uri}: no parent (export the same MLFLOW_TRACKING_URI on the submitting host and in the jobs)"
        )
        return None
    return str(record["run_id"])


def hydra_job_info() -> dict[str, str]:
    """Run name, overrides and job number from Hydra when the run was started through it."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is None:
        return {}
    info = {}
    overrides = [str(item) for item in hydra_cfg.overrides.get("task") or []]
    if overrides:
        info["overrides"] = " ".join(overrides)
    if _is_multirun(hydra_cfg):
        info["hydra.job.num"] = str(hydra_cfg.job.num)
        override_dirname = hydra_cfg.job.get("override_dirname") or ""
        if override_dirname:  # a sweep job is named by what it overrides
            info["override_dirname"] = override_dirname
    choices = hydra_cfg.runtime.get("choices") or {}
    for group in ("model", "hierarchy", "training", "fabric", "experiment"):
        if choices.get(group):
            info[f"choice.{group}"] = str(choices[group])
    if choices.get("hydra/launcher"):
        info["choice.launcher"] = str(choices["hydra/launcher"])
    return info


def run_tags(
    config: Mapping[str, Any], run_dir: Path, uri: str | None = None, report: Callable[[str], None] = print
) -> dict[str, str]:
    """Tags of a training run: overrides, component choices, seed, game, depth, Hydra job number, SLURM job id,
    git commit, where the run lives, and its parent run (``uri``: the store the run is logged to)."""
    env = config.get("env", {})
    tags = {
        "run_dir": str(run_dir),
        "seed": str(config.get("seed")),
        "env": str(env.get("name")),
        "seq_model": str(config.get("sequence_model", {}).get("name")),
        "sampler": str(config.get("sampler", {}).get("name")),
        "goal": str(config.get("goal_encoding", {}).get("name")),
        "hierarchy.layers": str(config.get("hierarchy", {}).get("layers")),
        "hierarchy.k": str(config.get("hierarchy", {}).get("k")),
    }
    for key in ("game", "id"):
        if key in env:
            tags[f"env.{key}"] = str(env[key])
    job = hydra_job_info()
    tags.update({key: value for key, value in job.items() if key != "override_dirname"})
    tags["mlflow.runName"] = job.get("override_dirname") or run_dir.name
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_JOB_ID")
    if slurm[0] and slurm[1]:
        tags["slurm_job_id"] = f"{slurm[0]}_{slurm[1]}"
    elif slurm[2]:
        tags["slurm_job_id"] = slurm[2]
    if os.environ.get("SLURM_RESTART_COUNT"):  # > 0 after a requeue (preemption, timeout, scontrol requeue)
        tags["slurm_restarts"] = os.environ["SLURM_RESTART_COUNT"]
    git = git_info()
    tags.update(git)
    if "git_sha" in git:
        tags["mlflow.source.git.commit"] = git["git_sha"]
    parent = os.environ.get(PARENT_RUN_ENV) or (sweep_parent_run_id(run_dir, uri, report) if uri else None)
    if parent:
        tags["mlflow.parentRunId"] = parent
    return {key[:MAX_KEY]: value[:MAX_TAG_VALUE] for key, value in tags.items()}


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another job created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _retry(action: Callable[[], Any], attempts: int = 4, delay: float = 1.0) -> Any:
    """Retry a store write with back-off (SQLite under concurrent sweep jobs answers 'database is locked')."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception:  # noqa: BLE001
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)
    return None


# --------------------------------------------------------------------------- trackers
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

    def describe(self) -> str:
        return "off (logger=none): metrics.jsonl and scores.json in the run directory"

    def close(self, status: str = "FINISHED", reason: str | None = None) -> None:
        pass


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
        self.experiment_name = str(config.get("experiment_name", "default"))
        self.client = None
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
            experiment_id = _retry(
                lambda: get_or_create_experiment(client, self.experiment_name, self.artifact_location)
            )
            run = _retry(lambda: client.create_run(experiment_id, tags=tags, run_name=tags.get("mlflow.runName")))
            self.sync = {"run_id": run.info.run_id, "metrics_offset": 0, "files": {}}
        elif run.info.status != "RUNNING":
            _retry(lambda: client.update_run(run.info.run_id, status="RUNNING"))
        self.run_id = run.info.run_id
        self.sync["run_id"] = self.run_id
        write_atomic(self.run_dir / RUN_ID_FILE, self.run_id + "\n")
        self._write_sync_state()
        self._log_params_and_tags(client, run, tags)
        if self._rewind is not None:
            rewinds = [*stale_ranges(run.data.tags), self._rewind]
            _retry(lambda: client.set_tag(self.run_id, REWINDS_TAG, json.dumps(rewinds)))
            self._rewind = None
        self.client = client
        self._backoff = self.sync_seconds

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
            _retry(lambda p=params_chunk, t=tags_chunk: client.log_batch(self.run_id, params=p, tags=t))

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
                    self._backoff = min(self._backoff * 2, 600.0)
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
            self._thread.join(timeout=120)
            if self._thread.is_alive():  # stuck in a store call: leave the rest to the next run of the command
                self.report(f"MLflow store {self.uri} does not answer; re-run the same command later to sync")
                return
            self._thread = None
        if self._sync_once(final=True) and self.client is not None:
            try:
                if reason:
                    _retry(lambda: self.client.set_tag(self.run_id, "hieros.failure", reason[:5000]))
                _retry(lambda: self.client.set_terminated(self.run_id, status=status))
            except Exception as error:  # noqa: BLE001
                self.report(f"could not mark MLflow run {self.run_id} {status} ({error})")
        else:
            self.report(
                f"MLflow store {self.uri} unreachable: {self.pending() or 'some records'} not synced yet; they stay in "
                f"{self.run_dir} -- run the same command again once the store is back to sync them"
            )


def make_tracker(
    config: Mapping[str, Any], run_dir: Path, report: Callable[[str], None], run_id_hint: str | None = None
) -> Tracker:
    logger_cfg = config.get("logger") or {}
    name = logger_cfg.get("name", "none")
    if name == "none":
        return Tracker()
    if name == "mlflow":
        return MlflowTracker(run_dir, config, logger_cfg, report=report, run_id_hint=run_id_hint)
    raise ValueError(f"logger.name={name!r} is invalid: allowed is mlflow | none")
