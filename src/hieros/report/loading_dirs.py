"""Loader of a Hydra sweep directory (or one run directory, or a folder of several sweeps): one
:class:`~hieros.report.records.RunRecord` per job folder, problems for anything missing or unreadable, the jobs a
multirun should have launched, and the newest local sweep.

Run directory layout (written by ``hieros.training.loop``)::

    <sweep>/multirun.yaml                 Hydra's master config of the sweep (sweep overrides in hydra.overrides.task)
    <sweep>/<job number>/.hydra/config.yaml, overrides.yaml   (unresolved; written by Hydra at job start)
    <sweep>/<job number>/config.yaml      the resolved config (written by the loop)
    <sweep>/<job number>/scores.json      final_eval.{mode}.mean, train_return_last10pct, agent_steps, ...
    <sweep>/<job number>/metrics.jsonl    {"step": ..., "time": ..., "episode/score": ..., "train/level0/...": ...}
    <sweep>/<job number>/media/           open_loop_step<N>.gif/.mp4, subgoals_step<N>.gif/.mp4
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hieros.report.curves import read_metrics_jsonl
from hieros.report.flat_config import load_config_file
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

_SKIP_DIRS = frozenset({"replay", "checkpoints", ".hydra", ".submitit", "report", "__pycache__"})


def find_job_dirs(root: Path, depth: int = 3) -> list[Path]:
    """Run directories under ``root``: folders holding ``.hydra/``, ``scores.json`` or ``metrics.jsonl``, and the
    numbered folders of a Hydra multirun (kept even when empty, so a job that died at once is reported)."""
    root = Path(root)
    if _is_job_dir(root):
        return [root]
    found: list[Path] = []
    frontier = [root]
    for _ in range(depth):
        next_frontier = []
        for folder in frontier:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS):
                if _is_job_dir(child) or (child.name.isdigit() and (folder / "multirun.yaml").is_file()):
                    found.append(child)
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else 0, p.name))


def _is_job_dir(folder: Path) -> bool:
    return any((folder / name).exists() for name in (".hydra/config.yaml", "scores.json", "metrics.jsonl"))


def find_media(folder: Path) -> list[Media]:
    """Videos under a run directory (replay and checkpoints skipped)."""
    media = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in MEDIA_SUFFIXES and not (_SKIP_DIRS & set(path.relative_to(folder).parts[:-1])):
            media.append(Media(media_kind(path.name), path.name, media_step(path.name), path=path))
    return media


def load_run_dir(folder: Path, metrics: Sequence[str] = DEFAULT_METRICS) -> RunRecord:
    """One job directory -> record (never raises for missing or broken files)."""
    folder = Path(folder)
    problems: list[str] = []
    config: dict[str, Any] = {}
    # The loop writes the resolved config to <run>/config.yaml; Hydra's .hydra/config.yaml (unresolved) also exists
    # for a job that died before the loop started.
    candidates = [path for path in (folder / "config.yaml", folder / ".hydra" / "config.yaml") if path.is_file()]
    for config_path in candidates:
        try:
            config = load_config_file(config_path)
            break
        except Exception as error:  # noqa: BLE001
            problems.append(f"{config_path}: unreadable ({error})")
    if not candidates:
        problems.append(f"{folder / '.hydra' / 'config.yaml'} missing: game, seed and variant unknown")
    scores = None
    scores_path = folder / "scores.json"
    if scores_path.is_file():
        try:
            scores = json.loads(scores_path.read_text())
        except (ValueError, OSError) as error:
            problems.append(f"{scores_path}: unreadable ({error})")
    curves: dict[str, Curve] = {}
    metrics_path = folder / "metrics.jsonl"
    if metrics_path.is_file():
        curves, bad_lines = read_metrics_jsonl(metrics_path, metrics)
        problems.extend(bad_lines)
    status = "finished" if isinstance(scores, dict) else "crashed or unfinished"
    return RunRecord(
        run=folder.name,
        location=str(folder),
        config=config,
        status=status,
        scores=scores if isinstance(scores, dict) else None,
        curves=curves,
        media=find_media(folder),
        problems=problems,
    )


def expected_jobs(master: Mapping[str, Any]) -> int | None:
    """Number of jobs a basic-sweeper multirun launches, from ``hydra.overrides.task`` and ``hydra.sweeper.params``
    of multirun.yaml; None when a sweep override is not a plain comma list (range(), glob(), ...)."""
    prefix = "hydra.sweeper.params."
    params = [f"{key[len(prefix) :]}={value}" for key, value in master.items() if key.startswith(prefix)]
    overrides = params + list(master.get("hydra.overrides.task") or [])
    grid: dict[str, int] = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        value = str(value)
        if any(token in value for token in ("(", "[", "{", "\\")):
            return None
        grid[key.lstrip("+~")] = len(value.split(",")) if value else 1
    return int(np.prod(list(grid.values()))) if grid else 1


def load_sweep_dir(path: str | Path, metrics: Sequence[str] = DEFAULT_METRICS) -> Sweep:
    """A Hydra multirun directory (or one run directory, or a folder of several sweeps) -> :class:`Sweep`."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    records = [load_run_dir(folder, metrics) for folder in find_job_dirs(root)]
    sweep = Sweep(source=str(root), kind="directory", records=records)
    if not records:
        sweep.problems.append(
            Problem("no runs", f"{root} holds no run directories (.hydra/config.yaml, scores.json or metrics.jsonl)")
        )
    if len({str(Path(r.location).parent) for r in records}) > 1:
        sweep.notes.append(f"Runs of several sweeps under {root} were pooled.")
    master_path = root / "multirun.yaml"
    if master_path.is_file():
        try:
            sweep.master_config = load_config_file(master_path)
        except Exception as error:  # noqa: BLE001
            sweep.problems.append(Problem("unreadable data", f"{master_path}: {error}"))
    if sweep.master_config is not None:
        expected = expected_jobs(sweep.master_config)
        numbers = {int(Path(r.location).name) for r in records if Path(r.location).name.isdigit()}
        if expected is not None and len(numbers) < expected:
            missing = sorted(set(range(expected)) - numbers)
            sweep.problems.append(
                Problem(
                    "missing job",
                    f"multirun.yaml describes {expected} jobs, {len(numbers)} job folders exist; "
                    f"missing job numbers: {', '.join(map(str, missing))}",
                )
            )
    from hieros.training.run_tags import read_sweep_parent  # here: no training module at import time

    parent = read_sweep_parent(root)  # written by the sweep callback (hieros.training.sweep) on the submitting host
    if parent is not None:
        sweep.parent_run_id, sweep.tracking_uri = str(parent["run_id"]), parent.get("tracking_uri")
    return sweep


def latest_sweep(home: str | Path | None = None) -> Path | None:
    """The newest ``multirun_*`` folder under ``$HIEROS_HOME/runs`` (default ``./hieros-runs/runs``)."""
    runs = Path(home or os.environ.get("HIEROS_HOME", "hieros-runs")) / "runs"
    sweeps = sorted(runs.glob("*/multirun_*"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    return sweeps[-1] if sweeps else None
