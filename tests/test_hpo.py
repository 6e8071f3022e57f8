"""Hyperparameter search: ``training.objective`` (what a run returns to Hydra's sweeper) and a real Optuna sweep
through the command line (``+experiment=hpo_optuna``, hydra-optuna-sweeper)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module

from hieros.training.metrics_file import MetricsFile
from hieros.training.objective import ObjectiveError, objective_problem, objective_value

SCORES = {
    "final_eval": {"sampled": {"mean": 12.5, "episodes": [10.0, 15.0]}, "greedy": {"mean": 20.0, "episodes": [20.0]}},
    "train_return_last10pct": 9.25,
    "agent_steps": 100,
}


@pytest.fixture
def metrics_path(tmp_path: Path) -> Path:
    """A real metrics.jsonl: two reports, a periodic and a final evaluation, one non-finite loss."""
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.write(50, {"train/level0/model_loss": 3.0, "eval/greedy_score": 7.0})
    metrics.write(100, {"train/level0/model_loss": 2.0, "train/level0/actor_loss": float("nan")})
    metrics.write(100, {"eval/greedy_score": 20.0, "final_eval/greedy_score": 20.0})
    metrics.close()
    return tmp_path / "metrics.jsonl"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("final_eval/greedy_score", 20.0),
        ("final_eval/sampled_score", 12.5),
        ("train_return_last10pct", 9.25),
        ("eval/greedy_score", 20.0),  # the last evaluation
        ("train/level0/model_loss", 2.0),  # the last report
    ],
)
def test_the_objective_is_the_named_metric(name: str, expected: float, metrics_path: Path) -> None:
    assert objective_value(name, SCORES, metrics_path) == expected


def test_a_non_finite_metric_gives_nan(metrics_path: Path) -> None:
    """Optuna records NaN as a failed trial and goes on (a diverged run must not stop the study)."""
    assert math.isnan(objective_value("train/level0/actor_loss", SCORES, metrics_path))


def test_a_metric_the_run_never_wrote_is_a_one_line_error(metrics_path: Path) -> None:
    with pytest.raises(ObjectiveError) as error:
        objective_value("eval/greedy_scor", SCORES, metrics_path)
    message = str(error.value)
    assert message.startswith("training.objective='eval/greedy_scor': this run has no such metric")
    assert "final_eval/<mode>_score" in message and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], None),
        (["training.eval_modes=[sampled]"], "training.objective='final_eval/greedy_score' is invalid with training.eval_modes=['sampled']"),
        (["training.final_eval_episodes=0"], "training.objective='final_eval/greedy_score' is invalid with training.final_eval_episodes=0"),
        (["training.final_eval_episodes=0", "training.objective=eval/greedy_score"], None),  # periodic evaluations
        (["training.final_eval_episodes=0", "training.eval_every=0", "training.objective=eval/sampled_score"], "training.objective='eval/sampled_score' is invalid with training.final_eval_episodes=0"),
        (["training.objective=train/level0/model_loss"], None),  # known only at the end
    ],
)  # fmt: skip
def test_an_objective_the_config_never_measures_is_refused(overrides: list[str], expected: str | None) -> None:
    with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
        problem = objective_problem(compose("config", overrides=overrides))
    assert problem == expected if expected is None else problem.startswith(expected)


def _sweep(python_runner, tmp_path: Path, *overrides: str) -> Any:
    """``python -m hieros -m +experiment=[hpo_optuna,smoke] ...``: tiny CartPole trials (100 agent steps, ~20 world-
    model updates each)."""
    return python_runner(
        "-m", "hieros", "-m", "+experiment=[hpo_optuna,smoke]",
        "training.steps=100", "training.eval_every=0", "training.final_eval_episodes=3", "training.torch_threads=1",
        "training.progress=plain", "logger.media_every=0", "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides,
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=900,
    )  # fmt: skip


def test_a_search_whose_objective_is_never_measured_exits_2_before_training(python_runner, tmp_path: Path) -> None:
    done = _sweep(python_runner, tmp_path, "logger=none", "training.eval_modes=[sampled]")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("hieros:")]  # Optuna logs to stderr too
    assert line.startswith("hieros: invalid config: training.objective='final_eval/greedy_score' is invalid with")
    assert not list((tmp_path / "sweep").glob("*/config.yaml")), "no trial may start training"


@pytest.mark.slow
def test_an_optuna_sweep_maximises_the_objective_of_real_runs(python_runner, tmp_path: Path) -> None:
    """4 real trials (TPE, seeded): each a normal run with its own folder, scores.json and MLflow child run; the best
    value Optuna reports is the best trial's final greedy score in its own scores.json."""
    from mlflow.tracking import MlflowClient

    done = _sweep(python_runner, tmp_path, "hydra.sweeper.n_trials=4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = tmp_path / "sweep"
    trials = sorted(path.parent for path in sweep.glob("*/scores.json"))
    assert [path.name for path in trials] == ["0", "1", "2", "3"]

    params, scores = [], []
    for trial in trials:
        overrides = dict(
            item.split("=", 1) for item in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        )
        entropy, lr = float(overrides["agent.actor_critic.entropy"]), float(overrides["agent.world_model.lr"])
        assert 1e-4 <= entropy <= 1e-2 and 1e-4 <= lr <= 3e-3, overrides  # the overlay's search space
        config = yaml.safe_load((trial / "config.yaml").read_text())
        assert (config["agent"]["actor_critic"]["entropy"], config["agent"]["world_model"]["lr"]) == (entropy, lr)
        params.append({"agent.actor_critic.entropy": entropy, "agent.world_model.lr": lr})
        scores.append(json.loads((trial / "scores.json").read_text())["final_eval"]["greedy"]["mean"])
    assert len({tuple(p.values()) for p in params}) == 4, "every trial samples its own point"

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(range(4), key=lambda index: scores[index])
    assert results["best_value"] == scores[best] == max(scores)
    assert results["best_params"] == params[best]

    parent = json.loads((sweep / "mlflow_parent.json").read_text())
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    run = client.get_run(parent["run_id"])
    assert run.info.status == "FINISHED" and json.loads(run.data.tags["jobs"]) == {"FINISHED": 4}
