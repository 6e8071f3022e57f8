"""Build the configured environment once before a run writes anything, so that an unknown game or gym id, a missing
ROM or a bad environment argument is one line (exit 2) instead of a failure after the run directory and MLflow run
exist."""

from __future__ import annotations

from typing import Any

from hieros.config import ConfigError


def check_env(registry: Any, env_cfg: Any) -> None:
    """Make and close one environment of ``env_cfg``; raises :class:`ConfigError` with the environment's message."""
    from hieros.envs.vector import make_vector_env

    try:
        make_vector_env(registry, env_cfg, 1, seed=0, parallel=False).close()
    except (ValueError, TypeError, RuntimeError, LookupError, ImportError, OSError) as error:
        name = env_cfg.get("name", "?") if hasattr(env_cfg, "get") else "?"
        message = " ".join(str(error).split())  # gymnasium's messages span lines
        raise ConfigError(f"env={name} cannot be made here: {message}") from None
