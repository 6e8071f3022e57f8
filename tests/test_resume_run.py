"""``hieros-resume RUN_ID``: continue a training run found through its MLflow run (the same directory, the same
MLflow run), with extra overrides replacing the run's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = [
    "model=tiny",
    "env=gym",
    "fabric=cpu",
    "hierarchy.layers=1",
    "training.steps=40",
    "training.batch_size=4",
    "training.batch_length=16",
    "training.min_windows=4",
    "training.train_ratio=4",
    "training.log_every=10",
    "training.eval_every=0",
    "training.final_eval_episodes=1",
    "training.eval_modes=[greedy]",
    "training.checkpoint_every=20",
    "training.torch_threads=1",
    "logger.system_metrics=false",
    "logger.log_model=never",
    "logger.media_every=0",
]


def _run(command: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIEROS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_hieros_resume_continues_the_run_of_an_mlflow_run_id(tmp_path):
    home, run_dir = tmp_path / "home", tmp_path / "home" / "run"
    first = _run([sys.executable, "-m", "hieros", *RUN, f"hydra.run.dir={run_dir}"], home, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    resume = Path(sys.executable).with_name("hieros-resume")

    resumed = _run([str(resume), f"runs:/{run_id}", "training.steps=60"], home, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"hydra.run.dir={run_dir}" in resumed.stderr and "training.steps=60" in resumed.stderr
    assert "training.steps=40" not in resumed.stderr  # replaced, not repeated
    assert "resumed from step_000000000040.ckpt" in resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "scores.json").read_text())["agent_steps"] == 60
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id  # the same MLflow run continues

    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "FINISHED"

    unknown = _run([str(resume), "0" * 32], home, tmp_path)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "is not in" in unknown.stderr
    bad = _run([str(resume), "nope"], home, tmp_path)
    assert bad.returncode == 2 and "not an MLflow run" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
