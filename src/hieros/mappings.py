"""Small helpers for nested config mappings, shared by the registry, the env driver, checkpoints, tracking and the
report (torch-free, so the report can use them without importing the training package)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": leaf}; lists and empty mappings are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def plain_mapping(node: Any) -> dict[str, Any]:
    """A component's config node as a plain dict (resolved): a DictConfig, a mapping, or a bare name string.

    A plain dict pickles cheaply into spawned workers and cannot change under them."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    if isinstance(node, str):
        return {"name": node}
    return dict(node)
