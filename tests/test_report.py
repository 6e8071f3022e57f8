"""The results report: metrics against hand-computed values and rliable, the paper's Table 1 check, the loaders on a
real sweep directory and a real MLflow sqlite store, and the CLI end to end."""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from hieros.report import build_report, load
from hieros.report import scores as sc
from hieros.report.checks import check_sweep
from hieros.report.cli import main
from hieros.report.flat_config import parse_param
from hieros.report.loading_dirs import expected_jobs, load_sweep_dir
from hieros.report.records import RunRecord, Sweep
from hieros.report.variants import assign_variants

REPS = 400  # bootstrap replicates in tests (the CLI default is 50000)

# --------------------------------------------------------------------------- synthetic sweep in the documented layout
GAMES = ("breakout", "krull")
SEEDS = (0, 1, 2)
LAYERS = (3, 1)  # variant 3 = the default config's depth, so it is the baseline


def _config(game: str, seed: int, layers: int, env: str = "atari100k") -> dict:
    """A composed config as Hydra saves it in .hydra/config.yaml (interpolations left unresolved)."""
    env_node = {"name": env, "game": game, "size": 64, "action_repeat": 4}
    if env == "gym":
        env_node = {"name": "gym", "id": game, "max_steps": None}
    return {
        "env": env_node,
        "sequence_model": {"name": "s5", "num_blocks": "${model.seq_blocks}", "h_source": "state"},
        "sampler": {"name": "etbs", "temperature": 0.3},
        "goal_encoding": {"name": "encoded"},
        "hierarchy": {"layers": layers, "k": 4, "higher_obs": "k_states", "shared_world_model": False},
        "model": {"seq_blocks": 1, "deter": 64},
        "training": {"steps": 1000, "eval_modes": ["sampled", "greedy"]},
        "paths": {"root": "${oc.env:HIEROS_HOME,hieros-runs}", "runs": "${paths.root}/runs"},
        "seed": seed,
        "experiment_name": "smoke_depth",
    }


def _score(game: str, seed: int, layers: int) -> float:
    base = {"breakout": 10.0, "krull": 3000.0}.get(game, 100.0)
    return base * (1.0 + 0.5 * (layers == 3)) + 2.0 * seed


def _write_job(folder: Path, config: dict, overrides: list[str], score: float | None, steps: int = 1000) -> None:
    """Hydra's unresolved .hydra/config.yaml; the loop's resolved config.yaml (only for a job that got as far as
    training: one with a score), metrics.jsonl, and scores.json when ``score`` is not None."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if score is not None:
        resolved = json.loads(json.dumps(config))
        resolved["sequence_model"]["num_blocks"] = config["model"]["seq_blocks"]
        resolved["paths"] = {"root": str(folder.parent), "runs": str(folder.parent)}
        (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    rng = np.random.default_rng(zlib.crc32(str(folder).encode()))
    with open(folder / "metrics.jsonl", "w") as handle:
        for step in range(100, steps + 1, 100):
            level_metrics = {}
            for level in range(config["hierarchy"]["layers"]):
                prefix = f"train/level{level}/"
                level_metrics.update(
                    {
                        prefix + "model_loss": 10.0 / step**0.5 + rng.random(),
                        prefix + "image_loss": 5.0 / step**0.5,
                        prefix + "reward_loss": 1.0 / step**0.5,
                        prefix + "cont_loss": 0.1,
                        prefix + "dyn_loss": 1.2,
                        prefix + "rep_loss": 1.2,
                        prefix + "imag_extrinsic_reward": 0.01 * step / 100,
                        prefix + "imag_subgoal_reward": 0.3,
                        prefix + "imag_novelty_reward": 0.05,
                        prefix + "actor_entropy": 1.0,
                    }
                )
            line = {"step": step, "time": 1.7e9 + step, "sps": 10.0, "episode/score": (score or 1.0) * step / steps}
            line.update(level_metrics)
            handle.write(json.dumps(line) + "\n")
            if step % 500 == 0:
                handle.write(json.dumps({"step": step, "eval/sampled_score": (score or 1.0) * step / steps}) + "\n")
    if score is not None:
        scores = {
            "final_eval": {
                "sampled": {"mean": score, "episodes": [score - 1, score + 1]},
                "greedy": {"mean": score + 1, "episodes": [score + 1]},
            },
            "train_return_last10pct": score * 0.9,
            "train_episodes_last10pct": 3,
            "agent_steps": steps,
            "env_frames": 4 * steps,
            "updates": steps,
            "train_episodes": 12,
        }
        (folder / "scores.json").write_text(json.dumps(scores, indent=2))


def make_sweep(
    root: Path, crashed: tuple = ("krull", 1, 1), missing: tuple = ("breakout", 2, 1), games: tuple = GAMES
) -> Path:
    """A Hydra multirun folder: depth {3, 1} x Atari games x 3 seeds, one job crashed (no scores.json, metrics up
    to step 400) and one job never launched (a missing seed). Job 0 carries an imagination and a subgoal GIF."""
    sweep = root / "multirun_2026-01-01_00-00-00"
    sweep.mkdir(parents=True)
    master = _config("breakout", 0, 3)
    master["hydra"] = {
        "overrides": {
            "task": ["+experiment=smoke_depth", "hierarchy.layers=3,1", f"env.game={','.join(games)}", "seed=0,1,2"]
        },
        "sweeper": {"params": None},
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(master, sort_keys=False))
    number = 0
    for layers in LAYERS:
        for game in games:
            for seed in SEEDS:
                job = (game, seed, layers)
                if job == missing:
                    number += 1
                    continue
                overrides = [f"hierarchy.layers={layers}", f"env.game={game}", f"seed={seed}"]
                score = None if job == crashed else _score(game, seed, layers)
                _write_job(
                    sweep / str(number), _config(game, seed, layers), overrides, score, 400 if score is None else 1000
                )
                number += 1
    media = sweep / "0" / "media"
    media.mkdir()
    import imageio.v3 as iio

    frames = np.stack([np.full((16, 16, 3), 20 * i, dtype=np.uint8) for i in range(6)])
    iio.imwrite(media / "open_loop_step000000500.gif", frames)  # names as hieros.training.media writes them
    iio.imwrite(media / "open_loop_step000001000.gif", frames)
    iio.imwrite(media / "open_loop_step000001000.mp4", frames, fps=4)
    iio.imwrite(media / "subgoals_step000001000.gif", frames[:3])
    return sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests of this module: read it, never write into it."""
    return make_sweep(tmp_path_factory.mktemp("sweep") / "runs")


# --------------------------------------------------------------------------- metrics
def test_human_normalised_score_hand_computed():
    assert sc.human_normalized(15.0, 5.0, 25.0) == pytest.approx(0.5)
    np.testing.assert_allclose(sc.human_normalized([-21.0, 15.0, 33.0], -21.0, 15.0), [0.0, 1.0, 1.5])
    reference = sc.load_reference()
    # Pong, standard constants: (5 - (-20.7)) / (14.6 - (-20.7)) = 25.7 / 35.3
    assert float(reference.normalize("pong", 5.0)) == pytest.approx(25.7 / 35.3)
    assert float(reference.normalize("Pong", 5.0, "paper")) == pytest.approx(26.0 / 36.0)
    assert reference.lookup("MsPacman").game == "ms_pacman"
    assert reference.normalize("cartpole", 1.0) is None
    with pytest.raises(ValueError, match="equal"):
        sc.human_normalized(1.0, 2.0, 2.0)


def test_reference_table_complete():
    reference = sc.load_reference()
    assert len(reference.games) == 26
    up = reference.games["up_n_down"]
    assert (up.random, up.human) == (533.4, 11693.2)
    assert up.bounds("paper") is None
    for method in sc.PUBLISHED_METHODS:
        published = reference.published[method]
        assert "Table 2" in published.source
        assert published.scores["up_n_down"] is None
        assert sum(v is not None for v in published.scores.values()) == 25
    assert reference.published["HIEROS"].scores["krull"] == 8130
    assert reference.published["DreamerV3"].aggregates["iqm"] is None


def test_iqm_matches_scipy_trim_mean_convention():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 100.0]  # n = 7: int(1.75) = 1 cut each end -> mean of 2, 3, 5, 7, 9
    assert sc.iqm(values) == pytest.approx(26.0 / 5.0)
    assert sc.iqm(values) == pytest.approx(scipy.stats.trim_mean(values, 0.25))
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        sample = rng.normal(size=n)
        assert sc.iqm(sample) == pytest.approx(scipy.stats.trim_mean(sample, 0.25))


def test_optimality_gap_and_aggregates_hand_computed():
    # two games: runs (0.5, 1.5) and (0.0, 2.0); per-game means 1.0 and 1.0
    per_game = [[0.5, 1.5], [0.0, 2.0]]
    points = sc.point_estimates(per_game)
    assert points["mean"] == pytest.approx(1.0)
    assert points["median"] == pytest.approx(1.0)
    # pooled (0.5, 1.5, 0.0, 2.0): gaps max(0, 1 - x) = 0.5, 0, 1, 0 -> 1.5 / 4
    assert points["optimality_gap"] == pytest.approx(0.375)
    # pooled sorted (0, 0.5, 1.5, 2): cut 1 each end -> mean(0.5, 1.5) = 1.0
    assert points["iqm"] == pytest.approx(1.0)
    assert sc.optimality_gap([1.2, 3.0]) == 0.0
    with pytest.raises(ValueError, match="holds no runs"):
        sc.point_estimates([[1.0], []])
    with pytest.raises(ValueError, match="non-finite"):
        sc.point_estimates([[1.0, math.nan]])


def test_point_estimates_equal_rliable_metrics():
    from rliable import metrics

    rng = np.random.default_rng(1)
    matrix = rng.gamma(2.0, 0.5, size=(5, 7))  # rliable layout (runs, games)
    points = sc.point_estimates(list(matrix.T))
    assert points["mean"] == pytest.approx(metrics.aggregate_mean(matrix))
    assert points["median"] == pytest.approx(metrics.aggregate_median(matrix))
    assert points["iqm"] == pytest.approx(metrics.aggregate_iqm(matrix))
    assert points["optimality_gap"] == pytest.approx(metrics.aggregate_optimality_gap(matrix))
    other = rng.gamma(2.0, 0.6, size=(4, 7))
    interval = sc.probability_of_improvement(list(other.T), list(matrix.T), reps=50)
    assert interval.estimate == pytest.approx(metrics.probability_of_improvement(other, matrix))


def _loop_bootstrap(matrix: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """rliable's StratifiedBootstrap written as a plain loop: every cell picks a random run of its own game."""
    rng = np.random.default_rng(seed)
    runs, games = matrix.shape
    results = []
    for _ in range(reps):
        sample = matrix[rng.integers(0, runs, (runs, games)), np.arange(games)]
        game_means = sample.mean(axis=0)
        results.append(
            [
                game_means.mean(),
                np.median(game_means),
                scipy.stats.trim_mean(sample, 0.25, axis=None),
                np.mean(np.maximum(1 - sample, 0)),
            ]
        )
    return np.percentile(np.array(results), [2.5, 97.5], axis=0)


def test_bootstrap_intervals_match_reference_loop():
    rng = np.random.default_rng(2)
    matrix = rng.gamma(2.0, 0.5, size=(3, 10))
    intervals = sc.interval_estimates(list(matrix.T), reps=20_000, seed=3)
    expected = _loop_bootstrap(matrix, 1500, seed=11)
    for index, metric in enumerate(sc.METRICS):
        interval = intervals[metric]
        assert interval.low <= interval.estimate <= interval.high
        width = expected[1, index] - expected[0, index]
        assert interval.low == pytest.approx(expected[0, index], abs=0.15 * width), metric
        assert interval.high == pytest.approx(expected[1, index], abs=0.15 * width), metric
    again = sc.interval_estimates(list(matrix.T), reps=20_000, seed=3)
    assert again == intervals  # reproducible through the seed
    # a game with a single run is constant under resampling; unequal run counts are allowed
    ragged = sc.interval_estimates([[0.5], [1.0, 2.0, 3.0]], reps=200)
    assert ragged["mean"].low < ragged["mean"].high


def test_rliable_engine_agrees_when_importable():
    try:
        import rliable.library  # noqa: F401
    except Exception as error:  # rliable 1.2 + arch 7 do not import under pandas 3
        pytest.skip(f"rliable.library not importable here: {error}")
    rng = np.random.default_rng(4)
    matrix = rng.gamma(2.0, 0.5, size=(3, 10))
    ours = sc.interval_estimates(list(matrix.T), reps=3000, seed=0)
    theirs = sc.interval_estimates(list(matrix.T), reps=3000, seed=0, engine="rliable")
    for metric in sc.METRICS:
        width = ours[metric].high - ours[metric].low
        assert theirs[metric].estimate == pytest.approx(ours[metric].estimate)
        assert theirs[metric].low == pytest.approx(ours[metric].low, abs=0.15 * width)
        assert theirs[metric].high == pytest.approx(ours[metric].high, abs=0.15 * width)


def test_probability_of_improvement_and_profile_hand_computed():
    # one game: x = (2, 3), y = (1, 3): pairs 2>1, 2<3, 3>1, 3=3 -> (1 + 0 + 1 + 0.5) / 4
    interval = sc.probability_of_improvement([[2.0, 3.0]], [[1.0, 3.0]], reps=300)
    assert interval.estimate == pytest.approx(0.625)
    assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0
    assert sc.probability_of_improvement([[5.0, 6.0]], [[1.0, 2.0]], reps=50).low == 1.0
    profile, low, high = sc.performance_profile([[0.2, 0.8], [1.5]], [0.0, 0.5, 1.0, 2.0], reps=100)
    np.testing.assert_allclose(profile, [1.0, 2 / 3, 1 / 3, 0.0])
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)


# --------------------------------------------------------------------------- the paper's Table 1
def test_table1_reproduction_from_published_per_game_scores():
    check = sc.table1_check()
    assert check["published"]["mean"] == 120 and check["published"]["median"] == 56
    for kind in sc.REFERENCE_KINDS:
        row = check[f"recomputed ({kind} reference)"]
        assert row["games"] == 25
        assert round(row["mean"]) == 120
        assert round(row["median"]) == 56
        # IQM and optimality gap of the 25 per-game means, not of the unpublished 75 per-seed scores
        assert row["iqm"] == pytest.approx(58.2, abs=0.3)
        assert row["optimality_gap"] == pytest.approx(47.0, abs=0.3)
        assert round(row["iqm"]) != check["published"]["iqm"]
    # recomputed on a subset of games: Krull (8130 - 1598) / (2665.5 - 1598), Breakout (10 - 1.7) / (30.5 - 1.7)
    krull, breakout = 6532 / 1067.5, 8.3 / 28.8
    subset = sc.published_aggregates(sc.load_reference(), "HIEROS", games=["krull", "breakout"])
    assert subset["games"] == 2
    assert subset["mean"] == pytest.approx(100 * (krull + breakout) / 2)
    assert subset["median"] == pytest.approx(100 * (krull + breakout) / 2)
    assert subset["optimality_gap"] == pytest.approx(100 * (1 - breakout) / 2)


# --------------------------------------------------------------------------- loaders
def test_sweep_dir_loader_reports_crash_and_missing_seed(sweep_dir: Path):
    sweep = load(sweep_dir)
    assert len(sweep.records) == 11  # 12 jobs, one never launched
    assert sweep.variant_keys == ["hierarchy.layers"]
    assert sweep.baseline == "hierarchy.layers=3"  # agrees with multirun.yaml's master config
    assert sweep.variants == ["hierarchy.layers=3", "hierarchy.layers=1"]
    assert sweep.games == ["breakout", "krull"]
    crashed = [r for r in sweep.records if r.status != "finished"]
    assert [(r.game, r.seed, r.settings["hierarchy.layers"]) for r in crashed] == [("krull", 1, 1)]
    assert crashed[0].curves["episode/score"].steps[-1] == 400
    record = sweep.select("hierarchy.layers=3", "krull")[0]
    assert record.score() == pytest.approx(_score("krull", 0, 3))
    assert record.score("final_eval", "greedy") == pytest.approx(_score("krull", 0, 3) + 1)
    assert record.score("train_last10pct") == pytest.approx(0.9 * _score("krull", 0, 3))
    assert record.config["sequence_model.num_blocks"] == 1
    assert record.config["paths.root"] == str(sweep_dir)  # read from the loop's resolved config.yaml
    crashed_config = crashed[0].config  # only Hydra's .hydra/config.yaml: interpolations resolved on load
    assert crashed_config["sequence_model.num_blocks"] == 1 and crashed_config["hierarchy.layers"] == 1
    assert "time" not in record.curves
    assert record.curves["train/level2/imag_subgoal_reward"].values.shape == (10,)

    problems = check_sweep(sweep, reference=sc.load_reference())
    kinds = {(p.kind, p.game, p.seed) for p in problems}
    assert ("crashed or unfinished", "krull", 1) in kinds
    assert ("missing seed", "breakout", 2) in kinds
    assert any(p.kind == "missing job" and "missing job numbers: 8" in p.detail for p in problems)
    assert not any(p.kind in ("no human score", "unknown game") for p in problems)


def test_expected_jobs_of_a_basic_sweep():
    master = {"hydra.overrides.task": ["env=gym", "hierarchy.layers=1,2", "seed=0,1,2"]}
    assert expected_jobs(master) == 6
    in_file_grid = {"hydra.sweeper.params.env.game": "krull,breakout", **master}  # an experiment file's grid
    assert expected_jobs(in_file_grid) == 12
    # the command line beats the file for the same key, as in Hydra
    assert expected_jobs({"hydra.sweeper.params.seed": "0,1", **master}) == 6
    assert expected_jobs({"hydra.overrides.task": ["seed=range(3)"]}) is None


def test_loader_reports_unknown_game_gym_env_and_broken_files(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    _write_job(sweep_dir / "0", _config("pong", 0, 3), [], 3.0)
    _write_job(sweep_dir / "1", _config("montezuma", 0, 3), [], 50.0)
    _write_job(sweep_dir / "2", _config("CartPole-v1", 0, 3, env="gym"), [], 150.0)
    (sweep_dir / "3").mkdir()
    (sweep_dir / "3" / "scores.json").write_text("{not json")
    with open(sweep_dir / "0" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 12')  # a line cut off by a crash
    sweep = load(sweep_dir)
    assert len(sweep.records) == 4
    problems = check_sweep(sweep, reference=sc.load_reference())
    details = [(p.kind, p.game, p.detail) for p in problems]
    assert ("unknown game", "montezuma", "'montezuma' is not one of the 26 Atari100k games") in details
    assert any(kind == "no human score" and game == "gym:CartPole-v1" for kind, game, _ in details)
    assert any(kind == "unreadable data" and "line 13" in detail for kind, _, detail in details)
    assert any(kind == "unreadable data" and "scores.json: unreadable" in detail for kind, _, detail in details)
    assert any(kind == "unreadable data" and "config.yaml missing" in detail for kind, _, detail in details)


def test_variant_detection_merges_keys_and_prefers_named_ones():
    def record(run: str, **config) -> RunRecord:
        base = {"env.name": "atari100k", "env.game": "pong", "seed": 0, "paths.root": f"/x/{run}"}
        return RunRecord(run=run, location=run, config={**base, **config}, status="finished")

    records = [
        record("a", **{"model.seq_blocks": 4, "sequence_model.num_blocks": 4, "sampler.name": "etbs"}),
        record("b", **{"model.seq_blocks": 2, "sequence_model.num_blocks": 2, "sampler.name": "etbs"}),
        record("c", **{"model.seq_blocks": 4, "sequence_model.num_blocks": 4, "sampler.name": "uniform"}),
    ]
    sweep = Sweep("test", "directory", records)
    assign_variants(sweep, defaults={"model.seq_blocks": 4, "sampler.name": "etbs"})
    assert sweep.variant_keys == ["sampler.name", "model.seq_blocks"]  # paths.* ignored, num_blocks merged
    assert [r.variant for r in records] == [
        "sampler.name=etbs, model.seq_blocks=4",
        "sampler.name=etbs, model.seq_blocks=2",
        "sampler.name=uniform, model.seq_blocks=4",
    ]
    assert sweep.baseline == "sampler.name=etbs, model.seq_blocks=4"
    assign_variants(sweep, baseline="sampler.name=uniform")
    assert sweep.baseline == "sampler.name=uniform, model.seq_blocks=4"
    # MLflow params are strings
    assert parse_param("3") == 3 and parse_param("True") is True and parse_param("None") is None
    assert parse_param("['sampled', 'greedy']") == ["sampled", "greedy"] and parse_param("etbs") == "etbs"


def test_a_run_from_before_an_option_existed_joins_the_variant_of_the_older_behaviour():
    def record(run: str, **config) -> RunRecord:
        base = {"env.name": "minatar", "env.game": "asterix", "seed": int(run[-1]), "hierarchy.layers": 1}
        return RunRecord(run=run, location=run, config={**base, **config}, status="finished")

    old, resumed = record("old0"), record("new1", **{"agent.world_model.image_loss": "mse"})
    weighted = record("new2", **{"agent.world_model.image_loss": "weighted_mse"})
    sweep = Sweep("test", "directory", [old, resumed, weighted])
    assign_variants(sweep, defaults={})
    assert sweep.variant_keys == ["agent.world_model.image_loss"]
    assert [r.variant for r in (old, resumed, weighted)] == [
        "agent.world_model.image_loss=mse",
        "agent.world_model.image_loss=mse",
        "agent.world_model.image_loss=weighted_mse",
    ]
    assert old.settings == {"agent.world_model.image_loss": "mse"}
    assert "agent.world_model.image_loss" not in old.config  # the record keeps what the run saved


def _populate_mlflow(uri: str, sweep_dir: Path) -> str:
    """Log the synthetic sweep as the MLflow logger does: one parent run, one child run per job with the flattened
    config as params, metrics on the agent-step axis and scores.json/media as artifacts. Returns the parent run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment("smoke_depth", artifact_location=(sweep_dir.parent / "mlartifacts").as_uri())
    parent = client.create_run(experiment, run_name="2026-01-01_00-00-00", tags={"sweep_dir": str(sweep_dir)})
    for record in load_sweep_dir(sweep_dir).records:
        child = client.create_run(experiment, run_name=record.run, tags={"mlflow.parentRunId": parent.info.run_id})
        run_id = child.info.run_id
        params = [Param(key, str(value)) for key, value in record.config.items()]
        metrics = [
            Metric(name, float(v), 0, int(s))
            for name, curve in record.curves.items()
            for s, v in zip(curve.steps, curve.values)
        ]
        client.log_batch(run_id, metrics=metrics[:900], params=params)
        client.log_batch(run_id, metrics=metrics[900:])
        folder = Path(record.location)
        if (folder / "scores.json").is_file():  # finished jobs upload their files; the crashed one has metrics only
            client.log_artifact(run_id, str(folder / "scores.json"))
            client.log_artifact(run_id, str(folder / "metrics.jsonl"))
        client.log_artifact(run_id, str(folder / ".hydra" / "config.yaml"), "config")
        for media in record.media:
            client.log_artifact(run_id, str(media.path), "media")
        client.set_terminated(run_id, "FINISHED" if record.status == "finished" else "FAILED")
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory, sweep_dir: Path) -> tuple[str, str]:
    """A real sqlite MLflow store holding the sweep (experiment ``smoke_depth``): (tracking URI, parent run id)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, _populate_mlflow(uri, sweep_dir)


def test_mlflow_loader_matches_directory_loader(mlflow_store, sweep_dir: Path):
    uri, parent_id = mlflow_store
    from_dir = load(sweep_dir)
    for source in ("smoke_depth", parent_id):
        sweep = load(source, tracking_uri=uri)
        assert sweep.kind == "mlflow" and sweep.parent_run_id == parent_id
        assert len(sweep.records) == len(from_dir.records) == 11
        assert sweep.variant_keys == ["hierarchy.layers"]
        assert set(sweep.variants) == set(from_dir.variants)
        by_job = {(r.game, r.seed, r.variant): r for r in sweep.records}
        for expected in from_dir.records:
            got = by_job[(expected.game, expected.seed, expected.variant)]
            assert got.score() == expected.score()
            assert got.status == ("finished" if expected.status == "finished" else "crashed")
            np.testing.assert_allclose(got.curves["episode/score"].values, expected.curves["episode/score"].values)
        assert {m.kind for r in sweep.records for m in r.media} == {"imagination", "subgoals"}
    with pytest.raises(ValueError, match="not a directory, an MLflow experiment name or a run id"):
        load("no_such_experiment", tracking_uri=uri)


def test_mlflow_loader_tolerates_missing_artifacts_and_metrics(mlflow_store, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    uri, _ = mlflow_store
    client = MlflowClient(uri)
    experiment = client.create_experiment("bare", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment)
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_param(child.info.run_id, "env.name", "atari100k")
    client.log_param(child.info.run_id, "env.game", "pong")
    orphan = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})  # no params at all
    client.set_terminated(orphan.info.run_id, "KILLED")
    sweep = load("bare", tracking_uri=uri)
    assert len(sweep.records) == 2
    statuses = sorted(r.status for r in sweep.records)
    assert statuses == ["crashed", "running"]
    problems = check_sweep(sweep)
    assert any(p.kind == "unreadable data" and "no params" in p.detail for p in problems)
    assert sum(p.kind in ("running", "crashed") for p in problems) == 2


# --------------------------------------------------------------------------- the report
EXPECTED_FIGURES = {
    "reward_curves",
    "eval_curves",
    "aggregate_intervals",
    "performance_profiles",
    "probability_of_improvement",
    "partial_rewards",
    "world_model_losses",
    "etbs_counts",
    "imagination_frames",
    "subgoals_frames",
}


def test_report_from_sweep_dir(sweep_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    report = build_report(sweep_dir, out=out, reps=REPS, etbs_size=300, etbs_seeds=2)
    assert set(report.figures) == EXPECTED_FIGURES
    for paths in report.figures.values():
        assert [p.suffix for p in paths] == [".png", ".svg"]
        assert all(p.stat().st_size > 1000 for p in paths)
    for name in (
        "per_seed_scores",
        "per_game_scores",
        "aggregates",
        "published_comparison",
        "table1_check",
        "probability_of_improvement",
        "variants",
        "missing_data",
    ):
        assert (out / f"{name}.csv").stat().st_size > 0
    assert (out / "media" / "imagination.gif").is_file()
    text = report.report.read_text()
    assert "**Score used:** final evaluation" in text and "**sampled** policy" in text
    assert "reproduces its Table 1 mean (120) and median (56)" in text and "58 and 47" in text
    assert "## Missing or partial data" in text and "seed 2 missing" in text and "crashed or unfinished" in text
    assert "HIEROS (published)" in text
    assert not any(p.kind == "report step failed" for p in report.problems), report.problems

    import pandas as pd

    aggregates = pd.read_csv(out / "aggregates.csv")
    baseline = aggregates[(aggregates.variant == "hierarchy.layers=3") & (aggregates.metric == "mean")].iloc[0]
    reference = sc.load_reference()
    expected = np.mean([np.mean([float(reference.normalize(g, _score(g, s, 3))) for s in SEEDS]) for g in GAMES])
    assert baseline["estimate"] == pytest.approx(100 * expected)
    assert baseline["ci_low"] <= baseline["estimate"] <= baseline["ci_high"]
    per_seed = pd.read_csv(out / "per_seed_scores.csv")
    assert len(per_seed) == 11 and per_seed["score"].isna().sum() == 1  # the crashed job is listed, without a score
    improvement = pd.read_csv(out / "probability_of_improvement.csv")
    assert improvement.iloc[0]["probability_of_improvement"] == pytest.approx(0.0)  # depth 1 scores lower everywhere


def test_etbs_counts_simulated_or_read_from_figure13(tmp_path: Path):
    from hieros.report import etbs_counts, figure13

    simulated, origin = etbs_counts(size=120, seeds=2)
    assert "simulated" in origin and "uniform" in simulated and "etbs tau=0.3" in simulated
    for counts in simulated.values():
        assert counts.shape == (120,) and counts.sum() == pytest.approx(120.0)  # one draw per round
    # uniform draws old items most: item i is drawn in rounds t >= i+1 with probability 1/t
    assert simulated["uniform"][:10].mean() > simulated["uniform"][-10:].mean()
    figure13.run(tmp_path, size=150, seeds=1, with_tbs=False)
    read, origin = etbs_counts(tmp_path / "counts.json")
    assert origin.endswith("counts.json")
    assert set(read) == {
        "uniform",
        *(f"etbs tau={t}" for t in figure13.TEMPERATURES),
        "etbs_original capacity=1e6 tau=0.3",
    }


def test_report_cli_on_mlflow_logs_to_parent(mlflow_store, tmp_path: Path, capsys):
    uri, parent_id = mlflow_store
    out = tmp_path / "mlflow-report"
    code = main(
        [
            parent_id,
            "--tracking-uri",
            uri,
            "--out",
            str(out),
            "--reps",
            str(REPS),
            "--score",
            "train_last10pct",
            "--formats",
            "png",
            "--etbs-size",
            "200",
            "--etbs-seeds",
            "1",
            "--figures",
            "reward_curves,world_model_losses,partial_rewards,imagination_frames",
        ]
    )
    assert code == 0, capsys.readouterr()
    assert "logged to MLflow run" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "last 10% of training" in text and "train_return_last10pct" in text
    from mlflow.tracking import MlflowClient

    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent_id, "report")}
    assert {"report/report.md", "report/reward_curves.png", "report/world_model_losses.png"} <= logged
    assert {"report/partial_rewards.png", "report/imagination_frames.png", "report/media"} <= logged


def _gym_sweep(folder: Path) -> Path:
    for number, (layers, seed) in enumerate([(1, 0), (1, 1), (2, 0), (2, 1)]):
        _write_job(folder / str(number), _config("CartPole-v1", seed, layers, env="gym"), [], 10.0 * layers + seed)
    return folder


def test_report_without_human_scores_uses_minmax(tmp_path: Path):
    sweep_dir = _gym_sweep(tmp_path / "gym")
    chosen = ["reward_curves", "performance_profiles", "probability_of_improvement"]
    report = build_report(sweep_dir, out=tmp_path / "out", reps=REPS, formats=["png"], only=chosen)
    assert report.content.normalisation == "minmax"
    assert report.content.aggregates.empty
    assert set(report.figures) == set(chosen)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(f"{name}.png" for name in chosen)
    text = report.report.read_text()
    assert "min-max normalised" in text and "no random/human reference" in text


def test_cli_rejects_bad_source(mlflow_store, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store[0])
    assert main(["nothing_here", "--out", str(tmp_path / "o")]) == 2
    assert "not a directory, an MLflow experiment name or a run id" in capsys.readouterr().err


def test_python_m_hieros_report_entry_point(tmp_path: Path, python_runner):
    sweep_dir = _gym_sweep(tmp_path / "gym")
    out = tmp_path / "cli"
    result = python_runner(
        "-m",
        "hieros.report",
        str(sweep_dir),
        "--out",
        str(out),
        "--reps",
        "200",
        "--mode",
        "greedy",
        "--formats",
        "png",
        "--figures",
        "reward_curves",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (out / "report.md").is_file()
    assert "**greedy** policy" in (out / "report.md").read_text()
    assert [p.name for p in out.glob("*.png")] == ["reward_curves.png"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_reward_curves_legend_survives_a_game_without_episodes(tmp_path: Path):
    """At smoke size most games end no episode: the legend must still name every variant (it used to be taken
    from the first panel only, which was empty) and an empty panel must say that it has no data."""
    from hieros.report import figures

    sweep_root = make_sweep(tmp_path / "runs", games=("krull", "breakout"))
    for metrics in sweep_root.glob("*/metrics.jsonl"):
        config = yaml.safe_load((metrics.parent / ".hydra" / "config.yaml").read_text())
        if config["env"]["game"] == "breakout":  # the first panel (games are sorted): no episode ended
            lines = [json.loads(line) for line in metrics.read_text().splitlines()]
            lines = [{k: v for k, v in line.items() if k != "episode/score"} for line in lines]
            metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sweep = load(sweep_root)
    figure = figures.reward_curves(sweep)
    first, second = figure.axes[:2]
    assert first.get_title() == "breakout" and first.get_legend() is not None
    legend = [text.get_text().split(" (")[0] for text in first.get_legend().get_texts()]
    assert sorted(legend) == sorted(sweep.variants)
    assert [text.get_text() for text in first.texts] == ["no episode/score logged"]
    assert len(second.texts) == 0 and second.get_legend() is None


def test_sweep_directory_report_is_logged_to_the_parent_run_its_callback_recorded(tmp_path: Path):
    """A sweep directory written by hieros' sweep callback carries mlflow_parent.json: the report of that directory
    goes to the parent run too; a record pointing at a store that no longer exists is listed, and creates nothing."""
    from mlflow.tracking import MlflowClient

    from hieros.training.sweep import write_record

    sweep_root = make_sweep(tmp_path / "runs", games=("breakout",))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("smoke_depth", (tmp_path / "art").as_uri())).info.run_id
    write_record(sweep_root, {"run_id": parent, "tracking_uri": uri, "sweep_dir": str(sweep_root)})
    only = ["reward_curves"]
    report = build_report(sweep_root, out=tmp_path / "r1", reps=REPS, formats=["png"], only=only)
    assert report.sweep.kind == "directory" and report.logged_to == parent
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent, "report")}

    gone = tmp_path / "moved" / "mlflow.db"
    write_record(sweep_root, {"run_id": parent, "tracking_uri": f"sqlite:///{gone}"})
    report = build_report(sweep_root, out=tmp_path / "r2", reps=REPS, formats=["png"], only=only)
    assert report.logged_to is None and not gone.exists()
    assert any(p.kind == "not logged" and "does not exist" in p.detail for p in report.problems)
    assert build_report(sweep_root, out=tmp_path / "r3", reps=REPS, only=only, log_to_mlflow=False).logged_to is None
