"""Launcher presets (hydra/launcher=local | slurm_a100 | slurm_cpu) against the released hydra-submitit-launcher
1.2.0, the MLflow sweep structure (one parent run per multirun, every job a child) with a real sqlite store, and
end-to-end sweeps through submitit's local launcher, into a sqlite store and into a real ``mlflow server``."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from helpers import TINY_ONE_LEVEL_RUN
from hieros.training.mlflow_mirror import MlflowTracker
from hieros.training.run_tags import read_sweep_parent
from hieros.training.sweep import MlflowSweepCallback

PRESETS = {"slurm_a100": SlurmQueueConf, "slurm_cpu": SlurmQueueConf, "local": LocalQueueConf}
SITE_ENV = (
    "HIEROS_SLURM_PARTITION",
    "HIEROS_SLURM_CPU_PARTITION",
    "HIEROS_SLURM_ACCOUNT",
    "HIEROS_SLURM_QOS",
    "HIEROS_SLURM_CONSTRAINT",
    "HIEROS_SLURM_CPU_CONSTRAINT",
    "HIEROS_SLURM_EXCLUDE",
)
# A sweep job of a few seconds: CartPole, one level, the tiny smoke model, no periodic evaluation or media.
TINY_JOB = TINY_ONE_LEVEL_RUN


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in (*SITE_ENV, "MLFLOW_TRACKING_URI", "HIEROS_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIEROS_HOME", str(tmp_path / "home"))
    return monkeypatch


def compose_full(*overrides: str):
    """The composed config with its ``hydra`` node (what launchers and callbacks see)."""
    with initialize_config_module("hieros.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# --------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_compose_and_use_only_keys_of_hydra_submitit_launcher_1_2_0(name, launchers_dir, clean_env):
    fields = {field.name for field in dataclasses.fields(PRESETS[name])}
    text = (launchers_dir / "hydra" / "launcher" / f"{name}.yaml").read_text()
    assert text.startswith("# @package hydra.launcher")
    written = yaml.safe_load(text)
    assert written.pop("defaults") == ["submitit_local" if name == "local" else "submitit_slurm", "_self_"]
    assert set(written) - fields == set(), f"{name}: keys unknown to hydra-submitit-launcher 1.2.0"

    launcher = compose_full(f"hydra/launcher={name}").hydra.launcher
    assert set(launcher) - fields == set()
    assert launcher._target_ == PRESETS[name]._target_
    resolved = OmegaConf.to_container(launcher, resolve=True)  # every interpolation resolves
    assert resolved["submitit_folder"].endswith("/.submitit/%j") and resolved["tasks_per_node"] == 1
    if name == "slurm_a100":
        assert (resolved["gpus_per_node"], resolved["cpus_per_task"], resolved["mem_gb"]) == (1, 8, 32)
        assert resolved["timeout_min"] >= 14 * 60 * 1.5  # the paper's ~14 h per 100k-step run, with headroom
    if name.startswith("slurm"):
        assert resolved["max_num_timeout"] >= 1 and resolved["additional_parameters"] == {"requeue": True}
        assert 60 <= resolved["signal_delay_s"] <= 300 and resolved["array_parallelism"] >= 1
        assert any(line.startswith("export MLFLOW_TRACKING_URI=") for line in resolved["setup"])


def test_site_values_come_from_documented_environment_variables(clean_env, tmp_path):
    for preset in ("slurm_a100", "slurm_cpu"):
        launcher = OmegaConf.to_container(compose_full(f"hydra/launcher={preset}").hydra.launcher, resolve=True)
        assert [launcher[key] for key in ("partition", "account", "qos", "constraint", "exclude")] == [None] * 5
    values = {"PARTITION": "gpu", "ACCOUNT": "rl-lab", "QOS": "high", "CONSTRAINT": "a100", "EXCLUDE": "node7"}
    for key, value in values.items():
        clean_env.setenv(f"HIEROS_SLURM_{key}", value)
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    cfg = compose_full("hydra/launcher=slurm_a100")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert {key: launcher[key.lower()] for key in values} == values
    assert launcher["setup"] == [
        'export MLFLOW_TRACKING_URI="http://mlflow.example:5000"',
        f'export HIEROS_HOME="{tmp_path / "home"}"',
        "export OMP_NUM_THREADS=8",
    ]
    cpu = OmegaConf.to_container(compose_full("hydra/launcher=slurm_cpu").hydra.launcher, resolve=True)
    assert cpu["partition"] == "gpu" and cpu["constraint"] is None  # falls back to HIEROS_SLURM_PARTITION
    clean_env.setenv("HIEROS_SLURM_CPU_PARTITION", "cpu")
    cpu = OmegaConf.to_container(compose_full("hydra/launcher=slurm_cpu").hydra.launcher, resolve=True)
    assert cpu["partition"] == "cpu"


def test_slurm_preset_makes_the_sbatch_script_the_issue_asks_for(clean_env, tmp_path):
    """The preset through the plugin's own parameter mapping (SlurmLauncher.launch) into submitit's sbatch text."""
    import submitit
    from hydra.utils import instantiate

    clean_env.setenv("HIEROS_SLURM_PARTITION", "gpu")
    cfg = compose_full("hydra/launcher=slurm_a100", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    launcher = instantiate(cfg.hydra.launcher)
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = {field.name for field in dataclasses.fields(BaseQueueConf)}
    executor.update_parameters(**{key if key in base else f"slurm_{key}": value for key, value in params.items()})
    script = executor._executor._make_submission_file_text("python -m train", "uid")
    for flag in ("--requeue", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=1440",
                 "--signal=USR2@120", "--partition=gpu", "--open-mode=append"):  # fmt: skip
        assert f"#SBATCH {flag}\n" in script, flag
    assert "--account" not in script and "--qos" not in script  # unset site values are not passed
    assert "export MLFLOW_TRACKING_URI=" in script and script.index("export MLFLOW") < script.index("srun")
    assert executor._executor.max_num_timeout == 3


def test_cli_finds_the_presets_from_any_directory(python_runner, tmp_path):
    done = python_runner(
        "-m", "hieros", "--cfg", "all", "--resolve", "-p", "hydra.launcher", "hydra/launcher=slurm_cpu",
        cwd=tmp_path, env={"HIEROS_SLURM_CPU_PARTITION": "short", "HIEROS_SLURM_QOS": "normal"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    launcher = yaml.safe_load(done.stdout)
    assert (launcher["partition"], launcher["qos"], launcher["account"]) == ("short", "normal", None)
    assert launcher["_target_"].endswith("SlurmLauncher")


def test_requeued_job_resolves_the_same_sweep_and_job_folder(clean_env, tmp_path):
    """hydra-submitit pickles the launcher with the master config; a requeued job rebuilds its config from it with
    load_sweep_config. The ${now:...} of the default sweep folder must come out the same, seconds later."""
    with initialize_config_module("hieros.conf", version_base="1.3"):
        master = compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True)
        sweep_dir = str(master.hydra.sweep.dir)  # resolved on the submitting host (the launcher logs it)
        assert "multirun_" in sweep_dir
        pickled = pickle.dumps(master)
        time.sleep(1.1)
        loader = GlobalHydra.instance().config_loader()
        job = loader.load_sweep_config(pickle.loads(pickled), ["seed=3"])
        assert str(job.hydra.sweep.dir) == sweep_dir and job.seed == 3
        assert str(loader.load_sweep_config(master, ["seed=3"]).hydra.sweep.dir) == sweep_dir


# --------------------------------------------------------------------------------------------- sweep callback
@pytest.fixture
def hydra_job():
    """Sets HydraConfig to a job's config (as run_job does in a job process) and restores it afterwards."""
    previous = HydraConfig.instance().cfg

    def enter(cfg, job_dir: Path, num: int) -> None:
        with open_dict(cfg.hydra):
            cfg.hydra.runtime.output_dir = str(job_dir)
            cfg.hydra.mode = "MULTIRUN"
            cfg.hydra.job.num = num
        job_dir.mkdir(parents=True, exist_ok=True)
        HydraConfig.instance().set_config(cfg)

    yield enter
    HydraConfig.instance().cfg = previous


def _job(callback: MlflowSweepCallback, cfg, job_dir: Path, hydra_job, num: int) -> str:
    """One sweep job in this process: the callback as the job unpickles it, then a real tracker run."""
    hydra_job(cfg, job_dir, num)
    job_callback = pickle.loads(pickle.dumps(callback))  # hydra-submitit ships the callback pickled to the job
    job_callback.on_job_start(config=cfg, task_function=None)
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
              for key in cfg if key != "hydra"}  # fmt: skip
    tracker = MlflowTracker(job_dir, config, config["logger"], report=print)
    tracker.start()
    tracker.close("FINISHED")
    return tracker.run_id


def test_callback_creates_one_parent_and_every_job_becomes_its_child(clean_env, tmp_path, hydra_job):
    store = tmp_path / "home" / "mlflow.db"
    sweep = tmp_path / "sweep"
    cfg = compose_full("experiment_name=sweeptest", f"hydra.sweep.dir={sweep}", "seed=4", "env=gym")
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config=cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("sweeptest")
    (parent,) = client.search_runs([experiment.experiment_id])
    assert parent.info.status == "RUNNING"
    tags = parent.data.tags
    assert tags["hieros.sweep"] == "parent" and tags["sweep_dir"] == str(sweep)
    assert set(tags["overrides"].split()) == {
        "experiment_name=sweeptest",
        "seed=4",
        "env=gym",
    }
    assert len(tags.get("git_sha", "x" * 40)) == 40
    assert read_sweep_parent(sweep)["run_id"] == parent.info.run_id

    children = [_job(callback, cfg.copy(), sweep / str(num), hydra_job, num) for num in (0, 1)]
    assert (sweep / "0" / "mlflow_parent.json").is_file()
    for num, run_id in enumerate(children):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert (run.data.tags["hydra.job.num"], run.data.tags["seed"], run.data.tags["env.id"]) == (
            str(num),
            "4",
            "CartPole-v1",
        )
        assert "seed=4" in run.data.tags["overrides"].split()

    callback.on_multirun_end(config=cfg)
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and json.loads(parent.data.tags["jobs"]) == {"FINISHED": 2}
    assert len(client.search_runs([experiment.experiment_id])) == 3

    # Launching the same sweep folder again re-attaches to the parent instead of making a second one.
    again = MlflowSweepCallback()
    again.on_multirun_start(config=cfg)
    assert again.parent["run_id"] == parent.info.run_id
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job that died before creating its MLflow run
    again.on_multirun_end(config=cfg)
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FAILED" and json.loads(parent.data.tags["jobs"]) == {"FINISHED": 2, "NO RUN": 1}


def test_single_runs_logger_none_and_an_explicit_parent_create_no_sweep_parent(clean_env, tmp_path, hydra_job):
    store = tmp_path / "home" / "mlflow.db"
    cfg = compose_full("logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config=cfg)
    callback.on_job_start(config=cfg, task_function=None)
    callback.on_multirun_end(config=cfg)
    assert callback.parent is None and not store.exists() and not (tmp_path / "sweep").exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    outer = client.create_run(client.create_experiment("outer")).info.run_id
    clean_env.setenv("HIEROS_PARENT_RUN_ID", outer)  # overrides the sweep parent: none is created
    cfg = compose_full(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    callback.on_multirun_start(config=cfg)
    assert callback.parent is None and read_sweep_parent(tmp_path / "sweep") is None
    run_id = _job(callback, cfg, tmp_path / "sweep" / "0", hydra_job, 0)
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == outer

    clean_env.delenv("HIEROS_PARENT_RUN_ID")  # a single run (no -m): no parent file, no parent tag
    logger = {"name": "mlflow", "tracking_uri": f"sqlite:///{store}"}
    single = MlflowTracker(tmp_path / "single", {"experiment_name": "default", "seed": 0}, logger)
    single.start()
    single.close("FINISHED")
    assert "mlflow.parentRunId" not in client.get_run(single.run_id).data.tags


# --------------------------------------------------------------------------------------------- end to end
def _sweep_runs(client: MlflowClient, experiment: str = "default"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in runs if run.data.tags.get("hieros.sweep") == "parent"]
    assert len(parents) == 1, [run.data.tags.get("mlflow.runName") for run in runs]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], sorted(children, key=lambda run: int(run.data.tags["hydra.job.num"]))


def _check_sweep(client: MlflowClient, sweep: Path, seeds: list[int], launcher: str) -> None:
    parent, children = _sweep_runs(client)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_dir"] == str(sweep)
    assert parent.data.params["sweep.seed"] == ",".join(map(str, seeds))  # the grid, and the children's scores
    assert {"final_eval/greedy_score_mean", "final_eval/greedy_score_min"} <= set(parent.data.metrics)
    assert f"seed={','.join(map(str, seeds))}" in parent.data.tags["overrides"].split()
    assert [run.info.status for run in children] == ["FINISHED"] * len(seeds)
    for num, (run, seed) in enumerate(zip(children, seeds)):
        tags = run.data.tags
        assert (tags["seed"], tags["hydra.job.num"], tags["choice.launcher"]) == (str(seed), str(num), launcher)
        assert run.info.run_name == f"seed={seed}"  # named by its value of the swept key
        assert f"seed={seed}" in tags["overrides"].split() and tags["env.id"] == "CartPole-v1"
        assert tags["run_dir"] == str(sweep / str(num)) and tags["choice.experiment"] == "smoke"
        assert (sweep / str(num) / "mlflow_run_id").read_text().strip() == run.info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "sps")] == [20, 40]


@pytest.mark.slow
def test_local_launcher_sweep_makes_children_of_one_parent_in_sqlite(python_runner, tmp_path):
    sweep = tmp_path / "sweep"
    done = python_runner(
        "-m", "hieros", "-m", *TINY_JOB, "seed=0,1", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(list((sweep / ".submitit").glob("*/*_0_log.out"))) == 2  # two submitit processes
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'hieros-home' / 'mlflow.db'}")
    _check_sweep(client, sweep, [0, 1], "local")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite backend and one worker; stopped afterwards."""
    port, root = _free_port(), tmp_path / "server"
    root.mkdir()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield uri
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):  # the server and its uvicorn worker
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.mark.slow
def test_sweep_logs_to_a_real_mlflow_server(python_runner, tmp_path, mlflow_server):
    sweep = tmp_path / "sweep"
    done = python_runner(
        "-m", "hieros", "-m", *TINY_JOB, "seed=0,1", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
        f"logger.tracking_uri={mlflow_server}",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (tmp_path / "hieros-home" / "mlflow.db").exists()  # nothing went to the default sqlite store
    client = MlflowClient(tracking_uri=mlflow_server)
    _check_sweep(client, sweep, [0, 1], "local")
    _, children = _sweep_runs(client)
    for run in children:  # artifacts went through the server into its --artifacts-destination
        assert "scores.json" in {item.path for item in client.list_artifacts(run.info.run_id)}
    assert read_sweep_parent(sweep)["tracking_uri"] == mlflow_server
