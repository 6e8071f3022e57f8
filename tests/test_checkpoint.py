"""Checkpoints and auto-resume: weights-only files, atomic rotation, corrupt-file fallback, config refusal, a real
training process killed with kill -9 at a random point and rerun to the same end, and SIGTERM preemption."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric

from helpers import TINY_TWO_LEVEL_RUN, config_composer
from hieros.registry import Registry
from hieros.training.checkpoint import (
    CheckpointDir,
    IncompatibleCheckpointError,
    NumpyState,
    RandomState,
    check_compatible,
    config_differences,
    load_file,
)
from hieros.training.ratio import TrainRatio

# A small real run: CartPole, tiny model, two levels, few updates (train ratio 4 / (4 x 16) = 1/16 per step).
RUN = TINY_TWO_LEVEL_RUN


compose_config = config_composer(*RUN)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HIEROS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


# ----------------------------------------------------------------------------- units
def test_states_with_numpy_and_rng_load_weights_only(tmp_path):
    class Counts:
        def __init__(self):
            self.state = {"sample_counts": np.arange(5, dtype=np.int64), "sampler": {"visits": np.ones(3)}, "n": 4}

        def state_dict(self):
            return self.state

        def load_state_dict(self, state):
            self.state = state

    generator = np.random.default_rng(3)
    generator.random(7)
    torch.manual_seed(5)
    fabric = Fabric(accelerator="cpu", devices=1)
    CheckpointDir(tmp_path, keep=1).save(
        fabric, {"format": 1, "config": {"a": 1}, "counts": NumpyState(Counts()), "rng": RandomState(generator)}, 1
    )
    expected_numpy, expected_torch = generator.random(4), torch.rand(4)

    payload = torch.load(tmp_path / "step_000000000001.ckpt", weights_only=True)  # no pickled objects
    counts, fresh = Counts(), np.random.default_rng(0)
    NumpyState(counts).load_state_dict(payload["counts"])
    RandomState(fresh).load_state_dict(payload["rng"])
    assert isinstance(counts.state["sample_counts"], np.ndarray)
    np.testing.assert_array_equal(counts.state["sample_counts"], np.arange(5))
    np.testing.assert_array_equal(counts.state["sampler"]["visits"], np.ones(3))
    np.testing.assert_array_equal(fresh.random(4), expected_numpy)
    assert torch.equal(torch.rand(4), expected_torch)


def _save_steps(directory: Path, steps, keep: int = 2) -> CheckpointDir:
    fabric = Fabric(accelerator="cpu", devices=1)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    checkpoints = CheckpointDir(directory, keep=keep)
    for step in steps:
        with torch.no_grad():
            module.weight.fill_(float(step))
        checkpoints.save(
            fabric, {"format": 1, "config": {"x": 1}, "model": module, "opt": optimizer, "step": step}, step
        )
    return checkpoints


def test_rotation_keeps_the_newest_and_cleans_interrupted_saves(tmp_path):
    (tmp_path / ".step_000000000005.ckpt.tmp-999").write_bytes(b"half a file")  # an interrupted save
    checkpoints = _save_steps(tmp_path, [10, 20, 30], keep=2)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "step_000000000020.ckpt",
        "step_000000000020.ckpt.sha256",
        "step_000000000030.ckpt",
        "step_000000000030.ckpt.sha256",
    ]
    loaded = checkpoints.load_latest()
    assert loaded.step == 30 and loaded.payload["step"] == 30
    assert torch.all(loaded.payload["model"]["weight"] == 30.0)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupt_latest_falls_back_to_previous_with_a_report(tmp_path, damage):
    checkpoints = _save_steps(tmp_path, [10, 20])
    latest = tmp_path / "step_000000000020.ckpt"
    data = bytearray(latest.read_bytes())
    if damage == "truncate":
        latest.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        latest.write_bytes(data)
    reports: list[str] = []
    loaded = checkpoints.load_latest(report=reports.append)
    assert loaded.step == 10 and torch.all(loaded.payload["model"]["weight"] == 10.0)
    assert len(reports) == 1 and "step_000000000020.ckpt" in reports[0] and "falling back" in reports[0]
    assert "corrupt" in reports[0]
    assert (tmp_path / "step_000000000020.ckpt.corrupt").exists() and not latest.exists()
    with pytest.raises(Exception, match="corrupt"):
        load_file(tmp_path / "step_000000000020.ckpt.corrupt")


def test_truncated_file_without_checksum_is_still_detected(tmp_path):
    _save_steps(tmp_path, [10])
    path = tmp_path / "step_000000000010.ckpt"
    (tmp_path / "step_000000000010.ckpt.sha256").unlink()
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(Exception, match="unreadable"):
        load_file(path)


def test_config_differences_ignore_resumable_keys_and_name_the_others():
    saved = {"model": {"deter": 64, "units": 64}, "training": {"steps": 100, "batch_size": 4}, "logger": {"x": 1}}
    current = {"model": {"deter": 32, "units": 64}, "training": {"steps": 500, "batch_size": 4}, "logger": {"x": 2}}
    assert config_differences(saved, current) == [("model.deter", 64, 32)]
    current["hierarchy"] = {"layers": 3}
    with pytest.raises(IncompatibleCheckpointError) as error:
        check_compatible(saved, current, Path("run/checkpoints/step_1.ckpt"))
    message = str(error.value)
    assert "model.deter: checkpoint 64, now 32" in message
    assert "hierarchy.layers: checkpoint <absent>, now 3" in message
    assert "model.deter=64" in message and "hydra.run.dir" in message
    assert "training.steps" not in message.split("keys that may differ")[0] and "\n" not in message


def test_a_key_added_later_resumes_older_checkpoints_only_at_the_value_of_the_older_behaviour():
    saved = {"agent": {"world_model": {"kl_free": 1.0}}}
    current = {"agent": {"world_model": {"kl_free": 1.0, "image_loss": "mse", "image_on_weight": 10.0}}}
    assert config_differences(saved, current) == []
    current["agent"]["world_model"]["image_loss"] = "weighted_mse"
    assert config_differences(saved, current) == [("agent.world_model.image_loss", "mse", "weighted_mse")]
    without_table = config_differences(saved, current, added={})
    assert [key for key, _, _ in without_table] == ["agent.world_model.image_loss", "agent.world_model.image_on_weight"]


# ----------------------------------------------------------------------------- in-process runs
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 80 steps (checkpoints at 40 and 80) without a tracking store."""
    root = tmp_path_factory.mktemp("finished")
    old_home = os.environ.get("HIEROS_HOME")
    os.environ["HIEROS_HOME"] = str(root / "home")
    try:
        from hieros.training.loop import train

        train(compose_config("training.steps=80", "logger=none"), Registry.default(), root / "run")
    finally:
        if old_home is None:
            os.environ.pop("HIEROS_HOME")
        else:
            os.environ["HIEROS_HOME"] = old_home
    return root / "run"


@pytest.mark.slow
def test_resume_after_corrupt_latest_uses_the_previous_checkpoint(finished_run, tmp_path, home, capsys):
    from hieros.training.loop import train

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    latest = run_dir / "checkpoints" / "step_000000000080.ckpt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])

    scores = train(compose_config("training.steps=120", "logger=none"), Registry.default(), run_dir)
    out = capsys.readouterr().out
    assert "step_000000000080.ckpt" in out and "falling back to the previous checkpoint" in out
    assert "resumed from step_000000000040.ckpt (step 40)" in out
    assert scores["agent_steps"] == 120
    final = load_file(run_dir / "checkpoints" / "step_000000000120.ckpt")
    replay = final["replay/level0"]
    assert replay["added"] - replay["first"] == 120  # steps 40..80 of the first run were discarded and retaken
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open() if '"sps"' in line]
    assert steps == list(range(10, 130, 10))


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_naming_the_keys(finished_run, tmp_path, home):
    from hieros.training.loop import train

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    cfg = compose_config("training.steps=120", "logger=none", "model.deter=32", "hierarchy.k=4")
    with pytest.raises(IncompatibleCheckpointError) as error:
        train(cfg, Registry.default(), run_dir)
    message = str(error.value)
    assert "model.deter: checkpoint 64, now 32" in message and "hierarchy.k: checkpoint 2, now 4" in message
    assert "training.steps" not in message.split("keys that may differ")[0] and "\n" not in message
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before  # refused before touching anything


# ----------------------------------------------------------------------------- stopped runs
def _metrics_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return -1
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=-1)


def _run_until(command, env, run_dir: Path, step: int, sig: int, rng: random.Random, timeout: float = 300):
    """Start training, wait until metrics.jsonl reaches ``step`` (then a random extra moment), send ``sig``."""
    log = run_dir.parent / f"output-{sig}.txt"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while _metrics_step(run_dir) < step:
            assert process.poll() is None, f"training ended before step {step}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"training did not reach step {step} in {timeout} s"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        assert process.poll() is None, "the run finished before it could be stopped; raise training.steps"
        process.send_signal(sig)
        process.wait(timeout=timeout)
    return process.returncode, log.read_text()


@pytest.mark.slow
def test_kill9_then_rerun_gives_one_consistent_run(tmp_path):
    steps = 200
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    run_dir = tmp_path / "run"
    store = tmp_path / "mlflow.db"
    command = [sys.executable, "-m", "hieros", *RUN, f"training.steps={steps}", f"hydra.run.dir={run_dir}"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HIEROS_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
    }
    where = f"(random seed {seed})"

    # kill -9 at a random point after the first checkpoint (step 40): what it wrote after its last checkpoint
    # (replay rows, metric lines) must be discarded by the rerun.
    code, out = _run_until(command, env, run_dir, rng.randrange(45, steps - 30), signal.SIGKILL, rng)
    assert code == -signal.SIGKILL, f"{where}\n{out}"
    last_checkpoint = int(sorted(glob.glob(str(run_dir / "checkpoints" / "step_*.ckpt")))[-1].split("_")[-1][:-5])

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"
    assert f"resumed from step_{last_checkpoint:012d}.ckpt (step {last_checkpoint})" in done.stdout, where
    resumed = {last_checkpoint}

    scores = json.loads((run_dir / "scores.json").read_text())
    final = load_file(run_dir / "checkpoints" / f"step_{steps:012d}.ckpt")
    counters = final["counters"]
    assert scores["agent_steps"] == counters["step"] == steps

    # Level-0 updates follow from the ratio clock alone: the same as an uninterrupted run.
    ratio, updates = TrainRatio(4 / (4 * 16)), 0
    for step in range(1, steps + 1):
        if step - 16 + 1 >= 4:  # replay holds min_windows windows of batch_length
            updates += ratio(step)
    assert counters["updates"][0] == updates, where

    # The replay holds every step exactly once, in order: size = steps, CartPole's Euler step holds between rows.
    replay = final["replay/level0"]
    assert replay["added"] - replay["first"] == steps
    folder = run_dir / "replay" / "level0"
    vector = np.load(folder / "vector.npy", mmap_mode="r")[0, :steps]
    is_first = np.load(folder / "is_first.npy", mmap_mode="r")[0, :steps].astype(bool)
    is_last = np.load(folder / "is_last.npy", mmap_mode="r")[0, :steps].astype(bool)
    inside = ~is_first[1:]
    drift = vector[1:, 0] - vector[:-1, 0] - 0.02 * vector[:-1, 1]  # x' = x + tau * x_dot
    assert np.abs(drift[inside]).max() < 1e-5, where
    starts = set(np.flatnonzero(is_first).tolist())
    after_episode_end = {0} | {int(t) + 1 for t in np.flatnonzero(is_last)}
    assert starts - after_episode_end == resumed, where  # new episodes only at episode ends and at resumes
    for episode in counters["episodes"]:
        end = int(episode["step"])
        if end < steps:
            begin = end - int(episode["length"])
            assert is_last[end] and is_first[begin] and not is_last[begin:end].any(), (where, episode)

    # metrics.jsonl was truncated at each resume: every report step exactly once.
    reports = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open() if '"sps"' in line]
    assert reports == list(range(10, steps + 10, 10)), where

    # One MLflow run, re-attached by the rerun, finished, with the final counters.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, where
    assert runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    assert runs[0].data.metrics["updates/level0"] == updates


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "handler_before"),
    [
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGINT, signal.SIG_IGN),  # a run started in the background by a shell (`cmd &`, nohup): SIGINT ignored
    ],
    ids=["sigterm", "ctrl-c", "sigint-to-a-background-run"],
)
def test_a_stop_signal_checkpoints_at_once_exits_and_resumes_there(tmp_path, home, capsys, sig, handler_before):
    """SLURM preemption (SIGTERM) and Ctrl-C (SIGINT): checkpoint at the current step, exit 128 + signal number
    (no KeyboardInterrupt for Ctrl-C); the rerun resumes there. A SIGINT sent to a run whose shell started it with
    SIGINT ignored stops it too (it used to checkpoint and then train on)."""
    import threading

    from hieros.training.loop import train

    run_dir = tmp_path / "run"
    target = random.Random().randrange(45, 75)
    finished = threading.Event()

    def stop() -> None:
        while _metrics_step(run_dir) < target:
            if finished.wait(0.02):
                return
        os.kill(os.getpid(), sig)

    killer = threading.Thread(target=stop, daemon=True)
    original = signal.signal(sig, handler_before)
    killer.start()
    try:
        with pytest.raises(SystemExit) as exit_info:
            train(compose_config("training.steps=400", "logger=none"), Registry.default(), run_dir)
        assert exit_info.value.code == 128 + sig
        assert signal.getsignal(sig) is handler_before  # the handler is put back
    finally:
        finished.set()
        killer.join()
        signal.signal(sig, original)
    stopped = CheckpointDir(run_dir / "checkpoints").paths()[-1][0]
    assert target <= stopped < target + 40, f"checkpoint at {stopped}, signal at step >= {target}"

    capsys.readouterr()
    scores = train(compose_config("training.steps=100", "logger=none"), Registry.default(), run_dir)
    assert f"resumed from step_{stopped:012d}.ckpt (step {stopped})" in capsys.readouterr().out
    assert scores["agent_steps"] == 100


# ----------------------------------------------------------------------------- adverse resumes
def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != ".hieros.lock" and ".hydra" not in path.parts
    }


@pytest.mark.slow
def test_a_resume_without_its_replay_data_refuses_and_changes_nothing(finished_run, tmp_path, home):
    from hieros.training.checkpoint import ResumeError
    from hieros.training.loop import train

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    shutil.rmtree(run_dir / "replay" / "level1")
    before = _snapshot(run_dir)
    with pytest.raises(ResumeError) as error:
        train(compose_config("training.steps=120", "logger=none"), Registry.default(), run_dir)
    message = str(error.value)
    assert "replay/level1 is missing" in message and "hydra.run.dir" in message and "step_000000000080" in message
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_a_run_whose_checkpoints_are_all_corrupt_refuses_to_start_over(finished_run, tmp_path, home):
    from hieros.training.checkpoint import ResumeError
    from hieros.training.loop import train

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    for _, path in CheckpointDir(run_dir / "checkpoints").paths():
        path.write_bytes(path.read_bytes()[:100])
    records = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "scores.json", "config.yaml")}
    for _attempt in range(2):  # the rerun refuses too (the files were set aside as *.corrupt, not deleted)
        with pytest.raises(ResumeError, match="refusing to start over from step 0"):
            train(compose_config("training.steps=120", "logger=none"), Registry.default(), run_dir)
    assert {name: (run_dir / name).read_bytes() for name in records} == records
    assert len(CheckpointDir(run_dir / "checkpoints").unusable()) == 2


@pytest.mark.slow
def test_resume_must_and_never(finished_run, tmp_path, home):
    from hieros.training.checkpoint import ResumeError
    from hieros.training.loop import train

    with pytest.raises(ResumeError, match="training.resume=must"):
        train(compose_config("training.resume=must", "logger=none"), Registry.default(), tmp_path / "empty")
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(ResumeError, match="training.resume=never"):
        train(compose_config("training.resume=never", "logger=none"), Registry.default(), run_dir)
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_leaves_no_temp_file_marks_the_run_failed_and_the_rerun_resumes(
    tmp_path, home, monkeypatch
):
    """The second checkpoint hits ENOSPC halfway (fault-injected): the partial file is removed, the error says which
    file system and how much a checkpoint needs, the MLflow run is FAILED with the reason, the rerun continues."""
    import errno

    from mlflow.tracking import MlflowClient

    from hieros.training.checkpoint import CheckpointWriteError
    from hieros.training.loop import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    real_save = Fabric.save
    calls = []

    def full_disk_save(self, path, state, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\0" * 4096)  # half-written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(self, path, state, *args, **kwargs)

    monkeypatch.setattr(Fabric, "save", full_disk_save)
    cfg = compose_config("training.steps=120", "logger=mlflow", f"logger.tracking_uri={uri}")
    with pytest.raises(CheckpointWriteError) as error:
        train(cfg, Registry.default(), run_dir)
    message = str(error.value)
    assert "No space left on device" in message and "MiB free" in message and "needs about" in message
    assert "resumes from step_000000000040.ckpt" in message and "\n" not in message
    assert [path.name for path in (run_dir / "checkpoints").iterdir() if ".tmp" in path.name] == []
    client = MlflowClient(tracking_uri=uri)
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert mlflow_run.info.status == "FAILED"
    assert "No space left on device" in mlflow_run.data.tags["hieros.failure"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in lines)

    monkeypatch.setattr(Fabric, "save", real_save)
    scores = train(cfg, Registry.default(), run_dir)
    assert scores["agent_steps"] == 120
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(mlflow_run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_real_full_file_system_stops_the_run_in_one_line_and_the_rerun_resumes(tmp_path):
    """A 40 MiB tmpfs (where this machine lets us mount one): checkpoints of 2 levels fill it after a few saves. The
    run exits 2 with one line (no SIGBUS from the memory-mapped replay, no traceback), leaves no temporary file,
    and after freeing space the same command resumes from the last good checkpoint."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the fault-injected test covers it")
    try:
        run_dir = mount / "run"
        command = [
            sys.executable, "-m", "hieros", *RUN, "logger=none", "training.steps=2000", "training.checkpoint_every=100",
            "training.keep_checkpoints=10", "training.replay_capacity=20000", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HIEROS_HOME": str(mount / "home")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stdout + done.stderr
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("hieros:")]
        assert "No space left on device" in line and "rerun the same command: it resumes from step_" in line
        assert "Traceback" not in done.stderr
        saved = CheckpointDir(run_dir / "checkpoints").paths()
        assert len(saved) >= 2 and not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name]
        for _, path in saved[:-1]:  # free space: keep only the newest checkpoint
            path.unlink()
            path.with_name(path.name + ".sha256").unlink()
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert f"resumed from {saved[-1][1].name} (step {saved[-1][0]})" in again.stdout, again.stdout + again.stderr
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
