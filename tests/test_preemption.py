"""Preemption signals: deferred until the loop has checkpointed, then forwarded."""

from __future__ import annotations

import os
import signal

import pytest

from hieros.training.preemption import Preemption


def test_preemption_defers_the_signal_until_forwarded():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with Preemption() as preemption:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert preemption.requested and calls == []  # only a flag: the loop checkpoints first
            assert preemption.signal_name == "SIGUSR2"
            preemption.forward()
            assert calls == [signal.SIGUSR2] and not preemption.requested  # then the old handler runs (submitit)
            assert preemption.signal_name is None
        with Preemption() as preemption:
            os.kill(os.getpid(), signal.SIGTERM)
            assert preemption.requested
            with pytest.raises(SystemExit) as exit_info:
                preemption.forward()  # default action: exit 128 + 15
            assert exit_info.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_ctrl_c_exits_after_the_checkpoint_even_under_a_foreign_handler():
    """A library's SIGINT handler installed before the run is called, but Ctrl-C still stops the run (exit 130)."""
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with Preemption() as preemption:
            os.kill(os.getpid(), signal.SIGINT)
            assert preemption.requested and calls == []
            with pytest.raises(SystemExit) as exit_info:
                preemption.forward()
            assert exit_info.value.code == 128 + signal.SIGINT and calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
    with Preemption() as preemption:  # the usual case: Python's default handler, no KeyboardInterrupt traceback
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(SystemExit) as exit_info:
            preemption.forward()
        assert exit_info.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
