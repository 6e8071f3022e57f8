"""MLflow tracking: the tracking URI, params, the metrics.jsonl mirror, and what a real training run records in a
real sqlite store and through a real ``mlflow server`` (including a store that is down at start and comes back)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from helpers import config_composer
from hieros.mappings import flatten
from hieros.registry import Registry
from hieros.training.metrics_file import MetricsFile
from hieros.training.mlflow_mirror import MlflowTracker
from hieros.training.mlflow_store import MAX_PARAM_VALUE, resolve_tracking_uri
from hieros.training.run_tags import flat_params
from hieros.training.tracking import TrackingUnreachableError

# MinAtar breakout at 16x16 (images: imagination and subgoal videos), tiny model, two levels, few updates.
RUN = [
    "model=tiny",
    "env=minatar",
    "env.size=16",
    "fabric=cpu",
    "hierarchy.layers=2",
    "hierarchy.k=2",
    "training.batch_size=4",
    "training.batch_length=8",
    "training.min_windows=4",
    "training.train_ratio=8",
    "training.replay_capacity=1000",
    "training.log_every=10",
    "training.eval_every=30",
    "training.eval_episodes=1",
    "training.final_eval_episodes=1",
    "training.eval_modes=[greedy]",
    "training.checkpoint_every=30",
    "training.torch_threads=1",
    "logger.media_every=30",
    "logger.sync_seconds=2",
]


compose_config = config_composer(*RUN)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HIEROS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HIEROS_PARENT_RUN_ID", raising=False)
    return tmp_path / "home"


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    found = {}
    for item in client.list_artifacts(run_id, path):
        found.update(_artifacts(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return found


# ----------------------------------------------------------------------------- units
def test_tracking_uri_env_wins_and_sqlite_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert resolve_tracking_uri(None, "store") == f"sqlite:///{tmp_path}/store/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri("sqlite:///runs/mlflow.db") == "http://tracking:5000"


def test_params_are_the_flattened_config_within_mlflow_limits():
    params = flat_params({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "long": "x" * 10_000, "f": True})
    assert params == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "a.d": "None",
        "a.e": "{}",
        "long": "x" * MAX_PARAM_VALUE,
        "f": "True",
    }


def test_metrics_file_truncates_to_the_checkpoint_offset(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.write(10, {"loss": np.float32(1.5), "bad": float("nan")})
    kept = metrics.offset
    metrics.write(20, {"loss": 2.0})
    metrics.close()
    MetricsFile(tmp_path / "metrics.jsonl", keep_bytes=kept).close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 10 and lines[0]["loss"] == 1.5 and lines[0]["bad"] is None


def test_a_metrics_line_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails halfway (disk full) leaves the file at the previous line end, and the next write works."""
    import errno
    import os

    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.write(10, {"loss": 1.0})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        metrics.write(20, {"loss": 2.0, "padding": "x" * 100})
    monkeypatch.setattr(os, "write", real_write)
    metrics.write(30, {"loss": 3.0})
    metrics.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 30]


@pytest.mark.slow
def test_mirror_resumes_from_its_offset_and_reattaches_to_one_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"experiment_name": "mirror", "seed": 3, "env": {"name": "gym", "id": "CartPole-v1"}, "paths": {}}
    logger = {
        "name": "mlflow",
        "tracking_uri": uri,
        "artifact_location": str(tmp_path / "artifacts"),
        "log_checkpoints": True,
    }
    run_dir = tmp_path / "run"
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    metrics.write(10, {"train/level0/model_loss": 3.0})
    tracker = MlflowTracker(run_dir, config, logger, report=print)
    tracker.start()
    tracker.close("KILLED")
    metrics.write(20, {"train/level0/model_loss": 2.0})  # written after the first mirror: sent by the next one
    (run_dir / "media").mkdir()
    (run_dir / "media" / "open_loop_step000000020.gif").write_bytes(b"GIF89a")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_000000000020.ckpt").write_bytes(b"weights")
    (run_dir / "checkpoints" / ".step_000000000030.ckpt.tmp-1").write_bytes(b"half")  # never uploaded
    again = MlflowTracker(run_dir, {**config, "seed": 4}, logger, report=print)
    again.start()
    again.close("FINISHED")
    metrics.close()

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("mirror").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert run_id == (run_dir / "mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run_id, "train/level0/model_loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 3.0), (20, 2.0)]  # each line sent once
    assert runs[0].data.params["seed"] == "3"  # params are logged once; the change is recorded as a tag
    assert json.loads(runs[0].data.tags["hieros.resumed_with"]) == {"seed": "4"}
    assert runs[0].data.tags["env.id"] == "CartPole-v1"
    expected = {"media/open_loop_step000000020.gif", "checkpoints/step_000000000020.ckpt", "metrics.jsonl"}
    assert set(_artifacts(client, run_id)) == expected
    assert runs[0].info.artifact_uri.startswith(str(tmp_path / "artifacts"))


def test_a_resume_that_discards_sent_points_marks_them_stale(tmp_path, monkeypatch):
    """kill -9 after a metric sync, resume from an older checkpoint: MLflow keeps the discarded points, the run's
    ``hieros.rewinds`` tag marks them, and filtering by it leaves one value per step, the kept ones."""
    from hieros.training.mlflow_store import is_stale, stale_ranges

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"experiment_name": "rewind", "seed": 0, "env": {"name": "gym", "id": "CartPole-v1"}, "paths": {}}
    logger = {"name": "mlflow", "tracking_uri": uri, "artifact_location": str(tmp_path / "artifacts")}
    run_dir = tmp_path / "run"
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    metrics.write(10, {"loss": 1.0})
    checkpoint_offset = metrics.offset  # the checkpoint at step 10
    metrics.write(20, {"loss": 2.0})
    metrics.write(30, {"loss": 3.0})
    metrics.close()
    first = MlflowTracker(run_dir, config, logger, report=print)
    first.start()
    first.close("KILLED")  # steps 10, 20, 30 are in MLflow; then the process dies
    time.sleep(0.01)

    metrics = MetricsFile(run_dir / "metrics.jsonl", keep_bytes=checkpoint_offset)  # the resume
    resumed = MlflowTracker(run_dir, config, logger, report=print)
    resumed.rewind_metrics(metrics.offset, step=10)
    resumed.start()
    metrics.write(20, {"loss": -2.0})
    metrics.write(30, {"loss": -3.0})
    metrics.close()
    resumed.close("FINISHED")

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rewind").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.value for m in history) == [-3.0, -2.0, 1.0, 2.0, 3.0]  # MLflow keeps what was sent
    rewinds = stale_ranges(run.data.tags)
    assert [r["step"] for r in rewinds] == [10]
    kept = sorted((m.step, m.value) for m in history if not is_stale(m.step, m.timestamp, rewinds))
    assert kept == [(10, 1.0), (20, -2.0), (30, -3.0)]


# ----------------------------------------------------------------------------- a training run, sqlite store
@pytest.mark.slow
def test_training_run_records_params_per_level_metrics_and_media(tmp_path, home, monkeypatch):
    from hieros.training.loop import train

    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    parent_client = MlflowClient(tracking_uri=store)
    experiment = parent_client.create_experiment("sweep", artifact_location=str(tmp_path / "store" / "artifacts"))
    parent = parent_client.create_run(experiment, run_name="sweep-parent").info.run_id
    monkeypatch.setenv("HIEROS_PARENT_RUN_ID", parent)
    cfg = compose_config("training.steps=60", "experiment_name=sweep")
    run_dir = tmp_path / "run"
    scores = train(cfg, Registry.default(), run_dir)

    client = MlflowClient(tracking_uri=store)
    runs = [r for r in client.search_runs([experiment]) if r.info.run_id != parent]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert (tags["seed"], tags["env"], tags["env.game"], tags["hierarchy.layers"]) == ("0", "minatar", "breakout", "2")
    assert (tags["seq_model"], tags["sampler"], tags["goal"]) == ("s5", "etbs", "encoded")

    from omegaconf import OmegaConf

    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert set(run.data.params) == set(flat)
    assert run.data.params["model.deter"] == "64" and run.data.params["env.size"] == "16"

    metrics = set(run.data.metrics)
    for level in (0, 1):
        for name in ("model_loss", "image_loss" if level == 0 else "vector_loss", "reward_loss", "cont_loss",
                     "dyn_loss", "rep_loss", "kl", "prior_ent", "post_ent", "model_grad_norm",
                     "imag_extrinsic_reward", "imag_novelty_reward", "actor_entropy", "final_adv", "extrinsic_adv",
                     "actor_grad_norm", "value_extrinsic_grad_norm", "subgoal_autoencoder_loss"):  # fmt: skip
            if (level, name) != (0, "imag_novelty_reward"):  # no novelty at level 0 (novelty_levels: higher)
                assert f"train/level{level}/{name}" in metrics, name
    assert "train/level0/imag_subgoal_reward" in metrics and "train/level1/imag_subgoal_reward" not in metrics
    assert "train/level0/imag_novelty_reward" not in metrics and "train/level1/novelty_return_share" in metrics
    assert {"episode/score", "episode/length", "eval/greedy_score", "final_eval/greedy_score", "sps"} <= metrics
    history = client.get_metric_history(run.info.run_id, "train/level0/model_loss")
    assert [m.step for m in history] == sorted({m.step for m in history}) and max(m.step for m in history) == 60
    assert run.data.metrics["final_eval/greedy_score"] == scores["final_eval"]["greedy"]["mean"]

    artifacts = _artifacts(client, run.info.run_id)
    assert {"config/config.yaml", "scores.json", "metrics.jsonl"} <= set(artifacts)  # no .hydra/ in-process
    for kind in ("open_loop", "subgoals"):
        for step in (30, 60):
            for suffix in ("gif", "mp4"):
                assert artifacts.get(f"media/{kind}_step{step:09d}.{suffix}", 0) > 0, (kind, step, suffix)
    local = Path(client.download_artifacts(run.info.run_id, "scores.json", str(tmp_path / "download")))
    assert json.loads(local.read_text()) == scores

    import imageio.v2 as imageio

    video = imageio.mimread(
        client.download_artifacts(run.info.run_id, "media/subgoals_step000000060.gif", str(tmp_path))
    )
    assert len(video) >= 32 and video[0].shape[0] == 2 * video[0].shape[1]  # subgoal of level 1 above the frame


# ----------------------------------------------------------------------------- a real mlflow server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(port: int, root: Path) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "w")  # noqa: SIM115 - the server outlives this function
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            _stop_server(server)
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.5)


def _stop_server(server: subprocess.Popen) -> None:
    """Stop the server and the uvicorn worker it started (its own session: the process group is the server's)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_server_down_fails_or_trains_locally_then_syncs_everything_when_back(tmp_path, home, monkeypatch, capsys):
    from hieros.training.loop import train

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"

    # Down, on_unreachable=fail: refused at start, naming the URI, before anything is built.
    with pytest.raises(TrackingUnreachableError, match=f"MLflow tracking store {uri} is unreachable"):
        train(compose_config("training.steps=40"), Registry.default(), run_dir)
    assert not (run_dir / "replay").exists()

    # Down, on_unreachable=local: trains to the end, everything stays in the run directory.
    cfg = compose_config("training.steps=40", "logger.on_unreachable=local", "experiment_name=served")
    scores = train(cfg, Registry.default(), run_dir)
    out = capsys.readouterr().out
    assert "unreachable" in out and "run the same command again" in out
    assert not (run_dir / "mlflow_run_id").exists()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()

    # Back: the same command syncs the finished run (params, every metric line, media) through the server.
    server = _start_server(port, tmp_path / "server")
    try:
        assert train(cfg, Registry.default(), run_dir) == scores
        assert "run already finished at step 40" in capsys.readouterr().out
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        run = runs[0]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a local path
        assert run.data.params["env.name"] == "minatar" and len(run.data.params) > 100
        sent = {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/level1/model_loss")}
        written = {
            (r["step"], r["train/level1/model_loss"]) for r in map(json.loads, lines) if "train/level1/model_loss" in r
        }
        assert sent == written and written
        artifacts = _artifacts(client, run.info.run_id)
        assert {
            "scores.json",
            "metrics.jsonl",
            "media/open_loop_step000000030.mp4",
            "media/subgoals_step000000040.gif",
        } <= set(artifacts)
        local = client.download_artifacts(run.info.run_id, "media/open_loop_step000000040.mp4", str(tmp_path / "dl"))
        assert Path(local).stat().st_size == (run_dir / "media" / "open_loop_step000000040.mp4").stat().st_size
    finally:
        _stop_server(server)


def _probe_after_barrier(uri: str, barrier) -> str | None:
    import mlflow.tracking  # noqa: F401 - import before the barrier so that the processes reach the store together

    barrier.wait(timeout=120)
    from hieros.training.mlflow_store import probe

    return probe(uri)


@pytest.mark.slow
def test_parallel_first_use_of_a_fresh_sqlite_store_succeeds_in_every_process(tmp_path):
    """Two runs started together on a fresh store used to race in MLflow's schema migration ('duplicate column')."""
    import concurrent.futures
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(4)
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
            problems = list(pool.map(_probe_after_barrier, [uri] * 4, [barrier] * 4))
    assert problems == [None] * 4
