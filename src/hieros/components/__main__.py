"""``python -m hieros.components`` / ``hieros-components``: a table of every registered component.

One row per component: group, name, the config file that selects it (``python -m hieros <group>=<file stem>``),
the implementing class and the first line of its docstring. Built-in components come from
:data:`hieros.components.BUILTIN_MODULES`, third-party ones from ``hieros.plugins`` entry points.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hieros.arguments import ArgumentParser
from hieros.registry import GROUPS, ComponentInfo, Registry, RegistryError

BUILTIN_CONFIG_PACKAGE = "hieros.conf"
BUILTIN_CONFIG_LABEL = "conf"  # how the built-in config root is shown: conf/sampler/etbs.yaml
NO_CONFIG_FILE = "(no config file)"
PLAIN_WIDTH = 400  # console width when stdout is not a terminal (pipes, CI logs): rows stay on one line


def config_roots() -> list[tuple[str, Traversable]]:
    """``(label, folder)`` of every config search-path root: the built-in ``conf/`` first, then each plugin's."""
    from hydra_plugins.hieros_searchpath import plugin_config_paths

    roots: list[tuple[str, Traversable]] = [(BUILTIN_CONFIG_LABEL, resources.files(BUILTIN_CONFIG_PACKAGE))]
    for _, path in plugin_config_paths():
        roots.append((path, _resolve(path)))
    return roots


def _resolve(path: str) -> Traversable:
    if path.startswith("pkg://"):
        return resources.files(path.removeprefix("pkg://").replace("/", "."))
    return Path(path.removeprefix("file://"))


def _group_files(root: Traversable, group: str) -> Iterator[Traversable]:
    folder = root / group
    if not folder.is_dir():
        return
    yield from sorted((item for item in folder.iterdir() if item.name.endswith(".yaml")), key=lambda item: item.name)


def config_files(roots: Sequence[tuple[str, Traversable]]) -> dict[tuple[str, str], list[str]]:
    """``{(group, component name): [config file, ...]}`` from each root's ``<group>/*.yaml`` ``name:`` key."""
    found: dict[tuple[str, str], list[str]] = {}
    for label, root in roots:
        for group in GROUPS:
            for item in _group_files(root, group):
                try:
                    node = yaml.safe_load(item.read_text(encoding="utf-8"))
                except yaml.YAMLError as error:
                    raise RegistryError(f"config file {label}/{group}/{item.name} is not valid YAML: {error}") from None
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    found.setdefault((group, node["name"]), []).append(f"{label}/{group}/{item.name}")
    return found


def _class_path(info: ComponentInfo) -> str:
    return f"{info.module}.{getattr(info.obj, '__qualname__', repr(info.obj))}"


def component_table(registry: Registry, files: dict[tuple[str, str], list[str]], groups: Sequence[str]) -> Table:
    table = Table(title="hieros components", title_justify="left")
    for column in ("group", "name", "config file", "class"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", overflow="fold")  # the only column that wraps on a narrow terminal
    for info in registry.items():
        if info.group not in groups:
            continue
        config = "\n".join(files.get((info.group, info.name), [NO_CONFIG_FILE]))
        cells = (info.group, info.name, config, _class_path(info), info.description)
        table.add_row(*(Text(cell) for cell in cells))  # Text: docstrings like "[h_t, e_t]" are not rich markup
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="hieros-components",
        description="List the registered components (built-in and from hieros.plugins entry points).",
    )
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"only these groups: {', '.join(GROUPS)}")
    args = parser.parse_args(argv)
    unknown = [group for group in args.groups if group not in GROUPS]
    if unknown:
        parser.error(f"unknown group {', '.join(unknown)}; the groups are: {', '.join(GROUPS)}")
    try:
        registry = Registry.default()
        files = config_files(config_roots())
    except Exception as error:  # a broken plugin: one line that names it, no traceback
        print(f"hieros-components: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PLAIN_WIDTH)
    console.print(component_table(registry, files, args.groups or GROUPS))


if __name__ == "__main__":
    main()
