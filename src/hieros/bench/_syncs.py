"""Count the host syncs of a piece of code by the aten ops that force them (issue 14).

A host sync is an op whose result the host must read before Python can go on: ``.item()``, ``float(t)``, ``bool(t)``
and ``if t:`` all dispatch ``aten::_local_scalar_dense``; ``nonzero``, ``masked_select`` and ``unique`` have an output
size that depends on the data. On CUDA each one stalls the launch queue until the device catches up (and breaks CUDA
graphs and ``torch.compile``'s full graphs); on CPU they cost little but mark the same places. The counter sees
every aten op through a ``TorchDispatchMode``, so it works on any device, without a GPU: it counts what the code
asks for, which on CUDA is an upper bound of the syncs (a few CPU kernels check their inputs with extra reads that
the CUDA kernels skip). A copy to the host (``.cpu()``) is not counted; ``act`` needs exactly one, for the
environment actions.

On CUDA, :class:`CudaSyncWarnings` counts the syncs that really happen: ``torch.cuda.set_sync_debug_mode("warn")``
makes every synchronising CUDA call (a device-to-host copy, ``cudaStreamSynchronize``, ...) warn, and the warnings
are counted by the line of Python that caused them.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive"}
)


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as syncs: ...`` then ``syncs.total`` and ``syncs.by_op`` ({aten op: count})."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS:
            self.by_op[name] += 1
        return func(*args, **(kwargs or {}))


class CudaSyncWarnings:
    """``with CudaSyncWarnings() as syncs: ...`` on a CUDA device, then ``syncs.total`` and ``syncs.by_site``
    ({"file.py:line": count}, the Python line that caused each synchronising CUDA call)."""

    def __init__(self) -> None:
        self.by_site: Counter[str] = Counter()
        self._catcher = warnings.catch_warnings(record=True)
        self._records: list[warnings.WarningMessage] = []
        self._previous: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def __enter__(self) -> CudaSyncWarnings:
        self._records = self._catcher.__enter__()
        warnings.simplefilter("always")  # the default filter would show each site once
        self._previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc_info: object) -> None:
        torch.cuda.set_sync_debug_mode(self._previous)
        self._catcher.__exit__(*exc_info)
        for record in self._records:
            if "synchroniz" in str(record.message):
                self.by_site[f"{Path(record.filename).name}:{record.lineno}"] += 1
