"""World-model diagnostics (``hieros-diagnose RUN_DIR``): on a real tiny CartPole run tracked in a sqlite MLflow
store, the CLI writes every section, its numbers match direct recomputations, its metrics land in the run, and a
directory without checkpoints or replay is refused with exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from hieros.diagnose import (
    buckets_for,
    find_episodes,
    load_episodes,
    load_run,
    sample_windows,
    state_gap,
    to_tensors,
)
from hieros.diagnose.__main__ import main
from hieros.registry import Registry

STEPS, LENGTH, CONTEXT = 300, 16, 8
RUN = [
    "env=gym",
    "model=tiny",
    "fabric=cpu",
    "hierarchy.layers=1",
    "sequence_model.acting_context=window",
    f"training.steps={STEPS}",
    "training.batch_size=4",
    f"training.batch_length={LENGTH}",
    "training.min_windows=4",
    "training.train_ratio=4",
    "training.replay_capacity=2000",
    "training.log_every=100",
    "training.eval_every=0",
    "training.final_eval_episodes=0",
    "training.eval_modes=[greedy]",
    "training.torch_threads=1",
    "training.progress=plain",
    "agent.actor_critic.imag_starts=16",
]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A 300-step CartPole run (1 level, windows of 16) tracked in a sqlite store: (run directory, tracking URI)."""
    from hieros.training.loop import train

    root = tmp_path_factory.mktemp("diagnose")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as env:  # module-scoped: the function-scoped monkeypatch is not available
        env.setenv("HIEROS_HOME", str(root / "home"))
        env.setenv("MLFLOW_TRACKING_URI", uri)
        with initialize_config_module("hieros.conf", version_base="1.3"):
            cfg = compose("config", overrides=RUN)
        train(cfg, Registry.default(), root / "run")
    return root / "run", uri


@pytest.fixture(scope="module")
def diagnosed(tracked_run):
    """The CLI run in-process on the tracked run: (JSON report, console output)."""
    run_dir, _ = tracked_run
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main([str(run_dir), "--windows", "32", "--context", str(CONTEXT)]) == 0
    path = run_dir / "diagnostics" / f"diagnostics_step{STEPS:09d}.json"
    return json.loads(path.read_text()), output.getvalue()


def test_report_has_every_section_for_level0(diagnosed):
    report, console = diagnosed
    assert report["step"] == STEPS and list(report["levels"]) == ["level0"]
    level = report["levels"]["level0"]
    assert {"open_loop", "free_bits", "action_sensitivity", "state_gap"} <= set(level)
    loop = level["open_loop"]
    horizon = min(16, LENGTH - CONTEXT)
    assert loop["horizon"] == list(range(1, horizon + 1))
    assert len(loop["count"]) == len(loop["reward_abs_err"]) == len(loop["obs"]["vector"]["model_mse"]) == horizon
    assert math.isfinite(loop["obs"]["vector"]["model_mse"][0]) and math.isfinite(loop["cont_abs_err"][0])
    assert loop["obs"]["vector"]["copy_last_mse"][0] >= 0
    sensitivity = level["action_sensitivity"]
    assert sensitivity["actions"] == 2 and math.isfinite(sensitivity["obs"]["vector"]["spread"])
    for title in ("open-loop prediction", "free bits", "action sensitivity", "acting state", "wrote"):
        assert title in console
    metrics = report["metrics"]
    assert metrics["diagnose/level0/kl_under_free_share"] == level["free_bits"]["kl_under_free_share"]
    assert f"diagnose/level0/open_loop_vector_mse_h{horizon}" in metrics


def test_open_loop_masks_steps_after_an_episode_start(tracked_run, diagnosed):
    """The windows counted at horizon h are those without an episode start in steps context..context-1+h."""
    report, _ = diagnosed
    run = load_run(tracked_run[0])
    windows = sample_windows(run.replays[0], 32, LENGTH, seed=0)
    starts = windows["is_first"][:, CONTEXT:]
    expected = [int((~starts[:, :h].any(1)).sum()) for h in report["levels"]["level0"]["open_loop"]["horizon"]]
    assert report["levels"]["level0"]["open_loop"]["count"] == expected
    assert expected[0] > expected[-1] > 0  # CartPole episodes are short: some windows are cut, some are not


def test_windows_are_stored_rows_with_a_forced_episode_start(tracked_run):
    run = load_run(tracked_run[0])
    windows = sample_windows(run.replays[0], 8, LENGTH, seed=3)
    stored = {
        key: np.load(tracked_run[0] / "replay" / "level0" / f"{key}.npy")[0, :STEPS] for key in ("vector", "is_first")
    }
    assert windows["vector"].shape == (8, LENGTH, 4) and windows["is_first"][:, 0].all()
    for window in range(8):
        start = int(np.flatnonzero((stored["vector"] == windows["vector"][window, 0]).all(-1))[0])
        np.testing.assert_array_equal(stored["vector"][start : start + LENGTH], windows["vector"][window])
        np.testing.assert_array_equal(stored["is_first"][start + 1 : start + LENGTH], windows["is_first"][window, 1:])


def test_kl_under_free_share_equals_a_direct_recomputation(tracked_run, diagnosed):
    report, _ = diagnosed
    run = load_run(tracked_run[0])
    wm = run.agent.levels[0].world_model
    batch = to_tensors(sample_windows(run.replays[0], 32, LENGTH, seed=0), "cpu")
    with torch.no_grad():
        prev = torch.cat([torch.zeros_like(batch["action"][:, :1]), batch["action"][:, :-1]], 1)  # a_{t-1}
        prev = prev * (~batch["is_first"]).unsqueeze(-1).float()
        post, _ = wm.dynamics.observe(wm.encode(batch), prev, batch["is_first"], sample=False)
        kl = wm.kl_terms(post["logit"], post["prior_logit"])[0]
    bits = report["levels"]["level0"]["free_bits"]
    assert bits["kl_free"] == run.config["agent"]["world_model"]["kl_free"] == 1.0
    assert bits["steps"] == 32 * LENGTH
    assert bits["kl_under_free_share"] == pytest.approx(float((kl < 1.0).float().mean()), abs=1e-6)
    assert bits["kl_mean"] == pytest.approx(float(kl.mean()), rel=1e-5)


def test_state_gap_is_zero_inside_the_first_window_and_for_window_acting(tracked_run, diagnosed):
    report, _ = diagnosed
    gap = report["levels"]["level0"]["state_gap"]
    assert gap["acting_context"] == "window" and gap["complete_episodes"]
    assert [(b["low"], b["high"]) for b in gap["buckets"]] == [(0, 16), (16, 32), (32, 64), (64, None)]
    assert sum(b["steps"] for b in gap["buckets"]) == sum(gap["episode_lengths"])
    first, second = gap["buckets"][0], gap["buckets"][1]
    assert first["steps"] > 0 and first["rel_gap"] < 1e-4  # both observe from the episode start, deterministically
    assert first["obs_mse"]["vector"]["episode"] == pytest.approx(first["obs_mse"]["vector"]["window"], rel=1e-4)
    assert all(b["acting_gap"] == 0.0 for b in gap["buckets"] if b["steps"])  # acting reads the window state
    assert second["steps"] > 0 and second["rel_gap"] > 1e-3  # past T the window forgets the episode's start

    # The same episodes with episode acting: the acting gap is then the episode-vs-window gap itself.
    run = load_run(tracked_run[0])
    arrays, complete, _ = load_episodes(run.replays[0], 5)
    assert complete and [len(a["is_first"]) for a in arrays] == gap["episode_lengths"]
    for episode in arrays:
        assert episode["is_first"][0] and not episode["is_first"][1:].any() and episode["is_last"][-1]
    episodes = [to_tensors(a, "cpu") for a in arrays]
    again = state_gap(run.agent.levels[0].world_model, episodes, LENGTH, acting_context="episode")
    for bucket, reported in zip(again["buckets"], gap["buckets"]):
        assert bucket["steps"] == reported["steps"]
        if bucket["steps"]:
            assert bucket["acting_gap"] == pytest.approx(bucket["rel_gap"])
            assert bucket["rel_gap"] == pytest.approx(reported["rel_gap"], rel=1e-4, abs=1e-6)


def test_metrics_and_report_land_in_the_runs_mlflow_run(tracked_run, diagnosed):
    from mlflow.tracking import MlflowClient

    run_dir, uri = tracked_run
    report, _ = diagnosed
    client = MlflowClient(tracking_uri=uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert report["mlflow"].startswith("logged") and run_id in report["mlflow"]
    history = client.get_metric_history(run_id, "diagnose/level0/kl_under_free_share")
    assert [(m.step, m.value) for m in history] == [
        (STEPS, pytest.approx(report["levels"]["level0"]["free_bits"]["kl_under_free_share"]))
    ]
    logged = client.get_run(run_id).data.metrics
    assert {key for key in report["metrics"]} <= set(logged)
    assert "diagnose/level0/open_loop_vector_mse_h1" in logged and "diagnose/level0/acting_gap_rel_0_16" in logged
    names = {item.path for item in client.list_artifacts(run_id, "diagnostics")}
    assert f"diagnostics/diagnostics_step{STEPS:09d}.json" in names


def test_no_mlflow_and_an_unreachable_store_do_not_fail(tracked_run, tmp_path, capsys):
    run_dir, _ = tracked_run
    out = tmp_path / "report.json"
    assert main([str(run_dir), "--windows", "4", "--episodes", "1", "--no-mlflow", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["mlflow"] == "not logged (--no-mlflow)"

    copy = tmp_path / "moved"  # a run whose store is gone: a warning, the report is still written
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("diagnostics"))
    checkpoint = sorted((copy / "checkpoints").glob("*.ckpt"))[-1]
    payload = torch.load(checkpoint, weights_only=True)
    payload["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}"
    torch.save(payload, checkpoint)
    checkpoint.with_name(checkpoint.name + ".sha256").unlink()
    assert main([str(copy), "--windows", "4", "--episodes", "1"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: not logged: MLflow store" in err and "no database file" in err
    assert not (tmp_path / "gone").exists()
    assert (copy / "diagnostics" / f"diagnostics_step{STEPS:09d}.json").is_file()


def test_missing_run_checkpoint_or_replay_exits_2_with_the_fix(tracked_run, tmp_path, capsys):
    for argv, message in [
        ([str(tmp_path / "nope")], "does not exist: pass the folder a training run wrote"),
        ([str(tmp_path)], f"no usable checkpoint in {tmp_path / 'checkpoints'}: train first"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    bare = tmp_path / "checkpoints_only"
    shutil.copytree(tracked_run[0] / "checkpoints", bare / "checkpoints")
    with pytest.raises(SystemExit) as exit_info:
        main([str(bare), "--no-mlflow"])
    assert exit_info.value.code == 2
    assert f"replay folder {bare / 'replay' / 'level0'} is missing" in capsys.readouterr().err


def test_episodes_are_found_between_starts_and_ends():
    first = np.array([0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0], bool)
    last = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool)
    # rows 0-1: tail of an episode cut by the ring; 2-4 ends on is_last; 5 is followed by a start; 6-9 ends on
    # is_last; 10-11 is still running
    assert find_episodes(first, last) == ([(2, 5), (5, 6), (6, 10)], True)
    assert find_episodes(np.array([0, 0, 1, 0, 0, 0], bool), np.zeros(6, bool)) == ([(2, 6)], False)
    assert find_episodes(np.zeros(4, bool), np.zeros(4, bool)) == ([(0, 4)], False)
    assert buckets_for(64) == [(0, 64), (64, 128), (128, 256), (256, None)]


def test_module_entry_point_prints_the_usage(python_runner, tmp_path):
    done = python_runner("-m", "hieros.diagnose", "--help", cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "RUN_DIR" in done.stdout and "--no-mlflow" in done.stdout
