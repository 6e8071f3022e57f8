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


def run(cfg: DictConfig) -> dict | None:
    """Validate, then train in the Hydra run directory (a sweep job's own directory under multirun)."""
    registry = Registry.default()
    try:
        validate(cfg, registry)
    except (ConfigError, RegistryError) as error:
        print(f"hieros: invalid config: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from hieros.training.loop import train

    return train(cfg, registry, Path(HydraConfig.get().runtime.output_dir))


@hydra.main(version_base="1.3", config_path="pkg://hieros.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
    return run(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
