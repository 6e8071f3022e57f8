"""Sequence replay: per-stream rings of steps, items are stride-1 windows (spec §7.1).

Layout. Every field of ``spec`` is one array of shape (S, L, *field_shape) in the field's
own dtype (uint8 images stay uint8), S = ``num_streams`` (one per parallel env),
L = ``capacity // num_streams`` steps per stream. Step ``a`` of stream ``s`` (counted from the
first step ever added, "absolute step") lives at [s, a % L]. No per-step Python objects.

Items. An item is the window of ``window`` consecutive steps of one stream, one item per
end step (stride 1, overlap everywhere, like the original's ``overlap=None``): a stream
holding k ≥ window steps has k - window + 1 items. Windows may cross episode boundaries;
``is_first`` marks them and is forced True at every sampled window's first step (in the
returned copy only), so the sequence model starts each window from a fresh state (spec §7.1).
Items are ordered oldest first by start step (equivalently end step), then stream:
item k starts at absolute step ``first + k // S`` on stream ``k % S``. FIFO: when a ring is
full the oldest step is overwritten and the S oldest items disappear.

Persistence. With ``directory``, every field is a ``.npy`` file opened with
:func:`numpy.lib.format.open_memmap` (created full size, sparse on disk), next to
``replay.json`` (layout, spec and a lineage token) and ``written.npy`` (how many steps per
stream were ever written). The checkpoint holds :meth:`state_dict` (counters, per-item
sample counts, sampler state); a NEW :class:`Replay` on the same directory followed by
:meth:`load_state_dict` gives back exactly the data of that state. Steps added after the
state was taken are discarded; if they wrapped the ring over part of the saved data, the
overwritten oldest steps are dropped too (with a warning). ``read_only=True`` opens an existing
directory without write access (for analysis next to, or after, a run: ``hieros.diagnose``); :meth:`read`
returns stored steps of one stream in time order.

Why one file of ~470 lines: the ring layout, the item arithmetic, the on-disk files and the checkpoint state all
share the same (stream, absolute step) indexing; split apart, each part would need the others' invariants.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from hieros.files import write_json_atomic
from hieros.samplers import Sampler
from hieros.samplers.uniform import Uniform

__all__ = ["Replay"]

_FORMAT = 1
RESERVE_STEPS = 1024
"""Steps per stream whose disk blocks are allocated ahead of writing (first pass over the ring only)."""
_LAYOUT_FILE = "replay.json"
_WRITTEN_FILE = "written.npy"
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ReplayDiskFullError(OSError):
    """The file system of an on-disk replay has no room for the next steps; the message says how much is needed."""


def _normalise_spec(spec: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError("Replay spec must be a non-empty mapping {field: (shape, dtype)}")
    fields: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for name, entry in spec.items():
        if not isinstance(name, str) or not _FIELD_NAME.match(name) or name in (_LAYOUT_FILE, _WRITTEN_FILE[:-4]):
            raise ValueError(
                f"Replay field name {name!r} is not usable as a file name: use letters, digits, '_', '.', '-' "
                f"(and not 'written')"
            )
        try:
            shape, dtype = entry
            shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
            dtype = np.dtype(dtype)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Replay spec entry {name!r} = {entry!r} must be (shape, dtype), e.g. ((64, 64, 3), np.uint8): {error}"
            ) from error
        if any(d < 0 for d in shape) or dtype.hasobject:
            raise ValueError(f"Replay field {name!r}: shape {shape} / dtype {dtype} cannot be stored in an array")
        fields[name] = (shape, dtype)
    return fields


def _layout(fields: Mapping[str, tuple[tuple[int, ...], np.dtype]], capacity: int, num_streams: int) -> dict:
    return {
        "format": _FORMAT,
        "capacity": capacity,
        "num_streams": num_streams,
        "fields": {name: {"shape": list(shape), "dtype": dtype.str} for name, (shape, dtype) in fields.items()},
    }


class Replay:
    """Sequence replay of ``num_streams`` parallel streams; samples (B, T, ...) windows of ``window`` steps.

    Args:
        spec: per-step fields, ``{name: (shape, dtype)}``; ``add`` takes each with a leading stream axis.
        capacity: total steps held over all streams; each stream is a ring of ``capacity // num_streams`` steps.
        num_streams: parallel environments adding one step each per :meth:`add`.
        window: steps per item (T of the sampled batch).
        sampler: object with ``indices(n, count, rng)`` (``hieros.samplers``); uniform when None.
        directory: where the fields live as memory-mapped ``.npy`` files; in memory when None.
        read_only: open an existing ``directory`` read-only (its files are never written; :meth:`add` is refused).
    """

    def __init__(
        self,
        spec: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        capacity: int,
        num_streams: int,
        window: int = 64,
        sampler: Sampler | None = None,
        directory: str | os.PathLike | None = None,
        read_only: bool = False,
    ) -> None:
        self._fields = _normalise_spec(spec)
        capacity = _positive_int(capacity, "capacity")
        num_streams = _positive_int(num_streams, "num_streams")
        window = _positive_int(window, "window")
        steps_per_stream = capacity // num_streams
        if steps_per_stream < window:
            raise ValueError(
                f"Replay capacity {capacity} over {num_streams} streams gives {steps_per_stream} steps per stream, "
                f"fewer than one window of {window}; raise capacity to at least {window * num_streams}"
            )
        if sampler is None:
            sampler = Uniform()
        if not callable(getattr(sampler, "indices", None)):
            raise TypeError(f"Replay sampler must have indices(n, count, rng); got {type(sampler).__name__}")
        self.capacity = capacity
        self.num_streams = num_streams
        self.window = window
        self.steps_per_stream = steps_per_stream
        self.sampler = sampler
        self.directory = None if directory is None else Path(directory)
        self.read_only = bool(read_only)
        if self.read_only and self.directory is None:
            raise ValueError("Replay(read_only=True) needs the directory of an existing replay")

        self._added = 0  # steps per stream ever added (absolute step of the next add)
        self._first = 0  # absolute step of the oldest valid stored step
        # Per-item sample counts in a ring indexed by absolute item id (start step · S + stream).
        self._counts = np.zeros(num_streams * steps_per_stream, dtype=np.int64)
        self._window_offsets = np.arange(window, dtype=np.int64)  # (T,)

        if self.directory is None:
            self._data = {
                name: np.zeros((num_streams, steps_per_stream, *shape), dtype=dtype)
                for name, (shape, dtype) in self._fields.items()
            }
            self._written = np.zeros(1, dtype=np.int64)
            self._token = uuid.uuid4().hex
            self._stale_data = False
        else:
            self._open_directory()

    # ---------------------------------------------------------------- storage
    def _open_directory(self) -> None:
        directory = self.directory
        assert directory is not None
        layout = _layout(self._fields, self.capacity, self.num_streams)
        layout_path = directory / _LAYOUT_FILE
        if self.read_only and not layout_path.exists():
            raise FileNotFoundError(f"replay directory {directory} has no {_LAYOUT_FILE}: there is no replay to read")
        directory.mkdir(parents=True, exist_ok=True)
        mode = "r" if self.read_only else "r+"
        shapes = {name: (self.num_streams, self.steps_per_stream, *shape) for name, (shape, _) in self._fields.items()}
        if layout_path.exists():
            stored = json.loads(layout_path.read_text())
            stored_token = stored.pop("token", None)
            if stored != layout:
                raise ValueError(
                    f"replay directory {directory} was created with a different layout:\n"
                    f"  stored: {json.dumps(stored, sort_keys=True)}\n  wanted: {json.dumps(layout, sort_keys=True)}\n"
                    f"use another directory for this spec/capacity/num_streams, or delete the old one"
                )
            self._token = stored_token or uuid.uuid4().hex
            self._data = {}
            for name, (_, dtype) in self._fields.items():
                path = directory / f"{name}.npy"
                if not path.exists():
                    raise FileNotFoundError(f"replay directory {directory} lists field {name!r} but {path} is missing")
                array = open_memmap(path, mode=mode)
                if array.shape != shapes[name] or array.dtype != dtype:
                    raise ValueError(
                        f"{path} holds {array.shape} {array.dtype}, expected {shapes[name]} {dtype}; "
                        f"the replay directory is corrupt or was written by another layout"
                    )
                self._data[name] = array
            self._written = open_memmap(directory / _WRITTEN_FILE, mode=mode)
            self._stale_data = int(self._written[0]) > 0
        else:
            clashes = [f"{name}.npy" for name in self._fields if (directory / f"{name}.npy").exists()]
            if clashes:
                raise FileExistsError(
                    f"replay directory {directory} has {clashes} but no {_LAYOUT_FILE}; refusing to overwrite "
                    f"files this replay did not create: pass an empty directory"
                )
            self._data = {
                name: open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype, shape=shapes[name])
                for name, (_, dtype) in self._fields.items()
            }
            self._written = open_memmap(directory / _WRITTEN_FILE, mode="w+", dtype=np.int64, shape=(1,))
            self._token = uuid.uuid4().hex
            self._stale_data = False
            write_json_atomic(layout_path, {**layout, "token": self._token}, indent=1)

    def _start_fresh_over_stale_data(self) -> None:
        """First add on a directory with data, without load_state_dict: the old data is discarded."""
        assert self.directory is not None
        warnings.warn(
            f"replay directory {self.directory} holds {int(self._written[0])} steps per stream from an earlier run "
            f"and no state was loaded: starting a new replay over them (call load_state_dict first to resume)",
            stacklevel=3,
        )
        self._token = uuid.uuid4().hex
        self._written[0] = 0
        layout = _layout(self._fields, self.capacity, self.num_streams)
        write_json_atomic(self.directory / _LAYOUT_FILE, {**layout, "token": self._token}, indent=1)
        self._stale_data = False

    # ----------------------------------------------------------------- sizes
    def _reserve(self, position: int) -> None:
        """Allocate disk blocks for steps [position, position + RESERVE_STEPS) of every stream before they are written.

        The on-disk fields are sparse memory maps: writing a page the file system cannot allocate kills the process
        with SIGBUS and no message. Reserving ahead turns a full disk into an :class:`ReplayDiskFullError` here.
        """
        if self.directory is None or not hasattr(os, "posix_fallocate"):
            return
        steps = min(RESERVE_STEPS, self.steps_per_stream - position)
        needed = 0
        try:
            for array in self._data.values():
                row = array.dtype.itemsize * int(np.prod(array.shape[2:], dtype=np.int64))
                needed += row * steps * self.num_streams
                with open(array.filename, "rb+") as handle:
                    for stream in range(self.num_streams):
                        start = array.offset + (stream * self.steps_per_stream + position) * row
                        os.posix_fallocate(handle.fileno(), start, row * steps)
        except OSError as error:
            free = shutil.disk_usage(self.directory).free
            raise ReplayDiskFullError(
                f"cannot store more replay in {self.directory} ({error.strerror or error}): {free / 2**20:.1f} MiB "
                f"free, the next {steps} steps need about {needed / 2**20:.1f} MiB; free some space (or lower "
                "training.replay_capacity in a new run) and rerun the same command: it resumes from the last checkpoint"
            ) from error

    def __len__(self) -> int:
        return self.num_streams * max(0, self._added - self._first - self.window + 1)

    @property
    def steps(self) -> int:
        """Stored steps over all streams."""
        return self.num_streams * (self._added - self._first)

    @property
    def nbytes(self) -> int:
        """Bytes of the step arrays plus the per-item counters (the whole memory the replay holds)."""
        return sum(array.nbytes for array in self._data.values()) + self._counts.nbytes

    @property
    def spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._fields)

    @property
    def sample_counts(self) -> np.ndarray:
        """Times each stored item was sampled, oldest first; shape (len(self),)."""
        ids = self._first * self.num_streams + np.arange(len(self), dtype=np.int64)
        return self._counts[ids % self._counts.size]

    # ------------------------------------------------------------------- add
    def add(self, step: Mapping[str, Any]) -> None:
        """Append one step to every stream; each value has shape (num_streams, *field_shape)."""
        if self.read_only:
            raise RuntimeError(f"replay {self.directory} was opened read-only: it cannot add steps")
        missing = self._fields.keys() - step.keys()
        extra = step.keys() - self._fields.keys()
        if missing or extra:
            raise KeyError(
                f"Replay.add got fields {sorted(step)}; missing {sorted(missing)}, unknown {sorted(extra)}. "
                f"The replay was built for {sorted(self._fields)}"
            )
        values = {}
        for name, (shape, dtype) in self._fields.items():
            value = np.asarray(step[name])
            if value.shape != (self.num_streams, *shape):
                raise ValueError(
                    f"Replay.add: field {name!r} has shape {value.shape}, expected {(self.num_streams, *shape)} "
                    f"(leading axis = one entry per stream)"
                )
            if not np.can_cast(value.dtype, dtype, casting="same_kind"):
                raise TypeError(
                    f"Replay.add: field {name!r} has dtype {value.dtype}, which does not cast safely to the stored "
                    f"{dtype}; convert it first (e.g. images to uint8)"
                )
            values[name] = value
        if self._stale_data:
            self._start_fresh_over_stale_data()

        position = self._added % self.steps_per_stream
        if self._added < self.steps_per_stream and position % RESERVE_STEPS == 0:
            self._reserve(position)
        for name, value in values.items():
            self._data[name][:, position] = value

        new_first = max(self._first, self._added + 1 - self.steps_per_stream)
        evicted_starts = max(0, min(new_first, self._added - self.window + 1) - self._first)
        self._first = new_first
        self._added += 1
        self._written[0] = max(int(self._written[0]), self._added)
        if evicted_starts and hasattr(self.sampler, "evict"):
            self.sampler.evict(evicted_starts * self.num_streams)
        if self._added - self._first >= self.window:
            new_ids = (self._added - self.window) * self.num_streams + np.arange(self.num_streams)
            self._counts[new_ids % self._counts.size] = 0

    # ---------------------------------------------------------------- sample
    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of ``batch_size`` windows drawn by the sampler: each field (B, T, *field_shape)."""
        n = len(self)
        if n == 0:
            raise RuntimeError(
                f"Replay.sample: no complete window yet ({self._added - self._first} of {self.window} steps per "
                f"stream stored); add more steps before sampling"
            )
        items = np.asarray(self.sampler.indices(n, batch_size, rng), dtype=np.int64)  # (B,)
        if items.shape != (batch_size,) or (items.size and (items.min() < 0 or items.max() >= n)):
            raise RuntimeError(
                f"sampler {self.sampler!r} returned indices of shape {items.shape} in "
                f"[{items.min() if items.size else '-'}, {items.max() if items.size else '-'}], "
                f"expected ({batch_size},) in [0, {n})"
            )
        streams = (items % self.num_streams)[:, None]  # (B, 1)
        starts = self._first + items // self.num_streams  # (B,) absolute start steps
        positions = (starts[:, None] + self._window_offsets) % self.steps_per_stream  # (B, T)
        batch = {name: np.asarray(array[streams, positions]) for name, array in self._data.items()}
        if "is_first" in batch:
            batch["is_first"][:, 0] = True
        np.add.at(self._counts, (self._first * self.num_streams + items) % self._counts.size, 1)
        return batch

    def read(
        self, stream: int = 0, start: int = 0, stop: int | None = None, fields: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Stored steps ``start`` <= i < ``stop`` of one stream, oldest first (i = 0 is the oldest stored step,
        ``stop=None`` the newest + 1), as copies: each field (stop - start, *field_shape); ``fields``: a subset.
        Flags are as stored (no forced ``is_first``)."""
        stored = self._added - self._first
        stop = stored if stop is None else stop
        if not 0 <= stream < self.num_streams or not 0 <= start <= stop <= stored:
            raise IndexError(
                f"Replay.read(stream={stream}, start={start}, stop={stop}): the replay has {self.num_streams} "
                f"stream(s) of {stored} stored steps"
            )
        names = list(self._fields) if fields is None else list(fields)
        unknown = [name for name in names if name not in self._fields]
        if unknown:
            raise KeyError(f"Replay.read: unknown fields {unknown}; the replay holds {sorted(self._fields)}")
        positions = (self._first + np.arange(start, stop, dtype=np.int64)) % self.steps_per_stream
        return {name: np.asarray(self._data[name][stream, positions]) for name in names}

    # ----------------------------------------------------------- persistence
    def flush(self) -> None:
        """Write the memory-mapped arrays to disk (call before saving a checkpoint). No-op in memory."""
        if self.directory is None or self.read_only:
            return
        for array in self._data.values():
            array.flush()
        self._written.flush()

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "token": self._token,
            "capacity": self.capacity,
            "num_streams": self.num_streams,
            "window": self.window,
            "added": self._added,
            "first": self._first,
            "sample_counts": self.sample_counts,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Return to ``state`` (from :meth:`state_dict` of this replay or one on the same directory)."""
        mine = {"format": _FORMAT, "capacity": self.capacity, "num_streams": self.num_streams, "window": self.window}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ValueError(f"replay state was saved with {theirs}, but this replay has {mine}")
        if state.get("token") != self._token:
            raise ValueError(
                "replay state belongs to a different replay storage (lineage token mismatch): pass the directory "
                "of the run that wrote the checkpoint; an in-memory replay can only return to its own states"
            )
        saved_added, saved_first = int(state["added"]), int(state["first"])
        written = int(self._written[0])
        if written < saved_added:
            raise ValueError(
                f"replay storage holds {written} steps per stream but the state needs {saved_added}: the data is "
                f"older than the checkpoint (flush() the replay before saving checkpoints)"
            )
        # Steps written after the state, at absolute steps [saved_added, written), overwrote the ring slots
        # of absolute steps [saved_added - L, written - L): the oldest saved steps may be gone.
        first = min(max(saved_first, written - self.steps_per_stream), saved_added)
        if first > saved_first:
            warnings.warn(
                f"{first - saved_first} of the {saved_added - saved_first} steps per stream in the loaded replay "
                f"state were overwritten after the checkpoint; keeping the newest {saved_added - first}",
                stacklevel=2,
            )
        saved_counts = np.asarray(state["sample_counts"], dtype=np.int64)
        kept_items = self.num_streams * max(0, saved_added - first - self.window + 1)
        dropped_items = saved_counts.size - kept_items
        if dropped_items < 0:
            raise ValueError(f"replay state has {saved_counts.size} sample counts, expected at least {kept_items}")

        self._added, self._first = saved_added, first
        self._stale_data = False
        self._counts[:] = 0
        ids = first * self.num_streams + np.arange(kept_items, dtype=np.int64)
        self._counts[ids % self._counts.size] = saved_counts[dropped_items:]
        self.sampler.load_state_dict(state["sampler"])
        if dropped_items and hasattr(self.sampler, "evict"):
            self.sampler.evict(dropped_items)

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        return (
            f"Replay(items={len(self)}, steps={self.steps}, capacity={self.capacity}, num_streams={self.num_streams}, "
            f"window={self.window}, sampler={self.sampler!r}, storage={where})"
        )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Replay {name} must be a positive integer, got {value!r}")
    return int(value)


def storage_problem(directory: str | os.PathLike, state: Mapping[str, Any]) -> str | None:
    """Why the replay storage in ``directory`` cannot return to ``state`` (a checkpoint's :meth:`Replay.state_dict`),
    or None when it can. Reads only; a run checks this before it writes anything on resume."""
    directory = Path(directory)
    layout_path = directory / _LAYOUT_FILE
    if not layout_path.is_file():
        return f"replay data {directory} is missing ({_LAYOUT_FILE} not found)"
    try:
        stored = json.loads(layout_path.read_text())
    except (OSError, ValueError) as error:
        return f"replay data {directory} is unreadable ({layout_path.name}: {error})"
    if not isinstance(stored, dict) or stored.get("token") != state.get("token"):
        return f"replay data {directory} belongs to another run (its lineage token differs from the checkpoint's)"
    missing = [f"{name}.npy" for name in stored.get("fields", {}) if not (directory / f"{name}.npy").is_file()]
    if missing or not (directory / _WRITTEN_FILE).is_file():
        return f"replay data {directory} is incomplete (missing {', '.join(missing) or _WRITTEN_FILE})"
    try:
        written = int(np.load(directory / _WRITTEN_FILE, mmap_mode="r")[0])
    except (OSError, ValueError, IndexError) as error:
        return f"replay data {directory} is unreadable ({_WRITTEN_FILE}: {error})"
    if written < int(state.get("added", 0)):
        return f"replay data {directory} holds {written} steps per stream, the checkpoint needs {state['added']}"
    return None
