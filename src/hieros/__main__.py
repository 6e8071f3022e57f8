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
from omegaconf import DictConfig, OmegaConf

from hieros.config import ConfigError, validate
from hieros.registry import Registry, RegistryError
from hieros.startup_errors import StartupStderr, release_stderr, startup_error_line
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


def hydra_record(cfg: DictConfig) -> dict[str, str]:
    """The ``.hydra/`` files Hydra writes at job start (config, hydra, overrides), for the loop to write once the run
    may start: ``hydra.output_subdir`` is null, so a refused rerun cannot overwrite the record of the run it refused."""
    hydra_cfg = HydraConfig.instance().cfg
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


def run(cfg: DictConfig) -> float | None:
    """Validate, then train in the Hydra run directory (a sweep job's own directory under multirun); returns the
    metric ``training.objective`` names (:mod:`hieros.training.objective`), the number an optimising sweeper gets."""
    release_stderr()
    registry = Registry.default()
    searching = optimising()
    try:
        validate(cfg, registry, reference=reference_config(), choices=group_choices())
        if searching and (problem := objective_problem(cfg)):
            raise ConfigError(problem)
        from hieros.envs.check import check_env  # here: importing hieros.__main__ loads no component module

        check_env(registry, cfg.env)  # an unknown game or gym id, a missing ROM: before any file or MLflow run
    except (ConfigError, RegistryError) as error:
        print(f"hieros: invalid config: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from hieros.replay import ReplayDiskFullError
    from hieros.training.checkpoint import CheckpointWriteError, IncompatibleCheckpointError, ResumeError
    from hieros.training.loop import train
    from hieros.training.run_lock import RunDirBusyError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        scores = train(cfg, registry, run_dir, hydra_record=hydra_record(cfg))
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
    multirun = any(arg in ("-m", "--multirun") for arg in sys.argv[1:])
    # single runs: hold stderr until the job starts, so that Hydra's multi-line reports become one line; a sweep's
    # launcher output is never held back
    startup = None if multirun else StartupStderr(sys.stderr)
    if startup is not None:
        sys.stderr = startup
    try:
        _hydra_main()
    except KeyboardInterrupt:  # a second Ctrl-C (the first one checkpoints and exits 130 by itself)
        print("hieros: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as exit_:
        # Hydra reports its own user errors (unknown group option or experiment, a key override without `+`, bad
        # syntax, a run directory it cannot create) and exits 1 before any job starts: config errors like ours, 2.
        if exit_.code == 1 and not HydraConfig.initialized():  # set by Hydra only once a job runs
            line = startup_error_line(startup.held()) if startup is not None and not startup.released else ""
            if line is None:  # a traceback of a bug: shown as it is, status 1
                startup.release()
                raise
            if line:
                startup.released = True  # drop Hydra's own report
                sys.stderr = startup.real
                print(f"hieros: invalid config: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        if startup is not None:
            startup.release()


if __name__ == "__main__":
    main()
