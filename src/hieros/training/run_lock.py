"""One training process per run directory: an exclusive ``fcntl`` lock on ``RUN_DIR/.hieros.lock``.

The lock is taken before the run writes anything (checkpoint fallback renames, ``metrics.jsonl``, ``config.yaml``,
the MLflow run) and held until the process ends. The kernel releases it when the process dies, kill -9 included, so
a crashed run never leaves a stale lock behind; the pid, host and start time written into the file are only there
to name the holder in the error message.

A SLURM requeue can start the new job while the old one is still writing its last checkpoint (SIGTERM, then up to
``KillWait`` seconds before SIGKILL): ``wait_seconds`` > 0 polls for that long before giving up.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".hieros.lock"


class RunDirBusyError(RuntimeError):
    """Another live process holds the run directory; the message names it and says what to do."""


class RunDirLock:
    """``with RunDirLock(run_dir, wait_seconds):`` holds the run directory or raises :class:`RunDirBusyError`."""

    def __init__(self, run_dir: str | os.PathLike, wait_seconds: float = 0.0, poll_seconds: float = 0.5) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.wait_seconds = max(0.0, float(wait_seconds))
        self.poll_seconds = poll_seconds
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise RunDirBusyError(self._busy_message(holder)) from None
                time.sleep(self.poll_seconds)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Keep the file (deleting it would race with a process that opened it and waits for the lock).
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def holder(self) -> dict[str, object]:
        """The pid / host / since the holder wrote, or {} when the file is empty or unreadable."""
        try:
            record = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _busy_message(self, holder: dict[str, object]) -> str:
        who = (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('since', '?')})"
            if holder
            else "another process"
        )
        waited = f" after waiting {self.wait_seconds:.0f} s" if self.wait_seconds else ""
        return (
            f"run directory {self.path.parent} is in use by {who}{waited}: wait for that run to end (or stop it), "
            "or train in another directory with hydra.run.dir=..."
        )

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def requeue_wait_seconds(environ: dict[str, str] | None = None, seconds: float = 120.0) -> float:
    """How long to wait for the lock: ``seconds`` for a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0), else 0."""
    environ = os.environ if environ is None else environ
    try:
        restarts = int(environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restarts = 0
    return seconds if restarts > 0 else 0.0
