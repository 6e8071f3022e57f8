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
from omegaconf import DictConfig

from hieros.config import ConfigError, validate
from hieros.registry import Registry, RegistryError


def reference_config() -> DictConfig | None:
    """The config of this run's group choices without the experiment overlay and key overrides (the key schema), or
    None where Hydra cannot compose here (then only the value rules apply)."""
    choices = HydraConfig.get().runtime.choices
    overrides = [
        f"{group}={option}"
        for group, option in choices.items()
        if option is not None and group != "experiment" and not group.startswith("hydra")
    ]
    try:
        return hydra.compose(config_name="config", overrides=overrides)
    except Exception:  # noqa: BLE001 - e.g. a launcher job process without Hydra's global state
        return None


def run(cfg: DictConfig) -> dict | None:
    """Validate, then train in the Hydra run directory (a sweep job's own directory under multirun)."""
    registry = Registry.default()
    try:
        validate(cfg, registry, reference=reference_config())
    except (ConfigError, RegistryError) as error:
        print(f"hieros: invalid config: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from hieros.replay import ReplayDiskFullError
    from hieros.training.checkpoint import CheckpointWriteError, IncompatibleCheckpointError, ResumeError
    from hieros.training.loop import train
    from hieros.training.run_lock import RunDirBusyError

    try:
        return train(cfg, registry, Path(HydraConfig.get().runtime.output_dir))
    except (
        RunDirBusyError,
        CheckpointWriteError,
        IncompatibleCheckpointError,
        ResumeError,
        ReplayDiskFullError,
    ) as error:
        print(f"hieros: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path="pkg://hieros.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
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
