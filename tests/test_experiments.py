"""Experiment overlays (paper section 3.1 and Appendix G), the smoke overlay, the evaluation cap and hieros.suite.

Every overlay composes and validates; each ablation's grid is the four Appendix G games x 3 seeds x the variants of
its paper section, and each grid point differs from the default config in exactly the keys that section names. Job
counts come from Hydra's own basic-sweeper code path (checked once against a real ``-m`` multirun).
"""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from hieros import suite
from hieros.config import ConfigError, validate
from hieros.envs.atari100k import ATARI100K_GAMES
from hieros.registry import Registry

ABLATION_GAMES = ["krull", "breakout", "battle_zone", "freeway"]  # Appendix G
SEEDS = ["0", "1", "2"]
# experiment -> (swept key, its values in the file, the paper's default value, keys a non-default value changes:
# a set of exact keys, or a prefix that every changed key starts with)
ABLATIONS: dict[str, tuple[str, list[str], str, set[str] | str]] = {
    "ablation_rssm": ("sequence_model", ["s5", "rssm"], "s5", "sequence_model."),  # G.1
    "ablation_state": ("sequence_model.h_source", ["state", "output"], "state", {"sequence_model.h_source"}),  # G.2
    "ablation_depth": ("hierarchy.layers", ["1", "2", "3", "4"], "3", {"hierarchy.layers"}),  # G.3
    "ablation_sampler": ("sampler", ["uniform", "etbs"], "etbs", "sampler."),  # G.4
    "ablation_kth_state": ("hierarchy.higher_obs", ["k_states", "kth_state"], "k_states", {"hierarchy.higher_obs"}),
    "ablation_small_s5": ("model", ["paper", "small"], "paper", {"model.seq_blocks", "sequence_model.num_blocks"}),
    "ablation_goal_decoded": ("goal_encoding", ["encoded", "decoded"], "encoded", {"goal_encoding.name"}),  # G.7
    "ablation_shared_world_model": (
        "hierarchy.shared_world_model",
        ["false", "true"],
        "false",
        {"hierarchy.shared_world_model"},
    ),  # G.8
    "ablation_no_stoch": (
        "agent.world_model.stochastic",
        ["true", "false"],
        "true",
        {"agent.world_model.stochastic"},
    ),  # G.8
}


@pytest.fixture
def hydra_compose() -> Iterator[Any]:
    with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))


def _flat(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted.key: value}`` (lists kept whole)."""

    def walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    return dict(walk(OmegaConf.to_container(cfg, resolve=True), ""))


def _diff(a: DictConfig, b: DictConfig) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {key for key in fa.keys() | fb.keys() if fa.get(key, "<absent>") != fb.get(key, "<absent>")}


def _job(job: list[str]) -> dict[str, str]:
    """A job's overrides as a dict; Hydra's sweeper spells booleans as Python does (``False``), YAML as ``false``."""
    pairs = (item.split("=", 1) for item in job)
    return {key: value.lower() if value in ("True", "False") else value for key, value in pairs}


def _jobs(name: str, *extra: str, smoke: bool = False) -> list[list[str]]:
    (sweep,) = suite.plan([name], list(extra), launcher="basic", smoke=smoke, validate_jobs=False)
    return sweep.jobs


# ----------------------------------------------------------------------------------------------- the overlays
def test_every_paper_experiment_has_an_overlay() -> None:
    assert set(ABLATIONS) | {"atari100k", "smoke"} <= set(suite.experiment_names())
    assert suite.suites()["ablations"] == sorted(ABLATIONS)


@pytest.mark.parametrize("name", [*ABLATIONS, "atari100k"])
def test_an_overlay_is_global_cites_the_paper_and_names_its_experiment(
    name: str, conf_dir: Path, hydra_compose: Any, registry: Registry
) -> None:
    text = (conf_dir / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert ("Appendix G" in text and "G." in text) if name in ABLATIONS else "Appendix C" in text
    cfg = hydra_compose(f"+experiment={name}")
    validate(cfg, registry)
    assert cfg.experiment_name == name
    assert _diff(cfg, hydra_compose()) == {"experiment_name"}, "an overlay changes nothing but its grid and name"


def test_the_atari100k_grid_is_the_26_games_times_3_seeds() -> None:
    jobs = [_job(job) for job in _jobs("atari100k")]
    assert len(jobs) == 78
    assert sorted((job["env.game"], job["seed"]) for job in jobs) == sorted(itertools.product(ATARI100K_GAMES, SEEDS))
    published = json.loads((Path(suite.__file__).parent / "data" / "atari100k_reference.json").read_text())
    assert published["published"]["HIEROS"]["missing"] == ["up_n_down"]  # the overlay's header says so


@pytest.mark.parametrize("name", ABLATIONS)
def test_an_ablation_grid_is_four_games_three_seeds_and_its_variants(name: str) -> None:
    key, values, default, _ = ABLATIONS[name]
    assert default in values
    jobs = [_job(job) for job in _jobs(name)]
    assert len(jobs) == 4 * 3 * len(values)
    got = sorted((job["env.game"], job["seed"], job[key]) for job in jobs)
    assert got == sorted(itertools.product(ABLATION_GAMES, SEEDS, values))
    assert all(job["+experiment"] == name for job in jobs)


def _check_variant(name: str, overrides: dict[str, str], hydra_compose: Any, registry: Registry) -> None:
    key, _, default, changes = ABLATIONS[name]
    job = [f"+experiment={name}", *(f"{k}={v}" for k, v in overrides.items())]
    cfg = hydra_compose(*job)
    validate(cfg, registry)
    base = hydra_compose(f"env.game={overrides['env.game']}", f"seed={overrides['seed']}")
    changed = _diff(cfg, base) - {"experiment_name"}
    if overrides[key] == default:
        assert changed == set(), f"{job}: the paper's default variant must equal the default config"
    elif isinstance(changes, str):
        assert changed and all(k.startswith(changes) for k in changed), f"{job} changed {sorted(changed)}"
        assert f"{changes}name" in changed
    else:
        assert changed == changes, f"{job} changed {sorted(changed)}"


@pytest.mark.parametrize("name", ABLATIONS)
def test_an_ablation_variant_changes_only_what_its_paper_section_says(
    name: str, hydra_compose: Any, registry: Registry
) -> None:
    key, values, _, _ = ABLATIONS[name]
    for value in values:
        _check_variant(name, {"env.game": "krull", "seed": "0", key: value}, hydra_compose, registry)


@pytest.mark.slow
@pytest.mark.parametrize("name", ABLATIONS)
def test_every_grid_point_of_an_ablation_is_valid_and_changes_only_its_keys(name: str, registry: Registry) -> None:
    jobs = [_job(job) for job in _jobs(name)]  # suite.plan initialises Hydra itself: before the compose context
    with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
        for job in jobs:
            overrides = {k: v for k, v in job.items() if k != "+experiment"}
            _check_variant(name, overrides, lambda *o: compose(config_name="config", overrides=list(o)), registry)


def test_depth_one_is_a_valid_single_level_agent(hydra_compose: Any, registry: Registry) -> None:
    cfg = hydra_compose("+experiment=ablation_depth", "hierarchy.layers=1")
    validate(cfg, registry)
    with pytest.raises(ConfigError, match="hierarchy.shared_world_model=true is invalid with hierarchy.layers=1"):
        validate(
            hydra_compose(
                "+experiment=ablation_shared_world_model", "hierarchy.layers=1", "hierarchy.shared_world_model=true"
            )
        )


# -------------------------------------------------------------------------------------------------- job counts
@pytest.mark.parametrize(
    ("name", "extra", "smoke", "count"),
    [
        ("ablation_depth", [], False, 48),
        ("ablation_depth", ["hierarchy.layers=1,2"], False, 24),  # a command-line sweep replaces the file's grid
        ("ablation_depth", ["hierarchy.layers=1,2,3,4"], False, 48),  # the command: games x seeds x depths
        ("ablation_depth", ["hierarchy.layers=2"], False, 12),  # a single value replaces it as well
        ("ablation_depth", ["env.game=pong"], False, 12),
        ("ablation_depth", ["seed=range(0,5)"], False, 80),
        ("ablation_depth", [], True, 16),  # smoke: one seed
        ("ablation_depth", ["hierarchy.layers=1,2"], True, 8),
        ("ablation_sampler", [], False, 24),
        ("ablation_sampler", [], True, 8),
        ("atari100k", [], False, 78),
        ("atari100k", [], True, 26),
        ("atari100k", ["env.game=pong,krull"], False, 6),
    ],
)
def test_job_counts(name: str, extra: list[str], smoke: bool, count: int) -> None:
    jobs = _jobs(name, *extra, smoke=smoke)
    assert len(jobs) == count
    assert len({tuple(sorted(job)) for job in jobs}) == count, "jobs must be distinct"
    if smoke:
        assert {_job(job)["seed"] for job in jobs} == {"0"}
        assert all(_job(job)["+experiment"] == f"[{name},smoke]" for job in jobs)


def test_command_line_values_replace_the_file_grid_in_every_job() -> None:
    jobs = [_job(job) for job in _jobs("ablation_depth", "hierarchy.layers=1,2", "training.steps=1000")]
    assert sorted({job["hierarchy.layers"] for job in jobs}) == ["1", "2"]
    assert {job["training.steps"] for job in jobs} == {"1000"}


@pytest.mark.slow
def test_the_count_matches_a_real_hydra_multirun(tmp_path: Path, python_runner) -> None:
    """Hydra's own ``-m`` path (basic sweeper and launcher, a no-op task on the hieros config) runs the same jobs."""
    app = tmp_path / "list_jobs.py"
    app.write_text(
        textwrap.dedent(
            """\
            import json
            import hydra
            from hydra.core.hydra_config import HydraConfig

            @hydra.main(version_base="1.3", config_path="pkg://hieros.conf", config_name="config")
            def job(cfg):
                print("JOB", json.dumps(sorted(HydraConfig.get().overrides.task)), flush=True)

            job()
            """
        )
    )
    overrides = ["+experiment=[ablation_depth,smoke]", "hierarchy.layers=1,2,3"]
    done = python_runner(
        str(app), "-m", *overrides, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    ran = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("JOB ")]
    (sweep,) = suite.plan(["ablation_depth"], overrides[1:], launcher="basic", smoke=True, validate_jobs=False)
    assert len(ran) == len(sweep.jobs) == 4 * 1 * 3
    assert ran == [sorted(job) for job in sweep.jobs]


# ----------------------------------------------------------------------------------------------- smoke overlay
def test_smoke_combines_with_any_experiment(hydra_compose: Any, registry: Registry) -> None:
    for name in [*ABLATIONS, "atari100k"]:
        cfg = hydra_compose(f"+experiment=[{name},smoke]")
        validate(cfg, registry)
        assert cfg.experiment_name == name, "smoke keeps the experiment's name"
        assert cfg.model.deter == 64 and cfg.training.steps <= 400
    smoke = hydra_compose("+experiment=smoke")
    assert smoke.training.eval_max_steps is not None, "smoke caps evaluation episodes (Pong lasts ~800 steps)"


def test_smoke_trains_every_level_of_three(hydra_compose: Any) -> None:
    """The arithmetic of the smoke header: level 2's replay holds min_windows windows, and a level-0 update that
    is a multiple of k^2 happens after that (level i trains on every k^i-th level-0 update)."""
    cfg = hydra_compose("+experiment=smoke").training
    k, layers = 4, 3
    assert hydra_compose("+experiment=smoke").hierarchy.layers == layers
    per_step = cfg.train_ratio / (cfg.batch_size * cfg.batch_length)
    top_rows_needed = cfg.batch_length + cfg.min_windows - 1  # windows of batch_length consecutive rows
    env_steps_needed = top_rows_needed * k ** (layers - 1)
    first_due = -(-int(env_steps_needed * per_step) // k ** (layers - 1)) * k ** (layers - 1)  # next multiple of 16
    assert first_due / per_step < cfg.steps, f"level 2 first trains after ~{first_due / per_step:.0f} agent steps"
    assert 0 < cfg.eval_every < cfg.steps, "one periodic evaluation before the final one"
    assert 0 < hydra_compose("+experiment=smoke").logger.media_every < cfg.steps, "keep the mid-run media"


# ------------------------------------------------------------------------------------------- evaluation cap
def _agent_and_envs(hydra_compose: Any, registry: Registry, num_envs: int, *overrides: str):
    from hieros.agent.hierarchy import Hierarchy
    from hieros.envs.vector import make_vector_env

    cfg = OmegaConf.to_container(hydra_compose("+experiment=smoke", *overrides), resolve=True)
    envs = make_vector_env(registry, cfg["env"], num_envs, seed=cfg["seed"])
    shapes = {key: tuple(space.shape) for key, space in envs.observation_space.spaces.items()}
    return Hierarchy(cfg, registry, shapes, envs.action_dim), envs


def test_eval_max_steps_caps_an_atari_episode_at_its_partial_return(hydra_compose: Any, registry: Registry) -> None:
    import torch

    from hieros.training.evaluation import run_episodes

    agent, envs = _agent_and_envs(hydra_compose, registry, 1, "env.game=pong")
    steps: list[int] = []
    capped: list[bool] = []
    with envs, torch.no_grad():
        returns = run_episodes(
            agent,
            envs,
            2,
            "sampled",
            7,
            torch.device("cpu"),
            on_step=lambda obs: steps.append(1),
            max_steps=12,
            capped=capped,
        )
    assert capped == [True, True], "a Pong episode lasts far longer than 12 agent steps"
    assert len(returns) == 2 and all(r in (0.0, -1.0) for r in returns), returns  # 12 steps: at most one point
    assert len(steps) <= 2 * 12 + 3, f"{len(steps)} agent steps for two episodes capped at 12"


def test_eval_max_steps_counts_natural_and_capped_episodes(hydra_compose: Any, registry: Registry) -> None:
    """CartPole pays +1 per step: an episode cut at the cap scores exactly the cap; a shorter one ends by itself.
    Two envs: a capped env idles until the other is capped or done, then both restart."""
    import torch

    from hieros.training.evaluation import run_episodes

    torch.manual_seed(0)  # the agent's initial weights and its sampled actions
    agent, envs = _agent_and_envs(hydra_compose, registry, 2, "env=gym", "hierarchy.layers=1")
    capped: list[bool] = []
    cap = 10  # an untrained policy keeps CartPole up for about 8-20 steps
    with envs, torch.no_grad():
        returns = run_episodes(agent, envs, 12, "sampled", 3, torch.device("cpu"), max_steps=cap, capped=capped)
    assert len(returns) == len(capped) == 12
    assert all(r == cap for r, c in zip(returns, capped) if c)
    assert all(r < cap + 1 for r, c in zip(returns, capped) if not c)
    assert any(capped) and not all(capped), f"expected both kinds with an untrained policy: {returns}"


def test_scores_json_says_when_the_evaluation_was_capped(tmp_path: Path, python_runner) -> None:
    """A real (tiny) run: scores.json and the console name the cap and the capped episodes."""
    done = python_runner(
        "-m",
        "hieros",
        "+experiment=smoke",
        "env=gym",
        "hierarchy.layers=1",
        "logger=none",
        "training.steps=40",
        "training.eval_every=0",
        "training.final_eval_episodes=2",
        "training.eval_max_steps=5",
        "training.progress=plain",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["eval_max_steps"] == 5 and "partial return" in scores["eval_note"]
    for mode in ("sampled", "greedy"):
        entry = scores["final_eval"][mode]
        assert entry["episodes"] == [5.0, 5.0] and entry["capped_episodes"] == 2  # CartPole: +1 per step
    assert "stopped at training.eval_max_steps=5 agent steps; their score is the partial return" in done.stdout


# ------------------------------------------------------------------------------------------------- the suite
def test_suite_targets_resolve_and_bad_ones_fail_in_one_line() -> None:
    assert suite.resolve_targets(["atari100k"]) == ["atari100k"]
    assert suite.resolve_targets(["ablations", "ablation_depth"]) == sorted(ABLATIONS)
    with pytest.raises(suite.SuiteError, match="unknown target 'ablation'.*allowed is atari100k | ablations"):
        suite.resolve_targets(["ablation"])
    with pytest.raises(suite.SuiteError, match="hydra/launcher=nope is not a launcher preset: allowed is .*slurm_a100"):
        suite.plan(["ablation_depth"], launcher="nope")


def _dry_run(python_runner, tmp_path: Path, *args: str):
    done = python_runner("-m", "hieros.suite", *args, "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_suite_dry_run_atari100k(python_runner, tmp_path: Path) -> None:
    lines = _dry_run(python_runner, tmp_path, "atari100k")
    assert lines[0] == "hieros.suite: 1 experiment(s) on hydra/launcher=slurm_a100"
    assert lines[1].split() == ["atari100k", "78", "jobs", "(env.game", "26", "x", "seed", "3)"]
    assert lines[2].split() == ["total", "78", "jobs"]
    assert lines[3] == "python -m hieros -m +experiment=atari100k hydra/launcher=slurm_a100"
    assert lines[-1] == "hieros.suite: dry run, nothing launched"
    assert not list(tmp_path.glob("hieros-home/**/*.yaml")), "a dry run writes nothing"


def test_suite_dry_run_ablations(python_runner, tmp_path: Path) -> None:
    lines = _dry_run(python_runner, tmp_path, "ablations", "--no-validate")
    counts = {line.split()[0]: int(line.split()[1]) for line in lines[1:] if " jobs" in line}
    expected = {name: 12 * len(values) for name, (_, values, _, _) in ABLATIONS.items()}
    assert counts == {**expected, "total": sum(expected.values())} == {**expected, "total": 240}
    commands = [line for line in lines if line.startswith("python -m hieros -m")]
    assert commands == [
        f"python -m hieros -m +experiment={name} hydra/launcher=slurm_a100" for name in sorted(ABLATIONS)
    ]


def test_suite_dry_run_with_smoke_a_launcher_and_overrides(python_runner, tmp_path: Path) -> None:
    lines = _dry_run(
        python_runner, tmp_path, "ablation_depth", "--smoke", "--launcher", "local", "hierarchy.layers=1,2"
    )
    assert lines[0] == "hieros.suite: 1 experiment(s) on hydra/launcher=local"
    assert lines[1].split()[:3] == ["ablation_depth", "8", "jobs"]
    assert (
        lines[3] == "python -m hieros -m '+experiment=[ablation_depth,smoke]' hydra/launcher=local hierarchy.layers=1,2"
    )


def test_suite_refuses_an_invalid_grid_point_before_launching(python_runner, tmp_path: Path) -> None:
    done = python_runner(
        "-m", "hieros.suite", "ablation_shared_world_model", "hierarchy.layers=1", "--smoke", cwd=tmp_path
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("hieros.suite: ablation_shared_world_model job 1 (")
    assert "hierarchy.shared_world_model=true is invalid with hierarchy.layers=1" in line
    assert "python -m hieros" not in done.stdout, "nothing may be launched"


@pytest.mark.slow
def test_suite_launches_the_sweep_and_counts_its_jobs(python_runner, tmp_path: Path) -> None:
    """Not a dry run: the suite runs ``python -m hieros -m`` (basic launcher, in-process jobs) with an override that
    makes every job stop at validation, so the launched sweep fails fast and its exit code comes back."""
    done = python_runner(
        "-m",
        "hieros.suite",
        "ablation_depth",
        "--smoke",
        "--launcher",
        "basic",
        "--no-validate",
        "hierarchy.layers=1",
        "hierarchy.reward_weights.subgoal=0.5",
        cwd=tmp_path,
        timeout=600,
    )
    assert ["ablation_depth", "4", "jobs", "(env.game", "4)"] in [line.split() for line in done.stdout.splitlines()]
    assert (
        "hieros.suite: starting python -m hieros -m '+experiment=[ablation_depth,smoke]' hydra/launcher=basic"
        in done.stdout
    )
    assert "[ablation_depth]" in done.stdout or "[ablation_depth]" in done.stderr
    assert "hieros.suite: ablation_depth exited with code 2" in done.stdout
    assert done.returncode == 2


@pytest.mark.slow
def test_the_smoke_run_trains_every_level_of_a_three_level_agent_on_atari(tmp_path: Path, python_runner) -> None:
    """``make run``: the smoke overlay on Pong trains all 3 levels, writes the mid-run media and caps evaluation."""
    run_dir = tmp_path / "run"
    done = python_runner(
        "-m", "hieros", "+experiment=smoke", "env.game=pong", "training.progress=plain", f"hydra.run.dir={run_dir}",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    scores = json.loads((run_dir / "scores.json").read_text())
    assert len(scores["updates"]) == 3 and min(scores["updates"]) >= 1, scores["updates"]
    assert scores["eval_max_steps"] == 100
    assert {path.name for path in (run_dir / "media").iterdir()} >= {
        f"{kind}_step{step:09d}.{ext}"
        for kind in ("open_loop", "subgoals")
        for step in (200, 400)
        for ext in ("gif", "mp4")
    }
