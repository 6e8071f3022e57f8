"""Checkpoints of a training run: one file holds everything stateful, written atomically, verified on load.

Layout of a run directory's ``checkpoints/`` folder::

    step_000000010000.ckpt          torch.save'd dict (loads with ``torch.load(..., weights_only=True)``)
    step_000000010000.ckpt.sha256   SHA-256 of that file, written before the file gets its final name

A checkpoint file is written by ``fabric.save`` to a temporary name in the same folder, fsync'ed, then renamed
(``os.replace``): a reader never sees a half-written file under a final name. The newest ``keep`` are kept.
Loading walks from the newest to the oldest and takes the first file whose checksum matches and that
``torch.load`` reads; every file skipped is reported. Contents (see :func:`hieros.training.loop.Run.state`):
``format``, ``config`` (the resolved config), ``agent`` (all levels' modules), ``optimizer/level{i}/{name}``,
``scheduler/{i}``, ``ratio`` (the train-ratio clock), ``replay/level{i}`` (:meth:`Replay.state_dict`; the data
stays in the memory-mapped replay folder beside it), ``rng`` (torch, CUDA, numpy and Python generators),
``counters`` (steps, updates, episodes, metrics.jsonl length), ``mlflow`` (run id and tracking URI) and, under
``16-mixed`` only, ``grad_scaler`` (the loss scale). Module and optimiser entries hold the plain objects' state (no
Fabric wrapper prefix), so they load whatever the precision of the writing or the resuming run.

Resume rules (:func:`config_differences`): a checkpoint is refused when any config key differs from the current
one, except the keys matched by :data:`RESUMABLE_KEYS` (budget, cadences, evaluation, logging, paths and hardware),
which never change shapes or the learning problem. A key that a checkpoint lacks because it was written before the
option existed is accepted when the current value is the one in
:data:`~hieros.training.added_keys.ADDED_KEYS`, the value that reproduces what the older code did.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hieros.files import fsync_dir, fsync_file, write_atomic
from hieros.mappings import flatten
from hieros.training.added_keys import ADDED_KEYS

FORMAT_VERSION = 1

RESUMABLE_KEYS: tuple[str, ...] = (
    "training.steps",
    "training.log_every",
    "training.eval_*",
    "training.final_eval_episodes",
    "training.checkpoint_*",
    "training.keep_checkpoints",
    "training.parallel_envs",
    "training.torch_threads",
    "training.compile",
    "training.compile_backend",
    "training.progress",
    "training.objective",
    "training.resume",
    "logger.*",
    "fabric.*",
    "paths.*",
    "experiment_name",
)
"""Config keys (fnmatch patterns on dotted keys) that may differ between a checkpoint and the resuming run."""


_NAME = re.compile(r"^step_(\d+)\.ckpt$")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and what to do."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota, permissions); its temporary file is removed."""


class ResumeError(CheckpointError):
    """The run directory holds an earlier run that cannot be resumed as asked; nothing in it was changed."""


class IncompatibleCheckpointError(CheckpointError):
    """The checkpoint was written with a config that differs in keys that matter (see :data:`RESUMABLE_KEYS`)."""


# --------------------------------------------------------------------- storable conversion
def to_storable(value: Any) -> Any:
    """numpy arrays -> tensors, numpy scalars -> Python numbers, recursively: loadable with ``weights_only=True``."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).clone()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key: to_storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_storable(item) for item in value)
    return value


def from_storable(value: Any) -> Any:
    """Inverse of :func:`to_storable` for states consumed by numpy code: tensors -> numpy arrays."""
    if isinstance(value, torch.Tensor):
        return value.cpu().numpy()
    if isinstance(value, Mapping):
        return {key: from_storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(from_storable(item) for item in value)
    return value


class NumpyState:
    """Wraps an object whose ``state_dict`` holds numpy values (a replay, a sampler) for a weights-only checkpoint."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def state_dict(self) -> dict[str, Any]:
        return to_storable(self.obj.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.obj.load_state_dict(from_storable(state))


class RandomState:
    """The generators a run draws from: torch (CPU and CUDA), the run's numpy Generator, numpy's and Python's
    global generators."""

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        legacy = np.random.get_state(legacy=False)
        state = {
            "torch": torch.get_rng_state(),
            "numpy_generator": dict(self.generator.bit_generator.state),
            "numpy_global": to_storable(legacy),
            "python": list(random.getstate()[1]),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        self.generator.bit_generator.state = dict(state["numpy_generator"])
        np.random.set_state(from_storable(dict(state["numpy_global"])))
        random.setstate((3, tuple(state["python"]), None))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def restore(objects: Mapping[str, Any], payload: Mapping[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load ``payload`` into ``objects`` in place (what ``fabric.load`` does with an already loaded dict).

    Modules and objects with ``load_state_dict`` are restored; a key missing from the payload raises, except the
    ``optional`` ones (left as they are). Returns the payload entries that are not objects (counters, config, ...).
    """
    missing = [key for key in objects if key not in payload and key not in optional]
    if missing:
        raise CheckpointError(f"checkpoint lacks the entries {missing}; it was written by another version of hieros")
    for key, obj in objects.items():
        if key not in payload:
            continue
        if isinstance(obj, nn.Module):
            obj.load_state_dict(payload[key], strict=True)
        else:
            obj.load_state_dict(payload[key])
    return {key: value for key, value in payload.items() if key not in objects}


# --------------------------------------------------------------------- config comparison
_ABSENT = object()


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    resumable: tuple[str, ...] = RESUMABLE_KEYS,
    added: Mapping[str, Any] = ADDED_KEYS,
) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that differs and may not (absent keys count as differing,
    except a key of ``added`` the checkpoint lacks, which counts as holding its ``added`` value)."""
    old, new = flatten(saved), flatten(current)
    differences = []
    for key in sorted(old.keys() | new.keys()):
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in resumable):
            continue
        before, after = old.get(key, added.get(key, _ABSENT)), new.get(key, _ABSENT)
        if before != after:
            differences.append((key, before, after))
    return differences


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "<absent>"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`IncompatibleCheckpointError` naming every key that differs and how to resume or start anew."""
    differences = config_differences(saved, current)
    if not differences:
        return
    keys = "; ".join(f"{key}: checkpoint {_show(a)}, now {_show(b)}" for key, a, b in differences)
    overrides = " ".join(f"{key}={_show(a)}" for key, a, _ in differences if a is not _ABSENT)
    raise IncompatibleCheckpointError(
        f"checkpoint {path} was written with a different config ({keys}): to resume it, rerun with the "
        f"checkpoint's values (overrides: {overrides}); to train the new config, use another run directory "
        f"(hydra.run.dir=...); keys that may differ on resume: {', '.join(RESUMABLE_KEYS)}"
    )


# --------------------------------------------------------------------- files
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mebibytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def load_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read one checkpoint file safely (``weights_only=True``), checking its checksum when the sidecar exists.

    Raises :class:`CheckpointError` naming the file and the problem (missing, checksum mismatch, unreadable, not a
    hieros checkpoint, newer format).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        actual = sha256_of(path)
        if expected != actual:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: SHA-256 {actual[:12]}... != recorded {expected[:12]}..."
            )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(payload, Mapping) or "format" not in payload or "config" not in payload:
        raise CheckpointError(f"{path} is not a hieros training checkpoint (no 'format'/'config' entries)")
    if int(payload["format"]) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {payload['format']}, newer than this hieros ({FORMAT_VERSION}): upgrade hieros"
        )
    return dict(payload)


@dataclass
class Loaded:
    path: Path
    step: int
    payload: dict[str, Any]


class CheckpointDir:
    """The checkpoints of one run: ``step_<N>.ckpt`` files in ``directory``, newest ``keep`` kept."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = max(1, int(keep))

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{int(step):012d}.ckpt"

    def paths(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint file, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, fabric: Any, state: Mapping[str, Any], step: int) -> Path:
        """Write ``state`` (modules, optimizers, stateful objects, plain values) as the checkpoint of ``step``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        sidecar = final.with_name(final.name + ".sha256")
        try:
            fabric.save(tmp, dict(state))
            if getattr(fabric, "is_global_zero", True):
                fsync_file(tmp)
                write_atomic(sidecar, f"{sha256_of(tmp)}  {final.name}\n")
                os.replace(tmp, final)
                fsync_dir(self.directory)
        except OSError as error:
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)
            if not final.exists():
                sidecar.unlink(missing_ok=True)
            raise CheckpointWriteError(self._write_failure(final, error, written)) from error
        if getattr(fabric, "is_global_zero", True):
            self._prune()
        return final

    def _write_failure(self, final: Path, error: OSError, written: int) -> str:
        """One line: which file, why, how full its file system is, how much a checkpoint needs, what to do."""
        previous = [path for _, path in self.paths() if path != final]
        if previous:
            needs = f"about {_mebibytes(max(written, previous[-1].stat().st_size))}"
        else:
            needs = f"more than the {_mebibytes(written)} written before the error"
        try:
            usage = shutil.disk_usage(self.directory)
            space = f"{_mebibytes(usage.free)} free of {_mebibytes(usage.total)} on {_mount_point(self.directory)}"
        except OSError:
            space = "free space unknown"
        resume = f"it resumes from {previous[-1].name}" if previous else "it starts again from step 0"
        return (
            f"could not write checkpoint {final} ({error.strerror or error}): {space}, a checkpoint of this run needs "
            f"{needs}; free some space (or move the run directory) and rerun the same command: "
            f"{resume}"
        )

    def _prune(self) -> None:
        for _, path in self.paths()[: -self.keep]:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        kept = {path.name for _, path in self.paths()}
        for leftover in self.directory.iterdir():
            # Temporary files of interrupted saves, and checksums whose checkpoint is gone.
            orphan_sum = leftover.name.endswith(".ckpt.sha256") and leftover.name[: -len(".sha256")] not in kept
            if (leftover.name.startswith(".") and ".tmp-" in leftover.name) or orphan_sum:
                leftover.unlink(missing_ok=True)

    def unusable(self) -> list[str]:
        """Names of checkpoint files set aside as ``*.corrupt`` by :meth:`load_latest` (this run or an earlier one)."""
        if not self.directory.is_dir():
            return []
        return sorted(path.name for path in self.directory.glob("step_*.ckpt.corrupt"))

    def candidates(self) -> Iterator[tuple[int, Path]]:
        yield from reversed(self.paths())

    def load_latest(self, report: Callable[[str], None] | None = None, map_location: Any = "cpu") -> Loaded | None:
        """The newest checkpoint that verifies and loads; each unusable newer file is reported (and kept on disk,
        renamed ``*.corrupt``, so that it is neither loaded again nor pruned in place of a good one)."""
        for step, path in self.candidates():
            try:
                return Loaded(path, step, load_file(path, map_location))
            except CheckpointError as error:
                if report is not None:
                    report(
                        f"{error}; falling back to the previous checkpoint (the file is kept as {path.name}.corrupt)"
                    )
                with contextlib.suppress(OSError):
                    sidecar = path.with_name(path.name + ".sha256")
                    if sidecar.exists():
                        sidecar.rename(path.with_name(path.name + ".corrupt.sha256"))
                    path.rename(path.with_name(path.name + ".corrupt"))
        return None
