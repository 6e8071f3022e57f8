"""The battery of bad and adverse inputs (issue 15): what a new user gets wrong, and what happens to a run directory.

Every case runs a real command line in a subprocess and checks the same promises:

* a user error exits with status 2 and prints exactly one line on stderr (named after the tool), no traceback;
* a config error is refused before anything of the run exists: no ``config.yaml``, ``metrics.jsonl``, checkpoint,
  replay or MLflow store (Hydra's own ``.hydra/`` and job log of the run directory aside);
* a refused resume leaves everything already written as it was (byte for byte) and the run's MLflow status as it
  was (FINISHED stays FINISHED: no run is left RUNNING or wrongly marked FAILED).

Signals, kill -9, two processes on one directory and a full disk need a training process in flight; each has its own
test next to the code it checks (``test_preemption.py``, ``test_loop.py``, ``test_checkpoint.py``,
``test_run_lock.py``, ``test_replay.py``). The count here: 30 config cases, 11 tool cases and 12 run-directory cases.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import TINY_TWO_LEVEL_RUN

SMOKE = ["+experiment=smoke", "training.torch_threads=1"]

# (id, overrides after SMOKE, a piece of the expected line)
CONFIG_CASES = [
    ("unknown-group-option", ["env=nope"], "Available options in 'env'"),
    ("unknown-experiment", ["+experiment=nope"], "Could not find 'experiment/nope'"),
    ("unknown-key-without-plus", ["training.stepz=10"], "did you mean training.steps"),
    ("unknown-key-with-plus", ["+training.stepz=10"], "did you mean training.steps"),
    ("unknown-nested-key", ["agent.world_model.lrr=3"], "did you mean agent.world_model.lr"),
    ("misspelled-group", ["modle=tiny"], "did you mean model"),
    ("override-syntax", ["training.steps=["], "no viable alternative"),
    ("not-an-integer", ["training.steps=abc"], "training.steps"),
    ("negative-budget", ["training.steps=-5"], "training.steps"),
    ("bad-resume-mode", ["training.resume=sometimes"], "auto | must | never"),
    ("component-name-disagrees", ["sequence_model.name=transformer"], "sequence_model"),
    ("no-levels", ["hierarchy.layers=0"], "hierarchy.layers"),
    ("interval-one", ["hierarchy.k=1"], "hierarchy.k"),
    ("two-devices", ["fabric.devices=2"], "fabric.devices"),
    ("float64", ["fabric.precision=64-true"], "fabric.precision"),
    ("fp16-on-cpu", ["fabric.precision=16-mixed"], "16-mixed"),
    ("missing-gpu", ["fabric.accelerator=cuda"], "fabric.accelerator=cuda cannot run here"),
    ("unknown-atari-game", ["env.game=notagame"], "env.game"),
    ("unknown-minatar-game", ["env=minatar", "env.game=pong"], "env.game"),
    ("unknown-gym-id", ["env=gym", "env.id=Nope-v0"], "Nope-v0"),
    ("odd-image-size", ["env.size=33"], "env.size"),
    ("compile-not-a-bool", ["training.compile=maybe"], "training.compile"),
    ("seed-not-a-number", ["seed=abc"], "seed"),
    ("zero-batch-length", ["training.batch_length=0"], "training.batch_length"),
    ("negative-lr", ["agent.world_model.lr=-1"], "agent.world_model.lr"),
    ("sampler-temperature", ["sampler.temperature=2"], "sampler.temperature"),
    ("bad-eval-mode", ["training.eval_modes=[best]"], "training.eval_modes"),
    ("unknown-objective-mode", ["training.objective=final_eval/best_score"], "training.objective"),
    ("unwritable-root", ["paths.root=/proc/hieros-forbidden"], "cannot create the run directory"),
    ("deterministic-with-cudnn-benchmark", ["fabric.deterministic=true", "fabric.cudnn_benchmark=true"], "fabric"),
]

# a tiny CartPole run with two levels and a checkpoint every 40 steps; the MLflow store is HIEROS_HOME/mlflow.db
RUN = [
    *TINY_TWO_LEVEL_RUN,
    "training.steps=80",
    "logger.system_metrics=false",
    "logger.log_model=never",
    "logger.media_every=0",
    "logger.sync_seconds=1",
]


def _environment(home: Path) -> dict[str, str]:
    env = {**os.environ, "HIEROS_HOME": str(home), "COLUMNS": "400"}
    for name in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI", "SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        env.pop(name, None)
    return env


def _run(args: list[str], home: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_environment(home), capture_output=True, text=True, timeout=timeout
    )


def _tool(name: str, args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name(name)
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=_environment(home), capture_output=True, text=True, timeout=300
    )


def assert_one_line_user_error(done: subprocess.CompletedProcess[str], prog: str, expected: str = "") -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{prog}"), lines[0]
    assert expected in lines[0], lines[0]
    return lines[0]


def written_files(home: Path) -> list[str]:
    """What a run writes itself (Hydra's job log and the empty lock file of a refused run aside)."""
    if not home.exists():
        return []
    return sorted(
        str(path.relative_to(home))
        for path in home.rglob("*")
        if path.is_file() and ".hydra" not in path.parts and path.name not in ("__main__.log", ".hieros.lock")
    )


@pytest.fixture(scope="module")
def config_case_results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every config case run once, four processes at a time (each is a fresh ``python -m hieros`` start-up, most of it
    imports): case id -> (its completed process, its HIEROS_HOME)."""

    base = tmp_path_factory.mktemp("config_cases")  # mktemp itself is not thread-safe: one call, then plain folders

    def run_case(case: tuple[str, list[str], str]) -> tuple[str, tuple[subprocess.CompletedProcess[str], Path]]:
        name, overrides, _ = case
        folder = base / name
        folder.mkdir()
        home = folder / "home"
        return name, (_run(["-m", "hieros", *SMOKE, *overrides], home, folder), home)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run_case, CONFIG_CASES))


@pytest.mark.parametrize(
    "name, expected", [(case[0], case[2]) for case in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_a_config_error_is_one_line_and_writes_nothing(config_case_results, name, expected):
    done, home = config_case_results[name]
    assert_one_line_user_error(done, "hieros:", expected)
    assert written_files(home) == []  # no config.yaml, metrics, checkpoint, replay, mlflow.db


TOOL_CASES = [
    ("report-empty-folder", "hieros-report", ["{empty}"], "no runs found"),
    ("report-unknown-source", "hieros-report", ["/nonexistent/sweep"], "no MLflow store"),
    ("report-no-arguments", "hieros-report", [], "required: source"),
    ("eval-missing-checkpoint", "hieros-eval", ["checkpoint=/nonexistent/run"], "does not exist"),
    ("eval-run-without-checkpoint", "hieros-eval", ["checkpoint={empty}"], "no usable checkpoint"),
    ("eval-bad-run-id", "hieros-eval", ["checkpoint=runs:/0123"], "32-digit run id"),
    ("diagnose-missing-run", "hieros-diagnose", ["/nonexistent/run"], "does not exist"),
    ("diagnose-run-without-checkpoint", "hieros-diagnose", ["{empty}"], "no usable checkpoint"),
    ("components-unknown-group", "hieros-components", ["nope"], "unknown group nope"),
    ("resume-not-a-run-id", "hieros-resume", ["nope"], "not an MLflow run"),
    ("resume-without-a-store", "hieros-resume", ["0" * 32], "no MLflow store"),
]


@pytest.mark.parametrize(
    "tool, args, expected", [case[1:] for case in TOOL_CASES], ids=[case[0] for case in TOOL_CASES]
)
def test_a_tool_error_is_one_line(tmp_path, tool, args, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    home = tmp_path / "home"
    done = _tool(tool, [arg.format(empty=empty) for arg in args], home, tmp_path)
    prog = "hieros.eval" if tool == "hieros-eval" else tool
    assert_one_line_user_error(done, prog, expected)
    assert written_files(home) == [] and list(empty.iterdir()) == []


# ------------------------------------------------------------------------------------------ run-directory cases
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (two checkpoints, MLflow run FINISHED) that each case copies, home and all."""
    root = tmp_path_factory.mktemp("finished")
    home, run_dir = root / "home", root / "home" / "run"
    done = _run(["-m", "hieros", *RUN, f"hydra.run.dir={run_dir}"], home, root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) >= 2
    assert _mlflow_status(home, run_dir) == "FINISHED"
    return home


def _mlflow_status(home: Path, run_dir: Path) -> str:
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    with sqlite3.connect(home / "mlflow.db") as connection:
        (status,) = connection.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()
    return status


def _run_count(home: Path) -> int:
    with sqlite3.connect(home / "mlflow.db") as connection:
        return connection.execute("select count(*) from runs").fetchone()[0]


def _fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file a run wrote (the lock file, whose content is the holder, and the job log aside). A corrupt
    checkpoint that a run set aside (renamed ``*.ckpt.corrupt``, bytes kept) counts under its old name."""
    return {
        str(path.relative_to(folder)).replace(".corrupt", ""): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".hieros.lock" and path.name != "__main__.log"
    }


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    shutil.copytree(finished, home)
    return home, home / "run"


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64
    path.write_bytes(bytes(data))


DAMAGE = {
    "replay-deleted": lambda run: shutil.rmtree(run / "replay"),
    "replay-layout-empty": lambda run: (run / "replay" / "level0" / "replay.json").write_text(""),
    "all-checkpoints-corrupt": lambda run: [_corrupt(path) for path in (run / "checkpoints").glob("*.ckpt")],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, expected",
    [
        ("replay-deleted", "replay"),
        ("replay-layout-empty", "replay"),
        ("all-checkpoints-corrupt", "checkpoint"),
    ],
)
def test_a_resume_that_cannot_work_refuses_and_changes_nothing(finished_run, tmp_path, damage, expected):
    home, run_dir = _copy(finished_run, tmp_path)
    DAMAGE[damage](run_dir)
    before, runs_before = _fingerprint(run_dir), _run_count(home)
    done = _run(["-m", "hieros", *RUN, "training.steps=120", f"hydra.run.dir={run_dir}"], home, tmp_path)
    assert_one_line_user_error(done, "hieros:", expected)
    assert _fingerprint(run_dir) == before  # config.yaml, .hydra/overrides.yaml, metrics, scores untouched
    assert _mlflow_status(home, run_dir) == "FINISHED" and _run_count(home) == runs_before


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["training.resume=never"], "training.resume"),
        (["model.deter=32"], "model.deter"),  # an incompatible checkpoint
        (["hierarchy.layers=3"], "hierarchy.layers"),
        (["env.id=Acrobot-v1"], "env.id"),
    ],
)
def test_a_rerun_with_an_incompatible_config_refuses_and_changes_nothing(finished_run, tmp_path, overrides, expected):
    home, run_dir = _copy(finished_run, tmp_path)
    before = _fingerprint(run_dir)
    done = _run(["-m", "hieros", *RUN, *overrides, f"hydra.run.dir={run_dir}"], home, tmp_path)
    assert_one_line_user_error(done, "hieros:", expected)
    assert _fingerprint(run_dir) == before
    assert _mlflow_status(home, run_dir) == "FINISHED"


@pytest.mark.slow
def test_resume_must_in_an_empty_directory_refuses(tmp_path):
    home, run_dir = tmp_path / "home", tmp_path / "home" / "fresh"
    done = _run(["-m", "hieros", *RUN, "training.resume=must", f"hydra.run.dir={run_dir}"], home, tmp_path)
    assert_one_line_user_error(done, "hieros:", "training.resume")
    assert written_files(home) == []


@pytest.mark.slow
def test_a_run_directory_that_is_a_file_refuses(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "run").write_text("not a folder")
    done = _run(["-m", "hieros", *RUN, f"hydra.run.dir={home / 'run'}"], home, tmp_path)
    assert_one_line_user_error(done, "hieros:", "run directory")
    assert (home / "run").read_text() == "not a folder"


@pytest.mark.slow
def test_a_busy_run_directory_refuses_naming_the_holder(finished_run, tmp_path):
    home, run_dir = _copy(finished_run, tmp_path)
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(run_dir / ".hieros.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _fingerprint(run_dir)
        done = _run(["-m", "hieros", *RUN, "training.steps=120", f"hydra.run.dir={run_dir}"], home, tmp_path)
        assert_one_line_user_error(done, "hieros:", "")
        assert "in use" in done.stderr or "busy" in done.stderr or str(holder.pid) in done.stderr, done.stderr
        assert _fingerprint(run_dir) == before and _mlflow_status(home, run_dir) == "FINISHED"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(finished_run, tmp_path):
    home, run_dir = _copy(finished_run, tmp_path)
    before = _fingerprint(run_dir)
    done = _run(["-m", "hieros", *RUN, f"hydra.run.dir={run_dir}"], home, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already finished" in done.stdout + done.stderr
    after = _fingerprint(run_dir)
    # what the run produced stays: every metrics line (the final evaluation's too), scores, checkpoints, replay;
    # config.yaml is written again (the copied home has another path) and the tracker's sync record moves on
    kept = [key for key in before if not key.startswith(".hydra") and key not in ("config.yaml", "mlflow_sync.json")]
    assert {key: after[key] for key in kept} == {key: before[key] for key in kept}
    assert "final_eval/greedy_score" in (run_dir / "metrics.jsonl").read_text()
    assert _mlflow_status(home, run_dir) == "FINISHED"


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_falls_back_and_the_run_finishes(finished_run, tmp_path):
    home, run_dir = _copy(finished_run, tmp_path)
    newest = sorted((run_dir / "checkpoints").glob("*.ckpt"))[-1]
    _corrupt(newest)
    done = _run(["-m", "hieros", *RUN, f"hydra.run.dir={run_dir}"], home, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr
    assert _mlflow_status(home, run_dir) == "FINISHED"
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps, "metrics.jsonl lost its lines"
