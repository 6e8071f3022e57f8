"""Loader of an MLflow experiment or (parent) run: one :class:`~hieros.report.records.RunRecord` per job run, with
missing artifacts and metrics reported, not raised; plus the default tracking URI and a switch for MLflow's download
progress bars.

The MLflow mirror (``hieros.training.tracking``): params = the flattened resolved config as text, metrics named as
in metrics.jsonl on the agent-step axis, artifacts ``scores.json``, ``metrics.jsonl`` (at the end), ``config/`` and
``media/``; a sweep's jobs carry the tag ``mlflow.parentRunId``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from hieros.report.curves import curve_from_points, read_metrics_jsonl, wanted_metric
from hieros.report.flat_config import parse_param
from hieros.report.records import (
    DEFAULT_METRICS,
    MEDIA_SUFFIXES,
    Curve,
    Media,
    Problem,
    RunRecord,
    Sweep,
    media_kind,
    media_step,
)


@contextlib.contextmanager
def quiet_artifact_downloads():
    """Switch off MLflow's per-download progress bars for the duration of the block (restored afterwards)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the sqlite store the training runs use: ``sqlite:///<HIEROS_HOME>/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("HIEROS_HOME", "hieros-runs")).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def load_mlflow(
    source: str, tracking_uri: str | None = None, metrics: Sequence[str] = DEFAULT_METRICS, all_sweeps: bool = False
) -> Sweep:
    """An MLflow experiment name or a (parent) run id -> :class:`Sweep`.

    A parent run id selects its child runs (a run without children is loaded on its own). An experiment name
    selects the children of its newest parent run (``all_sweeps=True``: every job run of the experiment); runs that
    are parents are never loaded as jobs. Missing artifacts and metrics are reported, not raised.
    """
    import logging

    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # opening a missing sqlite store would create an empty one: say what was looked for instead
        raise FileNotFoundError(
            f"{source!r} is not a directory, and there is no MLflow store at {uri} to look it up in as an experiment "
            f"name or run id: pass a sweep directory, or --tracking-uri / MLFLOW_TRACKING_URI of your store"
        )
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Updating database tables" on open
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(source)
    notes: list[str] = []
    if experiment is not None:
        runs = _search_runs(client, [experiment.experiment_id])
        evaluations = [run for run in runs if "hieros.eval_of" in run.data.tags]
        if evaluations:
            notes.append(f"{len(evaluations)} stand-alone evaluation run(s) of hieros-eval were not counted as jobs.")
            runs = [run for run in runs if "hieros.eval_of" not in run.data.tags]
        parent_ids = {run.data.tags.get("mlflow.parentRunId") for run in runs} - {None}
        jobs = [run for run in runs if run.info.run_id not in parent_ids]
        parents = sorted(
            (run for run in runs if run.info.run_id in parent_ids), key=lambda run: run.info.start_time or 0
        )
        parent_id = parents[-1].info.run_id if parents else None
        if len(parents) > 1 and not all_sweeps:
            jobs = [run for run in jobs if run.data.tags.get("mlflow.parentRunId") == parent_id]
            notes.append(
                f"Experiment {source!r} holds {len(parents)} sweeps (parent runs); this report covers the newest, "
                f"{parent_id} ({parents[-1].info.run_name}). Pass a parent run id to report another one."
            )
        elif len(parents) > 1:
            notes.append(f"Runs of {len(parents)} sweeps of experiment {source!r} were pooled.")
    else:
        try:
            run = client.get_run(source)
        except Exception as error:  # noqa: BLE001 - mlflow raises MlflowException subclasses for unknown ids
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise ValueError(
                f"{source!r} is not a directory, an MLflow experiment name or a run id in {uri} "
                f"(experiments there: {names}). Set MLFLOW_TRACKING_URI or pass --tracking-uri for another store."
            ) from error
        children = _search_runs(client, [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        jobs, parent_id = (children, run.info.run_id) if children else ([run], run.info.run_id)
    sweep = Sweep(source=source, kind="mlflow", records=[], tracking_uri=uri, parent_run_id=parent_id, notes=notes)
    if not jobs:
        sweep.problems.append(Problem("no runs", f"MLflow source {source!r} holds no job runs"))
    with tempfile.TemporaryDirectory(prefix="hieros-report-") as scratch, quiet_artifact_downloads():
        for index, run in enumerate(jobs):
            sweep.records.append(_mlflow_record(client, run, metrics, Path(scratch) / str(index)))
    return sweep


def _search_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=1000, page_token=token, order_by=["attributes.start_time ASC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _list_artifacts(client, run_id: str, path: str | None = None, depth: int = 3) -> list[tuple[str, int | None]]:
    """(artifact path, size) of every file up to ``depth`` folders deep."""
    files = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            if depth > 0:
                files.extend(_list_artifacts(client, run_id, info.path, depth - 1))
        else:
            files.append((info.path, info.file_size))
    return files


def _mlflow_record(client, run, metrics: Sequence[str], scratch: Path) -> RunRecord:
    run_id = run.info.run_id
    problems: list[str] = []
    config = {key: parse_param(value) for key, value in run.data.params.items()}
    for key in ("env.name", "env.game", "env.id", "seed", "experiment_name"):  # run tags as a fallback
        if key not in config and key in run.data.tags:
            config[key] = parse_param(run.data.tags[key])
    if not config:
        problems.append(f"MLflow run {run_id} has no params: game, seed and variant unknown")
    try:
        artifacts = _list_artifacts(client, run_id)
    except Exception as error:  # noqa: BLE001
        artifacts = []
        problems.append(f"artifacts of run {run_id} unreadable ({error})")
    by_name: dict[str, list[str]] = defaultdict(list)
    for artifact_path, _ in artifacts:
        by_name[Path(artifact_path).name].append(artifact_path)
    scores = None
    for artifact_path in sorted(by_name.get("scores.json", []), key=lambda p: p.count("/")):
        try:
            local = client.download_artifacts(run_id, artifact_path, str(_fresh(scratch)))
            scores = json.loads(Path(local).read_text())
            break
        except Exception as error:  # noqa: BLE001
            problems.append(f"artifact {artifact_path} of run {run_id} unreadable ({error})")
    curves: dict[str, Curve] = {}
    # A finished run's metrics.jsonl artifact holds every curve in one download; a running or crashed run (or one
    # without that artifact) is read from its MLflow metric histories, one query per metric.
    if run.info.status != "RUNNING" and by_name.get("metrics.jsonl"):
        try:
            local = client.download_artifacts(run_id, sorted(by_name["metrics.jsonl"])[0], str(_fresh(scratch)))
            curves, bad_lines = read_metrics_jsonl(Path(local), metrics)
            problems.extend(bad_lines)
        except Exception as error:  # noqa: BLE001
            problems.append(f"metrics.jsonl artifact of run {run_id} unreadable ({error}); using metric histories")
    if not curves:
        from hieros.training.mlflow_store import is_stale, stale_ranges  # here: no training module at import time

        for name in sorted(run.data.metrics):
            if not wanted_metric(name, metrics):
                continue
            try:
                history = client.get_metric_history(run_id, name)
            except Exception as error:  # noqa: BLE001
                problems.append(f"metric {name} of run {run_id} unreadable ({error})")
                continue
            rewinds = stale_ranges(run.data.tags)  # points a resume discarded (MLflow keeps them)
            history = [m for m in history if not is_stale(m.step, m.timestamp, rewinds)]
            if history:
                curves[name] = curve_from_points([(m.step, m.value) for m in history])
    media = [
        Media(media_kind(path), Path(path).name, media_step(path), artifact=(run_id, path))
        for path, _ in artifacts
        if Path(path).suffix.lower() in MEDIA_SUFFIXES
    ]
    if isinstance(scores, dict):
        status = "finished"
    else:
        scores = None
        status = {"RUNNING": "running", "SCHEDULED": "running", "FAILED": "crashed", "KILLED": "crashed"}.get(
            run.info.status, "finished without scores.json"
        )
    return RunRecord(
        run=run_id,
        location=f"mlflow run {run_id} ({run.info.run_name})",
        config=config,
        status=status,
        scores=scores,
        curves=curves,
        media=media,
        problems=problems,
    )


def _fresh(scratch: Path) -> Path:
    folder = scratch / str(len(list(scratch.glob("*"))) if scratch.exists() else 0)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
