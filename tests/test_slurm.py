"""Sweeps on a real SLURM cluster through ``hydra/launcher=slurm_cpu`` (hydra-submitit-launcher): both jobs of a
2-job smoke sweep finish as child runs of one MLflow parent, and a job that ``scontrol requeue`` kills mid-run comes
back in the same job folder, resumes from its own checkpoint and continues the same MLflow run.

The tests skip with the reason when no cluster answers (tests/conftest.py); ``.ci/run`` starts the single-node
cluster of ``../shared/slurm/start-local-slurm.sh`` so that they run in CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_launchers import TINY_JOB, _check_sweep, _sweep_runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900)]

# Small resources (the cluster has 2 cores) and timeout_min >= 5: submitit treats shorter limits as timed out and
# SLURM may send the USR2 warning early (shared/slurm/README.md, gotcha 9).
SLURM_JOB = [
    "hydra/launcher=slurm_cpu",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HIEROS_HOME": str(tmp_path / "hieros-home"), "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    for name in ("MLFLOW_TRACKING_URI", "HIEROS_PARENT_RUN_ID", "HIEROS_SLURM_PARTITION", "HIEROS_SLURM_CPU_PARTITION",
                 "HIEROS_SLURM_ACCOUNT", "HIEROS_SLURM_QOS", "HYDRA_FULL_ERROR"):  # fmt: skip
        env.pop(name, None)
    return env


def _store(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'hieros-home' / 'mlflow.db'}")


def _job_log(sweep: Path, job_id: str) -> str:
    return "\n".join(path.read_text() for path in sorted((sweep / ".submitit").glob(f"{job_id}/*_log.out")))


def test_two_job_smoke_sweep_runs_on_slurm_as_children_of_one_parent(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "hieros", "-m", *TINY_JOB, "seed=0,1", *SLURM_JOB, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Submitit 'slurm' sweep output dir" in done.stdout + done.stderr
    # one SLURM array of two tasks: <array id>_0 and <array id>_1, each with its own log
    tasks = _job_ids(sweep)
    assert len(tasks) == 2 and {task.split("_")[1] for task in tasks} == {"0", "1"}
    client = _store(tmp_path)
    _check_sweep(client, sweep, [0, 1], "slurm_cpu")
    _, children = _sweep_runs(client)
    assert sorted(run.data.tags["slurm_job_id"] for run in children) == tasks  # tagged with the SLURM job id
    assert all("slurm_restarts" not in run.data.tags for run in children)  # nothing was requeued


def _job_ids(sweep: Path) -> list[str]:
    """SLURM job ids of a sweep, from submitit's folders: ``<id>`` for a single job, ``<id>_<task>`` in an array."""
    folder = sweep / ".submitit"
    names = [path.name for path in folder.iterdir() if path.is_dir()] if folder.is_dir() else []
    return sorted(name for name in names if re.fullmatch(r"\d+_\d+", name)) or sorted(
        name for name in names if re.fullmatch(r"\d+", name) and any((folder / name).glob("*_submitted.pkl"))
    )


def _wait_for(predicate, what: str, timeout: float, process: subprocess.Popen) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {process.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _latest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(match.group(1)) for path in (run_dir / "checkpoints").glob("step_*.ckpt")
             if (match := re.fullmatch(r"step_(\d+)\.ckpt", path.name))]  # fmt: skip
    return max(steps, default=0)


def test_scontrol_requeue_resumes_the_job_from_its_checkpoint_in_the_same_mlflow_run(tmp_path):
    steps, every = 1500, 50  # about 40 s of training on one core
    sweep, job_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    overrides = [*TINY_JOB, "seed=3", f"training.steps={steps}", f"training.checkpoint_every={every}",
                 f"training.log_every={every}", "training.keep_checkpoints=50"]  # fmt: skip
    command = [sys.executable, "-m", "hieros", "-m", *overrides, *SLURM_JOB, f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "submit.log", "w") as log:
        submit = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        job_id = _wait_for(lambda: _job_ids(sweep), "the SLURM job", 180, submit)[0]
        # let the job write a few checkpoints, then requeue it while it runs (SLURM: SIGTERM, KillWait, SIGKILL,
        # back to PENDING with SLURM_RESTART_COUNT=1)
        _wait_for(lambda: _latest_checkpoint_step(job_dir) >= 3 * every, "checkpoints of the job", 300, submit)
        assert _latest_checkpoint_step(job_dir) < steps, "the job finished before it could be requeued"
        requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
        assert requeue.returncode == 0, requeue.stderr
        submit.wait(timeout=600)
    finally:
        if submit.poll() is None:
            submit.kill()
            subprocess.run(["scancel", "--name", "hieros-default"], check=False)
    output = (tmp_path / "submit.log").read_text()
    assert submit.returncode == 0, output[-3000:]

    log = _job_log(sweep, job_id)
    starts = re.findall(r"\[hieros\]\s+start\s+(.+)", log)
    assert len(starts) == 2 and starts[0].strip() == "fresh start", starts  # the same job ran twice
    # SLURM's SIGTERM made the job checkpoint at the step it arrived (then it trained on until SIGKILL)
    assert re.search(r"\[hieros\] SIGTERM received: checkpoint written at step \d+", log), log[-2000:]
    resumed = re.fullmatch(r"resumed from step_(\d+)\.ckpt \(step (\d+)\)", starts[1].strip())
    assert resumed and int(resumed.group(1)) == int(resumed.group(2)) >= 3 * every, starts[1]

    client = _store(tmp_path)
    parent, (child,) = _sweep_runs(client)  # still one child: the requeued job re-attached to its run
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert (job_dir / "mlflow_run_id").read_text().strip() == child.info.run_id
    assert child.data.tags["slurm_restarts"] == "1" and child.data.tags["slurm_job_id"] == job_id
    logged = {metric.step for metric in client.get_metric_history(child.info.run_id, "sps")}
    assert logged == set(range(every, steps + 1, every))  # the step count continued; no gap, no restart at 0
    scores = json.loads((job_dir / "scores.json").read_text())
    assert scores["agent_steps"] == steps
    states = ""
    for _ in range(60):  # accounting lags the job's end by a few seconds
        states = subprocess.run(["sacct", "-n", "-D", "-X", "-j", job_id, "-o", "State"], capture_output=True,
                                text=True, timeout=30).stdout.split()  # fmt: skip
        if "COMPLETED" in states:
            break
        time.sleep(1)
    assert states == ["REQUEUED", "COMPLETED"], states
