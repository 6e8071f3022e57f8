"""SIGINT (Ctrl-C) / SIGTERM / SIGUSR1 / SIGUSR2 (SLURM preemption and requeue, submitit's time-limit warning):
checkpoint, then let the signal act.

The handler only sets a flag; the loop checks :attr:`Preemption.requested` once per step, writes a checkpoint and
calls :meth:`Preemption.forward`, which hands the signal to the handler that was installed before or, for the
default action, exits with status 128 + signal number. A second signal while the first is pending acts immediately.
Ctrl-C is the same: the first one checkpoints and exits with status 130 (no KeyboardInterrupt traceback), a second
one aborts at once (Python's KeyboardInterrupt).

Under submitit (hydra/launcher=slurm_a100 | slurm_cpu | local) the previous handlers are submitit's: USR2 (or the
signal named by ``SUBMITIT_PREEMPT_SIGNAL``) calls the launcher's ``checkpoint`` (the same job with the same
overrides), runs ``scontrol requeue`` and exits; SIGTERM (sent by SLURM on ``scontrol requeue``, preemption or
cancellation, ``KillWait`` seconds before SIGKILL) is only logged, so the job trains on until it is killed, with a
checkpoint at the step the signal arrived. Either way the requeued job resumes from its newest checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class Preemption:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str | None:
        """Name of the pending signal (``SIGTERM``), or None."""
        return None if self.received is None else signal.Signals(self.received).name

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: do not wait for the loop
            self._call_previous(signum, frame)
        self.received = signum

    def forward(self) -> None:
        """After the checkpoint: run the previous handler of the received signal (may exit or requeue)."""
        signum, self.received = self.received, None
        if signum is None:
            return
        if signum == signal.SIGINT:
            # Ctrl-C always stops, checkpoint written: a clean exit instead of a KeyboardInterrupt. A handler some
            # library installed before the run is still called, but returning from it does not resume training;
            # SIG_IGN (what a shell gives a job it starts in the background: `cmd &`, nohup) does not either.
            if self._previous.get(signum) not in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
                self._call_previous(signum, None)
            raise SystemExit(128 + signum)
        self._call_previous(signum, None)

    def _call_previous(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)
