"""``python -m hieros [overrides]``: compose the config, validate it, train.

Examples::

    python -m hieros                                   # the paper's Atari100k run (3 levels, paper size)
    python -m hieros env.game=breakout seed=1
    python -m hieros +experiment=cartpole_depth1       # a CPU-scale run
    python -m hieros --cfg job                          # print the composed config
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hieros.config import ConfigError, validate
from hieros.registry import Registry, RegistryError
from hieros.training.objective import ObjectiveError, objective_problem, objective_value


def group_choices() -> dict[str, str | None]:
    """This run's config group choices (``sampler: etbs``, ``hydra/sweeper: optuna``, ...)."""
    return dict(HydraConfig.get().runtime.choices)


def optimising() -> bool:
    """A multirun whose sweeper uses what each job returns (any sweeper but Hydra's basic grid sweeper)."""
    sweeper = group_choices().get("hydra/sweeper")
    return HydraConfig.get().mode == RunMode.MULTIRUN and sweeper not in (None, "basic")


def reference_config() -> DictConfig | None:
    """The config of this run's group choices without the experiment overlay and key overrides (the key schema), or
    None where Hydra cannot compose here (then only the value rules apply)."""
    choices = group_choices()
    overrides = [
        f"{group}={option}"
        for group, option in choices.items()
        if option is not None and group != "experiment" and not group.startswith("hydra")
    ]
    try:
        return hydra.compose(config_name="config", overrides=overrides)
    except Exception:  # noqa: BLE001 - e.g. a launcher job process without Hydra's global state
        return None


def run(cfg: DictConfig) -> float | None:
    """Validate, then train in the Hydra run directory (a sweep job's own directory under multirun); returns the
    metric ``training.objective`` names (:mod:`hieros.training.objective`), the number an optimising sweeper gets."""
    registry = Registry.default()
    searching = optimising()
    try:
        validate(cfg, registry, reference=reference_config(), choices=group_choices())
        if searching and (problem := objective_problem(cfg)):
            raise ConfigError(problem)
    except (ConfigError, RegistryError) as error:
        print(f"hieros: invalid config: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from hieros.replay import ReplayDiskFullError
    from hieros.training.checkpoint import CheckpointWriteError, IncompatibleCheckpointError, ResumeError
    from hieros.training.loop import train
    from hieros.training.run_lock import RunDirBusyError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        scores = train(cfg, registry, run_dir)
    except (
        ConfigError,  # one only the machine can show (16-mixed with accelerator=auto and no GPU)
        RunDirBusyError,
        CheckpointWriteError,
        IncompatibleCheckpointError,
        ResumeError,
        ReplayDiskFullError,
    ) as error:
        print(f"hieros: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return objective_value(cfg.training.objective, scores, run_dir / "metrics.jsonl")
    except ObjectiveError as error:
        if not searching:  # a single run or a grid sweep does not use the value
            return None
        print(f"hieros: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path="pkg://hieros.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run(cfg)


def main() -> None:
    try:
        _hydra_main()
    except KeyboardInterrupt:  # a second Ctrl-C (the first one checkpoints and exits 130 by itself)
        print("hieros: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as exit_:
        # Hydra reports its own user errors (unknown group option or experiment, a key override without `+`, bad
        # syntax) with a short message and status 1 before any job starts; they are config errors like ours: 2.
        if exit_.code == 1 and not HydraConfig.initialized():  # set by Hydra only once a job runs
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
