"""Run configs as flat dicts with dotted keys (``model.seq_blocks``): a Hydra ``config.yaml`` / ``multirun.yaml``,
an MLflow param (always text) turned back into a value, and the package's own default config (to pick a baseline)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from hieros.mappings import flatten


def parse_param(text: Any) -> Any:
    """An MLflow param (always a string) back to a Python value: ``"3"`` -> 3, ``"True"`` -> True, ``"None"`` -> None,
    ``"['a', 'b']"`` -> list; anything else stays a string."""
    if not isinstance(text, str):
        return text
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return {"true": True, "false": False, "none": None, "null": None}.get(text.strip().lower(), text)


def load_config_file(path: Path) -> dict[str, Any]:
    """Flattened config of a Hydra ``config.yaml``/``multirun.yaml`` with interpolations resolved where they can be
    (``${model.seq_blocks}`` resolves; ``${now:...}`` or a missing env var keep their raw text)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    config = OmegaConf.load(path)

    def walk(node: DictConfig, prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key in node:
            name = f"{prefix}{key}"
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - unresolvable interpolation: keep the raw text
                flat[name] = OmegaConf.to_container(node, resolve=False)[key]
                continue
            if isinstance(value, DictConfig):
                flat.update(walk(value, name + ".") if len(value) else {name: {}})
            elif isinstance(value, ListConfig):
                try:
                    flat[name] = OmegaConf.to_container(value, resolve=True)
                except Exception:  # noqa: BLE001
                    flat[name] = OmegaConf.to_container(value, resolve=False)
            else:
                flat[name] = value
        return flat

    return walk(config, "") if isinstance(config, DictConfig) else {}


def package_defaults(experiment: str | None = None) -> dict[str, Any]:
    """The flattened default config of the installed package (with ``+experiment=<experiment>`` if that file
    exists); empty if it cannot be composed."""
    try:
        from hydra import compose, initialize_config_module
        from omegaconf import OmegaConf

        overrides = []
        if experiment:
            from importlib import resources

            if resources.files("hieros.conf").joinpath("experiment", f"{experiment}.yaml").is_file():
                overrides.append(f"+experiment={experiment}")
        with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
            config = compose(config_name="config", overrides=overrides)
        container = OmegaConf.to_container(config, resolve=False)
        return {k: v for k, v in flatten(container).items() if not (isinstance(v, str) and "${" in v)}
    except Exception:  # noqa: BLE001 - defaults only choose the baseline; without them the first variant is used
        return {}
