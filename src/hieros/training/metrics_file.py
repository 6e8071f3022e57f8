"""``metrics.jsonl``, the run directory's record of every report: the ground truth the MLflow mirror
(:mod:`~hieros.training.mlflow_mirror`) and ``hieros-report`` read."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class MetricsFile:
    """``metrics.jsonl``: one JSON object per report, ``{"step": agent steps, "time": unix seconds, name: value}``.

    ``keep_bytes`` truncates the file first: a resumed run keeps exactly the lines written up to its checkpoint.
    A line is written whole or not at all: a failed write (disk full) cuts the file back to the previous line end.
    """

    def __init__(self, path: str | os.PathLike, keep_bytes: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._offset = min(int(keep_bytes), os.lseek(self._fd, 0, os.SEEK_END))
        os.ftruncate(self._fd, self._offset)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({key: _jsonable(value) for key, value in values.items()})
        data = (json.dumps(record) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._offset)
            raise
        self._offset += len(data)

    @property
    def offset(self) -> int:
        """Bytes of whole lines written so far: where a resumed run truncates to."""
        return self._offset

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value
