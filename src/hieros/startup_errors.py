"""One-line reports for the user errors that stop ``python -m hieros`` before a job starts.

Hydra reports an unknown group option or experiment, a key override without ``+``, bad override syntax or a run
directory it cannot create in several lines (a list of options, its config search path, a hint about
``HYDRA_FULL_ERROR``, for an OS error a chained traceback) and exits 1. :class:`StartupStderr` holds what is written
to ``sys.stderr`` until the job starts (the task function calls :meth:`StartupStderr.release`, after which everything
passes straight through); when Hydra then exits 1, :func:`startup_error_line` turns the held text into one line. A
traceback that is not an OS error is a bug and is shown as it is.
"""

from __future__ import annotations

import difflib
import io
import re
import sys
from importlib import resources
from typing import TextIO

_HINT = "Set the environment variable HYDRA_FULL_ERROR"
_OS_ERROR = re.compile(r"^(\w*Error): (\[Errno \d+\] .*)$")  # the last line of an OSError's traceback
_OVERRIDE = re.compile(r"Could not override '([^']+)'")


class StartupStderr(io.TextIOBase):
    """Stands in for ``sys.stderr`` until the job starts; see the module docstring."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self._held: list[str] = []
        self.released = False

    def write(self, text: str) -> int:
        if self.released:
            return self.real.write(text)
        self._held.append(text)
        return len(text)

    def flush(self) -> None:
        if self.released:
            self.real.flush()

    def held(self) -> str:
        return "".join(self._held)

    def release(self) -> None:
        """Restore the real stderr and write what was held to it (a handler bound to this object passes through)."""
        if self.released:
            return
        self.released = True
        if sys.stderr is self:
            sys.stderr = self.real
        self.real.write(self.held())
        self.real.flush()
        self._held.clear()


def release_stderr() -> None:
    """Called by the task function: the job has started, stderr streams from here on."""
    if isinstance(sys.stderr, StartupStderr):
        sys.stderr.release()


def startup_error_line(text: str) -> str | None:
    """Hydra's report of a user error as one line, or None when ``text`` is a traceback of a bug."""
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip() and not line.startswith(_HINT)][-1:]
        match = _OS_ERROR.match(last[0]) if last else None
        if match is None:
            return None
        return (
            f"cannot create the run directory ({match.group(2)}): set paths.root (or HIEROS_HOME) or hydra.run.dir "
            f"to a folder you can write to"
        )
    override = _OVERRIDE.search(text)
    if override:
        return _unknown_key_line(override.group(1))
    lines = []
    for line in text.splitlines():
        if line.startswith(_HINT) or line.startswith("Config search path"):
            break
        if line.strip():
            lines.append(line.strip())
    if not lines:
        return None
    head, *rest = lines
    if rest and rest[0].endswith(":"):  # "Available options in 'env':" followed by one option per line
        return f"{head.rstrip('.')}; {rest[0]} {', '.join(rest[1:])}"
    return "; ".join(lines)


def _unknown_key_line(key: str) -> str:
    """``modle=tiny`` / ``training.stepz=10``: Hydra suggests ``+key=...``, which only adds an unused key."""
    group, _, leaf = key.rpartition(".")
    known = _known_names(group)
    close = difflib.get_close_matches(leaf, known, n=1)
    where = f"a key of {group}" if group else "a config group or top-level key"
    hint = f"; did you mean {group + '.' if group else ''}{close[0]}?" if close else ""
    return (
        f"{key} is not {where}{hint} (`python -m hieros --help` lists the groups, `python -m hieros --cfg job` "
        f"every key)"
    )


def _known_names(group: str) -> list[str]:
    """Top level: the config groups and the keys of config.yaml; ``group``: the keys of its option files."""
    from omegaconf import OmegaConf

    conf = resources.files("hieros.conf")
    if not group:
        groups = [entry.name for entry in conf.iterdir() if entry.is_dir() and not entry.name.startswith("_")]
        top = OmegaConf.load(io.StringIO(conf.joinpath("config.yaml").read_text()))
        return groups + [str(key) for key in top if key != "defaults"]
    first, *path = group.split(".")
    folder = conf.joinpath(first)
    keys: set[str] = set()
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.endswith(".yaml"):
                node = OmegaConf.load(io.StringIO(entry.read_text()))
                for part in path:
                    node = node.get(part) if OmegaConf.is_dict(node) else None
                if OmegaConf.is_dict(node):
                    keys.update(str(key) for key in node if key != "defaults")
    return sorted(keys)
