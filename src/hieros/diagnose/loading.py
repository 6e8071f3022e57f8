"""Loading a run directory for the diagnostics: the agent rebuilt from its newest checkpoint and every level's replay
opened read-only (:func:`load_run`, :class:`LoadedRun`); :class:`DiagnoseError` says what is missing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

NON_OBS_FIELDS = ("action", "reward", "is_first", "is_last", "is_terminal", "goal_code")
"""Replay fields that are not observations (every other field of a level's replay is an encoder input)."""


class DiagnoseError(RuntimeError):
    """The run directory cannot be diagnosed; the message says what is missing and how to fix it."""


@dataclass
class LoadedRun:
    """A run directory's newest checkpoint, rebuilt: the agent with its weights, each level's replay (read-only;
    None for a level without its own world model), the resolved config and where it came from."""

    run_dir: Path
    checkpoint: Path
    step: int
    config: dict[str, Any]
    payload: dict[str, Any]
    agent: Any
    replays: list[Any] = field(default_factory=list)
    obs_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_actions: int = 0
    warnings: list[str] = field(default_factory=list)


def _replay_layout(folder: Path) -> dict[str, Any]:
    layout_file = folder / "replay.json"
    if not layout_file.is_file():
        raise DiagnoseError(
            f"replay folder {folder} is missing (or has no replay.json): diagnose reads the run's replay next to its "
            f"checkpoints; copy the whole run directory, replay/ included"
        )
    try:
        return json.loads(layout_file.read_text())
    except (OSError, ValueError) as error:
        raise DiagnoseError(f"{layout_file} is unreadable ({error}); the replay folder is damaged") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the agent of ``run_dir``'s newest good checkpoint and open every level's replay read-only with the
    checkpoint's replay state. Observation shapes and the action count come from level 0's replay layout, so the
    environment need not be installed. Raises :class:`DiagnoseError` with what to do."""
    from hieros.agent.hierarchy import Hierarchy
    from hieros.registry import Registry
    from hieros.replay import Replay
    from hieros.training.checkpoint import CheckpointDir, from_storable

    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise DiagnoseError(f"run directory {run_dir} does not exist: pass the folder a training run wrote")
    folder = run_dir / "checkpoints"
    warnings: list[str] = []
    loaded = CheckpointDir(folder).load_latest(report=warnings.append, map_location="cpu")
    if loaded is None:
        raise DiagnoseError(
            f"no usable checkpoint in {folder}: train first (python -m hieros hydra.run.dir={run_dir}) or pass the "
            f"directory of a run that has written one (training.checkpoint_every)"
        )
    payload, config = loaded.payload, loaded.payload["config"]
    layout = _replay_layout(run_dir / "replay" / "level0")
    fields = layout.get("fields", {})
    obs_shapes = {name: tuple(entry["shape"]) for name, entry in fields.items() if name not in NON_OBS_FIELDS}
    if "action" not in fields or not obs_shapes:
        raise DiagnoseError(f"{run_dir / 'replay' / 'level0' / 'replay.json'} lists no observation or action field")
    num_actions = int(fields["action"]["shape"][0])
    registry = Registry.default()
    try:
        agent = Hierarchy(config, registry, obs_shapes, num_actions)
    except (KeyError, TypeError, ValueError) as error:
        raise DiagnoseError(
            f"the config stored in {loaded.path} does not build an agent with this version of hieros "
            f"({type(error).__name__}: {error}); diagnose it with the hieros version that trained it"
        ) from None
    try:
        agent.load_state_dict(payload["agent"])
    except RuntimeError as error:
        raise DiagnoseError(
            f"checkpoint {loaded.path} does not fit the agent its config builds ({str(error).splitlines()[0]}); "
            f"it was written by another version of hieros"
        ) from None
    agent = agent.to(device).eval()
    training = config["training"]
    replays = []
    for index, spec in enumerate(agent.replay_specs()):
        if spec is None:
            replays.append(None)
            continue
        directory = run_dir / "replay" / f"level{index}"
        _replay_layout(directory)
        state = payload.get(f"replay/level{index}")
        if state is None:
            raise DiagnoseError(f"checkpoint {loaded.path} holds no replay state for level {index}")
        try:
            replay = Replay(
                spec,
                capacity=training["replay_capacity"],
                num_streams=training["num_envs"],
                window=training["batch_length"],
                sampler=registry.build("sampler", config["sampler"]),
                directory=directory,
                read_only=True,
            )
            replay.load_state_dict(from_storable(state))
        except (ValueError, FileNotFoundError) as error:
            raise DiagnoseError(f"cannot open the replay of level {index} in {directory}: {error}") from None
        replays.append(replay)
    return LoadedRun(
        run_dir=run_dir,
        checkpoint=loaded.path,
        step=int(payload.get("counters", {}).get("step", loaded.step)),
        config=config,
        payload=payload,
        agent=agent,
        replays=replays,
        obs_shapes=obs_shapes,
        num_actions=num_actions,
        warnings=warnings,
    )
