"""The MLflow tracking store as every hieros tool meets it: which store (:func:`resolve_tracking_uri`), whether it
answers (:func:`probe`), MLflow's size limits, experiments, retried writes, and the ``hieros.rewinds`` tag that marks
metric points a resume discarded (:func:`stale_ranges`, read back by ``hieros-report``).

Used by the run mirror (:mod:`~hieros.training.mlflow_mirror`), the sweep parent run (:mod:`~hieros.training.sweep`),
``hieros-eval``, ``hieros-diagnose`` and ``hieros-report``. Imports neither torch nor mlflow at import time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH

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


def retry(action: Callable[[], Any], attempts: int = 4, delay: float = 1.0) -> Any:
    """Retry a store write with back-off (SQLite under concurrent sweep jobs answers 'database is locked')."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception:  # noqa: BLE001
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)
    return None
