"""Plugin registry: swap components by name from the config.

A component is marked with :func:`register` where it is defined. Marking only attaches
metadata to the class or function; nothing is written to any module-level table. A
:class:`Registry` object collects marked components from modules it is told to load:

* the built-in modules listed in :data:`hieros.components.BUILTIN_MODULES` (one explicit place);
* every module named by an entry point of the group ``hieros.plugins`` (third-party plugins).

Building a component from a config node::

    registry = Registry.default()
    sampler = registry.build("sampler", {"name": "etbs", "temperature": 0.3})

The node's ``name`` picks the component; the other keys are its keyword arguments.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

from hieros.mappings import plain_mapping

GROUPS: tuple[str, ...] = ("sequence_model", "sampler", "goal_encoding", "env")
"""The registry groups. Each has a folder in ``src/hieros`` and a config group in ``conf/``."""

ENTRY_POINT_GROUP = "hieros.plugins"
_MARK = "__hieros_component__"


class RegistryError(LookupError):
    """A component could not be found, registered or built."""


class UnknownComponentError(RegistryError):
    """The config asked for a name that no loaded module registered."""


@dataclass(frozen=True)
class ComponentInfo:
    group: str
    name: str
    obj: Any
    module: str
    description: str


def register(group: str, name: str) -> Callable[[Any], Any]:
    """Mark a class or factory as the component ``name`` of ``group``.

    The mark is read when a :class:`Registry` loads the defining module.
    """
    if group not in GROUPS:
        raise RegistryError(f"unknown registry group {group!r}; the groups are: {', '.join(GROUPS)}")

    def mark(obj: Any) -> Any:
        marks = list(getattr(obj, _MARK, ()))
        # A subclass inherits its parent's mark through getattr; keep only marks set on obj itself.
        if _MARK not in vars(obj):
            marks = []
        marks.append((group, name))
        setattr(obj, _MARK, tuple(marks))
        return obj

    return mark


class Registry:
    """A table of components by group and name, filled from explicitly loaded modules."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, ComponentInfo]] = {group: {} for group in GROUPS}
        self._loaded_modules: list[str] = []

    # ----------------------------------------------------------------- loading
    @classmethod
    def default(cls, plugins: bool = True) -> Registry:
        """The built-in components, plus every installed ``hieros.plugins`` entry point."""
        from hieros.components import BUILTIN_MODULES

        registry = cls()
        registry.load_modules(BUILTIN_MODULES)
        if plugins:
            registry.load_entry_points()
        return registry

    def load_modules(self, names: Iterable[str]) -> None:
        for name in names:
            self.load_module(importlib.import_module(name))

    def load_module(self, module: ModuleType) -> None:
        """Collect every component marked by :func:`register` that ``module`` defines."""
        found = False
        for _, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or _MARK not in getattr(obj, "__dict__", {}):
                continue
            for group, name in getattr(obj, _MARK):
                self.add(group, name, obj)
                found = True
        if not found:
            raise RegistryError(
                f"module {module.__name__!r} registers no component: decorate a class or function in it "
                f"with @hieros.registry.register(group, name)"
            )
        self._loaded_modules.append(module.__name__)

    def load_entry_points(self) -> list[str]:
        """Import each module named by an entry point of the ``hieros.plugins`` group."""
        loaded = []
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = importlib.import_module(entry_point.value.split(":")[0])
            except Exception as error:  # a broken plugin must say which one it is
                raise RegistryError(
                    f"plugin entry point {entry_point.name!r} = {entry_point.value!r} failed to import: {error}"
                ) from error
            if module.__name__ not in self._loaded_modules:
                self.load_module(module)
            loaded.append(module.__name__)
        return loaded

    def add(self, group: str, name: str, obj: Any) -> None:
        if group not in self._components:
            raise RegistryError(f"unknown registry group {group!r}; the groups are: {', '.join(GROUPS)}")
        existing = self._components[group].get(name)
        if existing is not None and existing.obj is not obj:
            raise RegistryError(
                f"{group} {name!r} is registered twice: by {existing.module} and by {obj.__module__}; "
                f"rename one of them"
            )
        doc = inspect.getdoc(obj) or ""
        self._components[group][name] = ComponentInfo(
            group=group, name=name, obj=obj, module=obj.__module__, description=doc.split("\n")[0]
        )

    # ---------------------------------------------------------------- lookups
    def names(self, group: str) -> list[str]:
        self._check_group(group)
        return sorted(self._components[group])

    def info(self, group: str, name: str) -> ComponentInfo:
        self._check_group(group)
        try:
            return self._components[group][name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(group, name)) from None

    def get(self, group: str, name: str) -> Any:
        return self.info(group, name).obj

    def items(self) -> list[ComponentInfo]:
        return [info for group in GROUPS for _, info in sorted(self._components[group].items())]

    def build(self, group: str, node: Mapping[str, Any] | Any, **extra: Any) -> Any:
        """Create the component that ``node['name']`` names, with the node's other keys as arguments.

        ``extra`` keyword arguments come from the caller (e.g. shapes known only at run time)
        and are merged over the node's keys.
        """
        kwargs = plain_mapping(node)
        if "name" not in kwargs:
            raise RegistryError(
                f"the {group} config has no 'name' key; set it to one of: {', '.join(self.names(group))}"
            )
        name = kwargs.pop("name")
        factory = self.get(group, name)
        kwargs.update(extra)
        try:
            return factory(**kwargs)
        except TypeError as error:
            params = _parameters(factory)
            raise RegistryError(
                f"cannot build {group} {name!r} from keys {sorted(kwargs)}: {error}. "
                f"It accepts: {', '.join(params) if params else '(no arguments)'}"
            ) from error

    # ---------------------------------------------------------------- helpers
    def _check_group(self, group: str) -> None:
        if group not in self._components:
            raise RegistryError(f"unknown registry group {group!r}; the groups are: {', '.join(GROUPS)}")

    def _unknown_message(self, group: str, name: str) -> str:
        names = self.names(group)
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {group} {name!r}. Registered {group} names: {', '.join(names) or '(none)'}.{hint}"


def _parameters(factory: Any) -> list[str]:
    try:
        return [p for p in inspect.signature(factory).parameters if p != "self"]
    except (TypeError, ValueError):
        return []
