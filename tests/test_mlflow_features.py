"""What MLflow users expect of a hieros run, checked in a real sqlite store: system metrics (also after a re-attach),
MLflow's source tags, the agent as a logged model that ``mlflow.pytorch.load_model`` loads back, ``hieros-eval`` on a
run id, sweep children named by their swept values with the grid and aggregate scores on the parent, and training
messages in the job's log file (once on the console)."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from helpers import TINY_ONE_LEVEL_RUN
from hieros.eval import EvalError, evaluate, parse_args
from hieros.training.mlflow_mirror import MlflowTracker
from hieros.training.mlflow_model import MODEL_TAG, MODELS_DIR
from hieros.training.run_tags import git_info, sweep_job_name
from hieros.training.sweep import MlflowSweepCallback

# A few seconds of training: CartPole, one level, the tiny smoke model, checkpoints at 20 and 40.
TINY_RUN = [*TINY_ONE_LEVEL_RUN, "logger.system_metrics_interval=0.2"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("MLFLOW_TRACKING_URI", "HIEROS_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIEROS_HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.fixture(scope="module")
def trained(tmp_path_factory, python_runner):
    """``python -m hieros`` of a tiny run into a sqlite store: (run dir, store URI, the finished process)."""
    root = tmp_path_factory.mktemp("trained")
    run_dir, uri = root / "run", f"sqlite:///{root / 'hieros-home' / 'mlflow.db'}"
    done = python_runner(
        "-m", "hieros", *TINY_RUN, f"hydra.run.dir={run_dir}",
        cwd=root, env={"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri, "HIEROS_PARENT_RUN_ID": ""}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir, uri, done


def _run(uri: str, run_dir: Path):
    return MlflowClient(tracking_uri=uri).get_run((run_dir / "mlflow_run_id").read_text().strip())


# ----------------------------------------------------------------------------------------- a training run
@pytest.mark.slow
def test_a_run_records_system_metrics_source_tags_and_its_agent_as_a_model(trained, monkeypatch):
    import mlflow.pytorch

    from hieros.agent.hierarchy import Hierarchy
    from hieros.envs.vector import make_vector_env
    from hieros.registry import Registry
    from hieros.training.checkpoint import CheckpointDir

    run_dir, uri, _ = trained
    client = MlflowClient(tracking_uri=uri)
    run = _run(uri, run_dir)
    assert run.info.status == "FINISHED"

    # System metrics: MLflow's monitor sampled every 0.2 s during the run.
    system = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(system) >= 2 and sorted(m.step for m in system) == list(range(len(system)))
    assert {"system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= set(run.data.metrics)

    # MLflow's context tags next to ours; ours win where both set a key.
    tags = run.data.tags
    assert tags["mlflow.source.name"].endswith("hieros/__main__.py") and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] and tags["seed"] == "0" and tags["env.id"] == "CartPole-v1"
    if "git_sha" in tags:
        assert tags["mlflow.source.git.commit"] == tags["git_sha"] == git_info()["git_sha"]

    # The final agent is a logged model of the run, at the last step, with the final score among its metrics.
    (output,) = run.outputs.model_outputs
    assert output.step == 40 and tags[MODEL_TAG] == f"models:/{output.model_id}"
    model = client.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id, str(model.status)) == ("agent", run.info.run_id, "READY")
    assert model.params["env.id"] == "CartPole-v1"
    scores = json.loads((run_dir / "scores.json").read_text())
    model_metrics = {m.key: m.value for m in model.metrics}
    assert model_metrics["final_eval/greedy_score"] == scores["final_eval"]["greedy"]["mean"]
    assert not (run_dir / MODELS_DIR).exists()  # uploaded, then removed from the run directory
    history = client.get_metric_history(run.info.run_id, "final_eval/greedy_score")
    assert len(history) == 1  # linking the model's metrics did not duplicate the run's points

    # ... and loads back with mlflow.pytorch into the agent of the final checkpoint, which can act.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    agent = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/agent")
    assert isinstance(agent, Hierarchy)
    assert mlflow.pytorch.load_model(tags[MODEL_TAG]).state_dict().keys() == agent.state_dict().keys()
    final = CheckpointDir(run_dir / "checkpoints").load_latest()
    assert final.payload["counters"]["step"] == 40
    for key, value in final.payload["agent"].items():
        assert torch.equal(agent.state_dict()[key], value), key
    envs = make_vector_env(Registry.default(), final.payload["config"]["env"], 1, seed=0)
    try:
        actions, _, _ = agent.act(envs.reset(seed=0), agent.initial_acting_state(1, torch.device("cpu")), "greedy")
    finally:
        envs.close()
    assert actions.shape == (1,) and 0 <= int(actions[0]) < 2


@pytest.mark.slow
def test_messages_go_to_the_job_log_file_and_once_to_the_console(trained):
    run_dir, _, done = trained
    log = (run_dir / "__main__.log").read_text()
    for line in ("HIEROS training", "step 20/40", "step 40/40", "done: 40 agent steps", "tracking: MLflow run"):
        assert f"[hieros][INFO] - {line}" in log, line
        assert done.stdout.count(line) == 1, line  # the console shows it once: hieros' own print
        assert line not in done.stderr
    assert "Started monitoring system metrics" not in done.stdout + done.stderr  # mlflow's notes stay quiet


@pytest.mark.slow
def test_a_reattached_run_continues_its_system_metrics(trained, clean_env):
    """A requeued or resumed job re-attaches to the same MLflow run: the monitor starts again there and continues
    the system/* steps instead of starting over at 0."""
    run_dir, uri, _ = trained
    client = MlflowClient(tracking_uri=uri)
    run_id = _run(uri, run_dir).info.run_id
    before = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    logger = {**config["logger"], "tracking_uri": uri, "system_metrics_interval": 0.1}
    tracker = MlflowTracker(run_dir, config, logger, report=print)
    tracker.start()
    assert tracker.run_id == run_id
    time.sleep(1.5)
    tracker.close("FINISHED")
    after = sorted(m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    assert len(after) > len(before) and after == list(range(len(after)))  # one run, steps continued, no repeats
    assert len(client.search_runs([_run(uri, run_dir).info.experiment_id])) == 1


# ----------------------------------------------------------------------------------------- hieros-eval RUN_ID
@pytest.mark.slow
def test_eval_takes_an_mlflow_run_id(trained, clean_env, tmp_path):
    run_dir, uri, _ = trained
    run_id = _run(uri, run_dir).info.run_id
    newest = str(run_dir / "checkpoints" / "step_000000000040.ckpt")
    for source in (f"runs:/{run_id}", run_id):
        scores = evaluate(parse_args([f"checkpoint={source}", "episodes=1", "video=false", f"tracking_uri={uri}"]))
        assert scores["checkpoint"] == newest and scores["step"] == 40
        assert scores["mlflow"] == f"MLflow run {run_id} at {uri}"
    assert len(MlflowClient(tracking_uri=uri).get_metric_history(run_id, "eval_only/greedy_score")) == 2

    with pytest.raises(EvalError, match=f"MLflow run {'0' * 32} is not in {uri}"):
        evaluate(parse_args([f"checkpoint=runs:/{'0' * 32}", f"tracking_uri={uri}"]))
    with pytest.raises(EvalError, match="no MLflow store at"):
        evaluate(parse_args([f"checkpoint=runs:/{run_id}", f"tracking_uri=sqlite:///{tmp_path}/none.db"]))

    # A run whose directory is on another machine: its uploaded checkpoint is downloaded and evaluated.
    client = MlflowClient(tracking_uri=uri)
    elsewhere = client.create_run(_run(uri, run_dir).info.experiment_id, tags={"run_dir": "/elsewhere/run"})
    with pytest.raises(EvalError, match="is not on this machine and the run uploaded no checkpoints"):
        evaluate(parse_args([f"checkpoint=runs:/{elsewhere.info.run_id}", f"tracking_uri={uri}"]))
    client.log_artifact(elsewhere.info.run_id, newest, "checkpoints")
    out = tmp_path / "out"
    args = [f"checkpoint=runs:/{elsewhere.info.run_id}", "episodes=1", "video=false", "mlflow=false", f"out={out}"]
    scores = evaluate(parse_args([*args, f"tracking_uri={uri}"]))
    assert scores["checkpoint"] == str(out / "checkpoints" / "step_000000000040.ckpt") and scores["step"] == 40


# ----------------------------------------------------------------------------------------- logger.log_model
def test_log_model_final_periodic_never(tmp_path, clean_env):
    """The loop hands the agent over at every checkpoint and once at the end; logger.log_model picks which become
    logged models of the run (one per step), and never leaves nothing behind."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"experiment_name": "models", "seed": 0, "env": {"name": "gym", "id": "CartPole-v1"}, "paths": {}}
    agent = torch.nn.Linear(3, 2)
    logged = {}
    for mode in ("final", "periodic", "never"):
        logger = {"name": "mlflow", "tracking_uri": uri, "log_model": mode, "system_metrics": False,
                  "artifact_location": str(tmp_path / "artifacts")}  # fmt: skip
        tracker = MlflowTracker(tmp_path / mode, config, logger, report=print)
        tracker.start()
        tracker.log_model(agent, 20)
        tracker.log_model(agent, 40)
        tracker.log_model(agent, 40, final=True)  # the end of a periodic run: step 40 is logged already
        tracker.close("FINISHED")
        run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
        logged[mode] = sorted(output.step for output in run.outputs.model_outputs) if run.outputs else []
        assert not (tmp_path / mode / MODELS_DIR).exists()
    assert logged == {"final": [40], "periodic": [20, 40], "never": []}
    with pytest.raises(ValueError, match="logger.log_model='always' is invalid: allowed is final | periodic | never"):
        MlflowTracker(tmp_path / "bad", config, {"name": "mlflow", "tracking_uri": uri, "log_model": "always"})


# ----------------------------------------------------------------------------------------- sweeps
def _compose(*overrides: str):
    with initialize_config_module("hieros.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_sweep_children_are_named_by_their_swept_values_and_the_parent_aggregates_their_scores(clean_env, tmp_path):
    sweep = tmp_path / "sweep"
    constant = ["env=gym", "training.torch_threads=1", "experiment_name=names"]
    master = _compose(*constant, f"hydra.sweep.dir={sweep}")
    with open_dict(master.hydra):  # as Hydra hands the sweep to the callback: sweeps on the command line, a file grid
        master.hydra.overrides.task = [*constant, "hierarchy.layers=1,2", "seed=0,1"]
        master.hydra.sweeper.params = {"seed": 0, "training.train_ratio": "8,16"}
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config=master)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    parent_id = callback.parent["run_id"]
    grid = {"seed": "0,1", "training.train_ratio": "8,16", "hierarchy.layers": "1,2"}  # the command line wins
    parent = client.get_run(parent_id)
    assert json.loads(parent.data.tags["sweep.params"]) == grid
    assert {key: parent.data.params[f"sweep.{key}"] for key in grid} == grid
    assert parent.data.tags["mlflow.user"]  # MLflow's context tags on the parent too

    previous = HydraConfig.instance().cfg
    names, scores = [], {0: {"greedy": 10.0, "sampled": 4.0}, 1: {"greedy": 30.0}}
    try:
        for num, (layers, seed, ratio) in enumerate([(1, 0, 8), (2, 1, 16)]):
            job_dir = sweep / str(num)
            cfg = _compose(*constant, f"hierarchy.layers={layers}", f"seed={seed}", f"training.train_ratio={ratio}")
            with open_dict(cfg.hydra):
                cfg.hydra.runtime.output_dir, cfg.hydra.mode, cfg.hydra.job.num = str(job_dir), "MULTIRUN", num
            job_dir.mkdir(parents=True)
            HydraConfig.instance().set_config(cfg)
            if num == 0:  # without the sweep record: Hydra's override_dirname, exclude_keys applied
                assert sweep_job_name(cfg.hydra, None) == (
                    "env=gym,experiment_name=names,hierarchy.layers=1,seed=0,training.train_ratio=8"
                )
            pickle.loads(pickle.dumps(callback)).on_job_start(config=cfg, task_function=None)
            line = {"step": 40, "time": time.time(), **{f"final_eval/{k}_score": v for k, v in scores[num].items()}}
            (job_dir / "metrics.jsonl").write_text(json.dumps(line) + "\n")
            config = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
                      for key in cfg if key != "hydra"}  # fmt: skip
            tracker = MlflowTracker(job_dir, config, {**config["logger"], "system_metrics": False}, report=print)
            tracker.start()
            tracker.close("FINISHED")
            run = client.get_run(tracker.run_id)
            assert run.data.tags["mlflow.parentRunId"] == parent_id
            names.append(run.info.run_name)
    finally:
        HydraConfig.instance().cfg = previous
    assert names == [
        "hierarchy.layers=1,seed=0,training.train_ratio=8",
        "hierarchy.layers=2,seed=1,training.train_ratio=16",
    ]

    callback.on_multirun_end(config=master)
    metrics = client.get_run(parent_id).data.metrics
    aggregates = {key: value for key, value in metrics.items() if key.startswith("final_eval/")}
    assert aggregates == {
        "final_eval/greedy_score_mean": 20.0,
        "final_eval/greedy_score_min": 10.0,
        "final_eval/greedy_score_max": 30.0,
        "final_eval/sampled_score_mean": 4.0,
        "final_eval/sampled_score_min": 4.0,
        "final_eval/sampled_score_max": 4.0,
    }
