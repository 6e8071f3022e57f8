"""Whether a run resumes, and from what: the checks made before anything in the run directory is written.

``training.resume`` (auto | must | never) picks the checkpoint (:func:`resume_point`); the loop then checks its config
(:func:`~hieros.training.checkpoint.check_compatible`) and its replay data (:func:`check_replay_data`). A run that
already finished only re-syncs its tracker (:func:`finished_scores`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hieros.replay.buffer import storage_problem
from hieros.training.checkpoint import CheckpointDir, Loaded, ResumeError


def resume_point(checkpoints: CheckpointDir, mode: str, report: Callable[[str], None]) -> Loaded | None:
    """The checkpoint to resume from under ``training.resume`` (auto | must | never), or None for a fresh start.

    Refuses (:class:`ResumeError`) rather than start over on top of a previous run: ``auto`` when checkpoint files
    exist but none is usable, ``must`` without a usable checkpoint, ``never`` when the directory has checkpoints.
    """
    where = checkpoints.directory
    if mode == "never":
        if checkpoints.paths() or checkpoints.unusable():
            raise ResumeError(
                f"{where} holds checkpoints of an earlier run and training.resume=never: train in another directory "
                "(hydra.run.dir=...) or resume it with training.resume=auto"
            )
        return None
    latest = checkpoints.load_latest(report=report)
    if latest is not None:
        return latest
    unusable = checkpoints.unusable()
    if unusable:
        raise ResumeError(
            f"no usable checkpoint in {where} ({len(unusable)} unreadable or corrupt: {', '.join(unusable[:3])}); "
            "refusing to start over from step 0 on top of that run: move those files away to start afresh here, or "
            "train in another directory (hydra.run.dir=...)"
        )
    if mode == "must":
        raise ResumeError(f"training.resume=must but {where} holds no checkpoint: check hydra.run.dir")
    return None


def check_replay_data(latest: Loaded, run_dir: Path) -> None:
    """Before anything is written: every level's replay data the checkpoint needs is on disk and is its own."""
    for key, state in latest.payload.items():
        if key.startswith("replay/") and isinstance(state, Mapping):
            problem = storage_problem(run_dir / "replay" / key.split("/", 1)[1], state)
            if problem:
                raise ResumeError(
                    f"cannot resume from {latest.path.name}: {problem}; restore that folder from a backup, or train "
                    f"afresh in another directory (hydra.run.dir=...). Nothing in {run_dir} was changed."
                )


def finished_scores(run_dir: Path, step: int) -> dict[str, Any] | None:
    """scores.json of a run that already finished at ``step`` (a rerun then only syncs the tracker)."""
    try:
        scores = json.loads((run_dir / "scores.json").read_text())
    except (OSError, ValueError):
        return None
    return scores if isinstance(scores, dict) and scores.get("agent_steps") == step else None
