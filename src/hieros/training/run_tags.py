"""What labels a training run in MLflow: its tags and its params.

Tags (:func:`run_tags`): MLflow's own context tags as ``mlflow.start_run`` sets them (:func:`source_tags`:
``mlflow.user``, ``mlflow.source.name``/``type``, the git commit of the entry script, ...), then ours, which win:
overrides, component choices, seed, game, depth, Hydra job number, SLURM job id and
restarts, git commit, run directory, and ``mlflow.parentRunId``: ``HIEROS_PARENT_RUN_ID`` if set, else the parent run
of the sweep the job belongs to, read from ``<run_dir>/mlflow_parent.json``, which the sweep callback writes (see
:mod:`hieros.training.sweep`). Params (:func:`flat_params`): the flattened resolved config as text. All truncated to
MLflow's limits (:mod:`~hieros.training.mlflow_store`).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hieros.mappings import flatten
from hieros.training.mlflow_store import MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE

PARENT_RUN_ENV = "HIEROS_PARENT_RUN_ID"
SWEEP_PARENT_FILE = "mlflow_parent.json"  # sweep parent run (in the sweep and job folders), by hieros.training.sweep
COMPONENT_GROUPS = ("model", "hierarchy", "training", "fabric", "experiment")  # Hydra choices tagged as choice.<group>


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, values as text (lists as Python literals), truncated to
    MLflow's limits."""
    params = {}
    for key, value in flatten(config).items():
        text = "None" if value is None else str(value)
        params[key[:MAX_KEY]] = text[:MAX_PARAM_VALUE]
    return params


def source_tags() -> dict[str, str]:
    """MLflow's context tags for a run started here (``mlflow.tracking.context.registry.resolve_tags``): user, source
    script and type, git commit/branch/repo URL when the entry script lives in a git checkout, and whatever context
    plugins add (Databricks, SLURM ...). Empty when they cannot be resolved."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {str(key): str(value) for key, value in resolve_tags().items()}
    except Exception:  # noqa: BLE001 - a context provider failing must not stop a run
        return {}


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


def sweep_job_name(hydra_cfg, sweep_keys: list[str] | None) -> str:
    """A sweep job's run name: its overrides of the swept keys, sorted (``hierarchy.layers=2,seed=1``); without them
    (no sweep record, or none matches) Hydra's ``override_dirname``, from which
    ``hydra.job.config.override_dirname.exclude_keys`` (conf/config.yaml) drops settings that do not change results."""
    dirname = str(hydra_cfg.job.get("override_dirname") or "")
    if not sweep_keys:
        return dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    style = hydra_cfg.job.config.override_dirname
    exclude = set(style.exclude_keys or [])
    try:
        overrides = OverridesParser.create().parse_overrides([str(item) for item in hydra_cfg.overrides.task or []])
    except Exception:  # noqa: BLE001 - Hydra parsed them already; never fail a run over its name
        return dirname
    lines = sorted(
        str(item.input_line)
        for item in overrides
        if item.key_or_group in sweep_keys and item.key_or_group not in exclude
    )
    return str(style.item_sep).join(line.replace("=", str(style.kv_sep)) for line in lines) or dirname


def hydra_job_info(sweep_keys: list[str] | None = None) -> dict[str, str]:
    """Run name, overrides and job number from Hydra when the run was started through it (``sweep_keys``: the keys
    the sweep varies, which name a sweep job's run)."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is None:
        return {}
    info = {}
    overrides = [str(item) for item in hydra_cfg.overrides.get("task") or []]
    if overrides:
        info["overrides"] = " ".join(overrides)
    if _is_multirun(hydra_cfg):
        info["hydra.job.num"] = str(hydra_cfg.job.num)
        name = sweep_job_name(hydra_cfg, sweep_keys)
        if name:  # a sweep job is named by what it overrides
            info["override_dirname"] = name
    choices = hydra_cfg.runtime.get("choices") or {}
    for group in COMPONENT_GROUPS:
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
        **source_tags(),
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
    record = read_sweep_parent(run_dir) or {}
    job = hydra_job_info(record.get("sweep_keys"))
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
