"""Eval-only (``python -m hieros.eval``): loads a saved checkpoint with its stored config, runs fresh episodes,
writes scores and a video of them, and logs both to the checkpoint's MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from hieros.eval import EvalError, main, parse_args
from hieros.registry import Registry

TINY = [
    "model=tiny",
    "fabric=cpu",
    "training.batch_size=4",
    "training.batch_length=8",
    "training.min_windows=4",
    "training.train_ratio=8",
    "training.replay_capacity=500",
    "training.log_every=10",
    "training.eval_every=0",
    "training.final_eval_episodes=1",
    "training.eval_modes=[greedy]",
    "training.torch_threads=1",
]


def _train(run_dir: Path, home: Path, *overrides: str, tracking_uri: str | None = None) -> None:
    from hieros.training.loop import train

    with pytest.MonkeyPatch.context() as env:  # also from module-scoped fixtures
        env.setenv("HIEROS_HOME", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        if tracking_uri:
            env.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        with initialize_config_module("hieros.conf", version_base="1.3"):
            cfg = compose("config", overrides=[*TINY, *overrides])
        train(cfg, Registry.default(), run_dir)


@pytest.fixture(scope="module")
def minatar_run(tmp_path_factory):
    """A short 2-level MinAtar run tracked in a sqlite store: (run directory, tracking URI)."""
    root = tmp_path_factory.mktemp("minatar")
    uri = f"sqlite:///{root}/mlflow.db"
    _train(root / "run", root / "home", "env=minatar", "env.size=16", "hierarchy.layers=2", "hierarchy.k=2",
           "training.steps=30", "logger.media_every=0", tracking_uri=uri)  # fmt: skip
    return root / "run", uri


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["episodes=3"], "checkpoint=PATH is required"),
        (["checkpoint=x", "episods=3"], "unknown arguments ['episods']"),
        (["checkpoint=x", "episodes=0"], "episodes=0 is invalid"),
        (["checkpoint=x", "mode=best"], "mode='best' is invalid"),
        (["checkpoint=x", "video=maybe"], "video='maybe' is invalid"),
        (["checkpoint", "x"], "arguments are key=value pairs"),
    ],
)
def test_bad_arguments_are_explained(argv, message):
    with pytest.raises(EvalError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_args(argv)


def test_missing_checkpoint_exits_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={tmp_path / 'nope.ckpt'}"])
    assert exit_info.value.code == 2
    assert f"checkpoint {tmp_path / 'nope.ckpt'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([f"checkpoint={tmp_path}"])
    assert "no usable checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluation
def test_module_and_console_script_print_the_usage():
    commands = [[sys.executable, "-m", "hieros.eval", "--help"]]
    script = Path(sys.executable).parent / "hieros-eval"  # installed by `pip install -e .` (pyproject scripts)
    if script.exists():
        commands.append([str(script), "--help"])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "checkpoint=PATH" in done.stdout and "video_episodes" in done.stdout


@pytest.mark.slow
def test_eval_writes_scores_and_video_and_logs_to_the_run(minatar_run, tmp_path, monkeypatch, capsys):
    import imageio.v2 as imageio
    from mlflow.tracking import MlflowClient

    run_dir, uri = minatar_run
    out = tmp_path / "out"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    main([f"checkpoint={run_dir}", "episodes=2", "video=true", f"out={out}"])  # = python -m hieros.eval ...
    assert "2 episodes (greedy)" in capsys.readouterr().out

    scores = json.loads((out / "eval_step000000030_greedy.json").read_text())
    assert scores["step"] == 30 and len(scores["episodes"]) == 2 and len(scores["lengths"]) == 2
    assert scores["mean"] == sum(scores["episodes"]) / 2
    assert scores["checkpoint"] == str(run_dir / "checkpoints" / "step_000000000030.ckpt")
    frames = sum(int(length) + 1 for length in scores["lengths"])  # each episode's reset frame + its transitions
    gif = imageio.mimread(out / "eval_step000000030_greedy.gif", memtest=False)
    assert len(gif) == frames and gif[0].shape == (96, 96, 3)  # 16x16 observations upscaled x6
    with imageio.get_reader(out / "eval_step000000030_greedy.mp4") as reader:
        assert reader.count_frames() == frames

    client = MlflowClient(tracking_uri=uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run_id, "eval_only/greedy_score")
    assert [(m.step, m.value) for m in history] == [(30, scores["mean"])]
    names = {item.path for item in client.list_artifacts(run_id, "eval/step000000030")}
    assert {f"eval/step000000030/eval_step000000030_greedy.{ext}" for ext in ("json", "gif", "mp4")} <= names


@pytest.mark.slow
def test_eval_of_a_vector_env_checkpoint_skips_the_video_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    _train(run_dir, tmp_path / "home", "env=gym", "hierarchy.layers=1", "training.steps=20", "logger=none")
    checkpoint = run_dir / "checkpoints" / "step_000000000020.ckpt"
    main([f"checkpoint={checkpoint}", "episodes=1", "mode=sampled", "video=true"])
    out = capsys.readouterr().out
    assert "no video: the environment has vector observations" in out
    assert "not logged: the run was trained with logger=none" in out
    scores = json.loads((run_dir / "checkpoints" / "eval" / "eval_step000000020_sampled.json").read_text())
    assert len(scores["episodes"]) == 1 and scores["mode"] == "sampled"
    assert not list((run_dir / "checkpoints" / "eval").glob("*.gif"))
