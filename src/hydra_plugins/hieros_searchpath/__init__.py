"""Hydra search-path plugin: config folders of third-party hieros plugins.

A package that registers components through an entry point of the group ``hieros.plugins`` can also ship config
files: its entry-point module defines ``HIEROS_CONFIG_PATH = "pkg://my_plugin.conf"`` (or a ``file://`` path), a
folder laid out like ``conf/`` (``sampler/my_sampler.yaml``, ...). That path is appended to the search path of the
hieros app, so ``python -m hieros sampler=my_sampler`` finds the file. Nothing is imported when Hydra scans this
module; the plugin modules are imported when the search path is built.
"""

from __future__ import annotations

from importlib import import_module, metadata

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hieros.registry import ENTRY_POINT_GROUP

HIEROS_CONFIG_ROOT = "pkg://hieros.conf"
CONFIG_PATH_ATTRIBUTE = "HIEROS_CONFIG_PATH"
PROVIDER_PREFIX = "hieros-plugin"


class HierosPluginError(RuntimeError):
    """A ``hieros.plugins`` entry point could not provide its config path."""


def plugin_config_paths() -> list[tuple[str, str]]:
    """``(entry point name, config path)`` for every ``hieros.plugins`` entry point whose module sets a config path.

    Raises :class:`HierosPluginError` naming the entry point when its module fails to import or sets a bad path.
    """
    paths = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        plugin = f"hieros plugin entry point {entry_point.name!r} = {entry_point.value!r}"
        module_name = entry_point.value.split(":")[0].strip()
        try:
            module = import_module(module_name)
        except Exception as error:  # a broken plugin must say which one it is
            raise HierosPluginError(f"{plugin} failed to import: {type(error).__name__}: {error}") from error
        path = getattr(module, CONFIG_PATH_ATTRIBUTE, None)
        if path is None:
            continue
        if not isinstance(path, str) or not path.startswith(("pkg://", "file://")):
            raise HierosPluginError(
                f"{plugin}: {module_name}.{CONFIG_PATH_ATTRIBUTE}={path!r} is invalid; set it to a Hydra search path "
                f"such as 'pkg://{module_name.split('.')[0]}.conf' or 'file:///abs/path/to/conf'"
            )
        paths.append((entry_point.name, path))
    return paths


class HierosSearchPathPlugin(SearchPathPlugin):
    """Appends the config folder of every installed hieros plugin to the hieros app's search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # Only the hieros app (primary config pkg://hieros.conf) gets plugin folders; other Hydra apps are untouched.
        if not any(element.path == HIEROS_CONFIG_ROOT for element in search_path.get_path()):
            return
        for name, path in plugin_config_paths():
            search_path.append(provider=f"{PROVIDER_PREFIX}:{name}", path=path)
