"""Invariants of the real training loop (danijar style) on CartPole with vector observations and a tiny 3-level
agent, run as ``python -m hieros``: steps reached, update counts per level from the train-ratio clock and the k^i
schedule, each level's acting steps and interval rewards in its replay, evaluations, and seeding (two runs with the
same seed are identical on CPU, another seed differs).

Hierarchy depths 1-4 each training every level are covered by ``tests/test_agent.py::test_every_depth_trains_each_level``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hieros.training.checkpoint import load_file

STEPS, K, LAYERS = 300, 2, 3
BATCH, LENGTH, MIN_WINDOWS, TRAIN_RATIO = 2, 8, 2, 4
RATIO = TRAIN_RATIO / (BATCH * LENGTH)  # 0.25 level-0 updates per agent step
LOG_EVERY, EVAL_EVERY, EVAL_EPISODES, FINAL_EPISODES = 20, 100, 2, 3
RUN = [
    "env=gym",
    "model=tiny",
    "fabric=cpu",
    "logger=none",
    f"hierarchy.layers={LAYERS}",
    f"hierarchy.k={K}",
    f"training.steps={STEPS}",
    f"training.batch_size={BATCH}",
    f"training.batch_length={LENGTH}",
    f"training.min_windows={MIN_WINDOWS}",
    f"training.train_ratio={TRAIN_RATIO}",
    "training.replay_capacity=2000",
    f"training.log_every={LOG_EVERY}",
    f"training.eval_every={EVAL_EVERY}",
    f"training.eval_episodes={EVAL_EPISODES}",
    f"training.final_eval_episodes={FINAL_EPISODES}",
    "training.eval_modes=[sampled,greedy]",
    "training.checkpoint_every=0",
    "training.torch_threads=1",
    "training.progress=plain",
]
VOLATILE = {"time", "sps"}  # wall-clock figures of a metrics line; everything else must repeat exactly


def train(run_dir: Path, *overrides: str) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HIEROS_HOME": str(run_dir.parent / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "hieros", *RUN, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def reports(run_dir: Path) -> list[dict]:
    return [line for line in metrics(run_dir) if "sps" in line]


def replay(run_dir: Path, level: int, rows: int) -> dict[str, np.ndarray]:
    folder = run_dir / "replay" / f"level{level}"
    return {path.stem: np.load(path)[0, :rows] for path in folder.glob("*.npy") if path.stem != "written"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("seed0") / "run", "seed=0")


@pytest.fixture(scope="module")
def final_report(run_dir) -> dict:
    return reports(run_dir)[-1]


@pytest.mark.slow
def test_steps_episodes_and_reports(run_dir, final_report):
    scores = json.loads((run_dir / "scores.json").read_text())
    counters = load_file(run_dir / "checkpoints" / f"step_{STEPS:012d}.ckpt")["counters"]
    assert scores["agent_steps"] == counters["step"] == final_report["step"] == STEPS
    assert final_report["replay/level0_steps"] == STEPS  # one level-0 row per agent step
    assert scores["updates"] == counters["updates"] == [final_report[f"updates/level{i}"] for i in range(LAYERS)]
    assert [line["step"] for line in reports(run_dir)] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    # every training episode is in level 0's replay: it ends at the row of its step, and its return is the sum of
    # the rewards stored for it (an episode ending on the very last step is recorded but never stored)
    level0 = replay(run_dir, 0, STEPS)
    episodes = counters["episodes"]
    assert scores["train_episodes"] == len(episodes) > 2  # a poor CartPole policy ends episodes in 10-50 steps
    stored = [episode for episode in episodes if episode["step"] < STEPS]
    assert [int(episode["step"]) for episode in stored] == np.flatnonzero(level0["is_last"]).tolist()
    for episode in stored:
        end = int(episode["step"])
        begin = end - int(episode["length"])
        assert level0["is_first"][begin] and not level0["is_first"][begin + 1 : end + 1].any()
        assert episode["return"] == pytest.approx(level0["reward"][begin : end + 1].sum())
    tail = [episode["return"] for episode in episodes if episode["step"] > 0.9 * STEPS]
    assert scores["train_return_last10pct"] == pytest.approx(np.mean(tail) if tail else None)


@pytest.mark.slow
def test_level0_updates_follow_the_train_ratio(run_dir):
    """Level 0 trains once its replay holds ``min_windows`` windows, i.e. from agent step s0 = min_windows +
    batch_length - 1 on: one update at s0, then ``RATIO`` per step (the clock carries the fraction over).

    So after s steps: updates = 1 + floor(RATIO (s - s0)) exactly, and |updates - RATIO s| <= RATIO s0 + 1: the
    tolerance is the s0 steps before training could start plus one update for the first call and the rounding.
    """
    s0 = MIN_WINDOWS + LENGTH - 1
    for report in reports(run_dir):
        step, updates = report["step"], report["updates/level0"]
        assert updates == (1 + math.floor(RATIO * (step - s0)) if step >= s0 else 0), report
        assert abs(updates - RATIO * step) <= RATIO * s0 + 1
    assert reports(run_dir)[-1]["updates/level0"] >= 70


@pytest.mark.slow
def test_level_i_trains_on_every_k_pow_i_th_level0_update(run_dir, final_report):
    """Once level i has trained (its replay holds ``min_windows`` windows, and it only grows), it trains on exactly
    every k^i-th level-0 update: between two reports its updates grow by the multiples of k^i crossed."""
    lines = reports(run_dir)
    total0 = final_report["updates/level0"]
    for level in range(1, LAYERS):
        stride = K**level
        first = next(line for line in lines if line[f"updates/level{level}"] > 0)
        for before, after in zip(lines, lines[1:]):
            if before["step"] >= first["step"]:
                crossed = after["updates/level0"] // stride - before["updates/level0"] // stride
                assert after[f"updates/level{level}"] - before[f"updates/level{level}"] == crossed
        updates = final_report[f"updates/level{level}"]
        assert updates > 5
        # overall ≈ level 0's / k^i, short by the level-0 updates made before level i's replay was ready
        assert total0 / stride - first["updates/level0"] / stride - 1 <= updates <= total0 / stride
        trained = [line for line in lines if f"train/level{level}/model_loss" in line]
        assert trained and all(math.isfinite(line[f"train/level{level}/model_loss"]) for line in trained)


@pytest.mark.slow
def test_level_i_acts_every_k_pow_i_steps_with_the_interval_reward(run_dir, final_report):
    """Level i's replay rows are exactly the agent steps where the episode step is a multiple of k^i plus every
    episode end, with level 0's episode flags there, the summed environment reward since its previous row, and
    (for level i-1) the subgoal code level i chose at its latest acting step."""
    level0 = replay(run_dir, 0, STEPS)
    episode_step = np.zeros(STEPS, np.int64)
    for t in range(1, STEPS):
        episode_step[t] = 0 if level0["is_first"][t] else episode_step[t - 1] + 1
    acted = {0: np.arange(STEPS)}
    for level in range(1, LAYERS):
        steps = np.flatnonzero((episode_step % K**level == 0) | level0["is_last"])
        acted[level] = steps
        assert final_report[f"replay/level{level}_steps"] == len(steps)
        rows = replay(run_dir, level, len(steps))
        for flag in ("is_first", "is_last", "is_terminal"):
            np.testing.assert_array_equal(rows[flag], level0[flag][steps], err_msg=f"level {level} {flag}")
        cumulative = np.concatenate([[0.0], np.cumsum(level0["reward"])])
        interval = cumulative[steps + 1] - cumulative[np.concatenate([[0], steps[:-1] + 1])]
        np.testing.assert_allclose(rows["reward"], interval, err_msg=f"level {level} interval rewards")
        assert rows["vector"].shape[1] > 0 and np.any(rows["vector"] != 0)
    for level in range(LAYERS - 1):  # the held subgoal: level i's code = level i+1's action at its latest step
        rows, above = replay(run_dir, level, len(acted[level])), replay(run_dir, level + 1, len(acted[level + 1]))
        latest = np.searchsorted(acted[level + 1], acted[level], side="right") - 1
        goal = rows["goal_code"].reshape(len(acted[level]), -1).astype(np.float32)
        np.testing.assert_array_equal(goal, above["action"][latest], err_msg=f"goal of level {level}")
        assert np.all(goal.sum(-1)[~rows["is_last"]] == 8)  # one-hot 8x8 codes except at episode ends (zeroed)


@pytest.mark.slow
def test_periodic_and_final_evaluations_ran(run_dir):
    lines = metrics(run_dir)
    periodic = [
        line["step"] for line in lines if "eval/sampled_score" in line and "final_eval/sampled_score" not in line
    ]
    assert periodic == list(range(EVAL_EVERY, STEPS, EVAL_EVERY))
    assert all("eval/greedy_score" in line for line in lines if "eval/sampled_score" in line)
    final = [line for line in lines if "final_eval/sampled_score" in line]
    assert len(final) == 1 and final[0]["step"] == STEPS
    scores = json.loads((run_dir / "scores.json").read_text())
    for mode in ("sampled", "greedy"):
        episodes = scores["final_eval"][mode]["episodes"]
        assert len(episodes) == FINAL_EPISODES and all(r >= 1 and r == int(r) for r in episodes)  # CartPole: +1/step
        assert scores["final_eval"][mode]["mean"] == pytest.approx(np.mean(episodes))
        assert final[0][f"final_eval/{mode}_score"] == pytest.approx(np.mean(episodes))


def _repeatable(lines: list[dict]) -> list[dict]:
    return [{key: value for key, value in line.items() if key not in VOLATILE} for line in lines]


@pytest.mark.slow
def test_same_seed_same_run_other_seed_other_run(run_dir, tmp_path):
    again = train(tmp_path / "again" / "run", "seed=0")
    assert json.loads((again / "scores.json").read_text()) == json.loads((run_dir / "scores.json").read_text())
    assert _repeatable(metrics(again)) == _repeatable(metrics(run_dir))  # every logged loss, bit for bit

    steps = 100
    other = train(tmp_path / "other" / "run", "seed=1", f"training.steps={steps}")
    np.testing.assert_raises(
        AssertionError, np.testing.assert_array_equal, replay(other, 0, 1)["vector"], replay(run_dir, 0, 1)["vector"]
    )  # another seed resets the environment elsewhere
    mine = _repeatable([line for line in reports(run_dir) if line["step"] <= steps])
    theirs = _repeatable(reports(other))
    assert [line["step"] for line in mine] == [line["step"] for line in theirs]
    differing = [key for a, b in zip(mine, theirs) for key in a if key.startswith("train/") and a[key] != b.get(key)]
    assert differing  # other data, other losses
