"""One process per run directory: a second training process on the same directory is refused with exit code 2 and
one line naming the holder, before it writes anything; the lock dies with its holder (kill -9 leaves none behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hieros.training.run_lock import LOCK_NAME, RunDirBusyError, RunDirLock, requeue_wait_seconds

HOLD = """
import sys, time
from hieros.training.run_lock import RunDirLock
lock = RunDirLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_subprocess(run_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_holder_is_refused_naming_the_first_and_kill9_frees_the_lock(tmp_path):
    holder = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(RunDirBusyError) as error:
            RunDirLock(tmp_path).acquire()
        message = str(error.value)
        assert f"pid {holder.pid} on host" in message and "hydra.run.dir" in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunDirLock(tmp_path) as lock:  # the kernel released the dead holder's lock: no stale lock
        assert lock.holder()["pid"] == os.getpid()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: no holder recorded


def test_a_requeued_job_waits_for_the_lock(tmp_path):
    holder = _hold_in_subprocess(tmp_path)
    started = time.monotonic()
    killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
    try:
        with RunDirLock(tmp_path, wait_seconds=30, poll_seconds=0.1):
            waited = time.monotonic() - started
    finally:
        killer.wait()
        holder.wait()
    assert 0.8 < waited < 30
    assert requeue_wait_seconds({"SLURM_RESTART_COUNT": "1"}) > 0
    assert requeue_wait_seconds({"SLURM_RESTART_COUNT": "0"}) == 0 == requeue_wait_seconds({})


@pytest.mark.slow
def test_the_same_command_twice_refuses_the_second_before_it_writes(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "hieros",
        "env=chain",
        "model=tiny",
        "fabric=cpu",
        "logger=none",
        "hierarchy.layers=1",
        "training.steps=100000",
        "training.min_windows=100000",  # never trains: the first run only acts, and holds the directory
        "training.log_every=10",
        "training.eval_every=0",
        "training.torch_threads=1",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HIEROS_HOME": str(tmp_path / "home")}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        config_written = (run_dir / "config.yaml").stat().st_mtime_ns
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by pid {first.pid}" in lines[0], second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    assert (run_dir / "config.yaml").stat().st_mtime_ns == config_written  # refused before writing anything
    assert RunDirLock(run_dir).holder()["pid"] == first.pid
