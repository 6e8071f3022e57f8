"""Hydra configuration: every group option composes and validates; every validation rule fails with one line."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

from hieros import config
from hieros.agent.reward_weights import level_reward_weights
from hieros.config import RULES, ConfigError, Rule, validate
from hieros.registry import GROUPS, Registry, register

EXPERIMENT_GROUP = "experiment"  # an overlay group, not in the defaults list: selected with +experiment=NAME


@pytest.fixture(scope="module")
def hydra_compose() -> Iterator[Any]:
    """``compose(*overrides)`` with the installed package's config (the same root ``python -m hieros`` uses)."""
    with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def default_cfg(hydra_compose: Any) -> DictConfig:
    return hydra_compose()


def _config_options() -> list[str]:
    """One override per option of every config group: ``group=option`` (``+experiment=name`` for experiments)."""
    root = resources.files("hieros.conf")
    overrides = []
    for group in sorted((item for item in root.iterdir() if item.is_dir()), key=lambda item: item.name):
        prefix = "+" if group.name == EXPERIMENT_GROUP else ""
        for option in sorted(item.name for item in group.iterdir() if item.name.endswith(".yaml")):
            overrides.append(f"{prefix}{group.name}={option.removesuffix('.yaml')}")
    return overrides


def _with(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A deep copy of ``cfg`` with the dotted keys of ``values`` set, as command-line overrides would."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _invalid(cfg: DictConfig, registry: Registry | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(cfg, registry)
    message = str(caught.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def _shown(value: Any) -> str:
    """A value as the error messages show it (as on the command line; strings quoted)."""
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


# ----------------------------------------------------------------------------------------------- composition
def test_the_default_config_is_valid(default_cfg: DictConfig, registry: Registry) -> None:
    validate(default_cfg, registry)
    assert {group: default_cfg[group].name for group in GROUPS} == {
        "sequence_model": "s5",
        "sampler": "etbs",
        "goal_encoding": "encoded",
        "env": "atari100k",
    }
    assert default_cfg.hierarchy.layers == 3


def test_every_group_has_options() -> None:
    groups = {override.split("=")[0] for override in _config_options()}
    assert set(GROUPS) | {"hierarchy", "model", "agent", "training", "fabric", "logger"} <= groups


@pytest.mark.parametrize("override", _config_options())
def test_every_option_composes_and_validates(override: str, hydra_compose: Any, registry: Registry) -> None:
    cfg = hydra_compose(override)
    validate(cfg, registry)
    group, option = override.lstrip("+").split("=")
    if group in GROUPS:  # a component's config file selects the registered component of its own name
        assert cfg[group].name == option
        registry.info(group, option)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_every_component_has_a_config_file(registry: Registry) -> None:
    options = set(_config_options())
    missing = [f"{info.group}={info.name}" for info in registry.items() if f"{info.group}={info.name}" not in options]
    assert not missing, f"components without conf/<group>/<name>.yaml: {missing}"


def test_model_small_extends_paper(hydra_compose: Any) -> None:
    paper, small = hydra_compose("model=paper").model, hydra_compose("model=small").model
    assert small.seq_blocks == 2 < paper.seq_blocks
    assert {**OmegaConf.to_container(small), "seq_blocks": paper.seq_blocks} == OmegaConf.to_container(paper)


def test_interpolated_sizes_follow_the_model_group(hydra_compose: Any) -> None:
    cfg = hydra_compose("model=tiny", "sequence_model=gru")
    assert (cfg.sequence_model.num_layers, cfg.sequence_model.units) == (cfg.model.seq_blocks, cfg.model.seq_dim)
    assert cfg.agent.subgoal_autoencoder.decoder_units == cfg.model.units == 64


# ------------------------------------------------------------------------------------------------ single rules
BAD_CANDIDATES: tuple[Any, ...] = (-7, 0, 0.5, 1.5, 5, 10**9, -0.25, "bogus", "", None, True)


def _bad_values(rule: Rule) -> list[Any]:
    return [value for value in BAD_CANDIDATES if not rule.check(value)]


def _rule_id(rule: Rule) -> str:
    return f"{rule.key}@{'/'.join(rule.components)}" if rule.components else rule.key


def _where_it_applies(rule: Rule, default_cfg: DictConfig, hydra_compose: Any) -> DictConfig:
    """The default config, or for a component's own key the config that selects that component."""
    return default_cfg if rule.applies(default_cfg) else hydra_compose(f"{rule.key.split('.')[0]}={rule.components[0]}")


@pytest.mark.parametrize("rule", RULES, ids=[_rule_id(rule) for rule in RULES])
def test_every_rule_rejects_bad_values_in_one_line(rule: Rule, default_cfg: DictConfig, hydra_compose: Any) -> None:
    cfg = _where_it_applies(rule, default_cfg, hydra_compose)
    assert rule.check(OmegaConf.select(cfg, rule.key)), "the default must pass its own rule"
    bad_values = _bad_values(rule)
    assert ("bogus" in bad_values or "" in bad_values) and len(bad_values) >= 2, (
        "a rule should reject a wrong type and a value out of range"
    )
    for value in bad_values:
        message = _invalid(_with(cfg, {rule.key: value}))
        assert message == f"{rule.key}={_shown(value)} is invalid: allowed is {rule.allowed}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hierarchy.layers", 1),
        ("hierarchy.layers", 4),
        ("hierarchy.k", 2),
        ("agent.actor_critic.discount", 1.0),
        ("agent.actor_critic.discount", 0),
        ("training.prefill", 0),
        ("training.eval_every", 0),
        ("hierarchy.reward_weights.subgoal", 0.0),
        ("fabric.precision", "bf16-mixed"),
        ("fabric.precision", "bf16-true"),
        ("fabric.precision", "16-mixed"),
        ("fabric.deterministic", "warn"),
    ],
)
def test_values_on_the_edge_of_a_range_are_accepted(key: str, value: Any, default_cfg: DictConfig) -> None:
    validate(_with(default_cfg, {key: value}))


@pytest.mark.parametrize("value", ["???", "${no_such_key}"], ids=["missing", "bad-interpolation"])
def test_an_unreadable_value_is_one_line_naming_the_key(value: str, hydra_compose: Any) -> None:
    message = _invalid(hydra_compose(f"training.steps={value}"))
    assert message.startswith("training.steps cannot be read")


@pytest.mark.parametrize(
    "modes", [[], ["sampled", "bogus"], ["greedy", "greedy"], "greedy"], ids=["empty", "unknown", "twice", "string"]
)
def test_eval_modes_must_be_a_list_of_known_modes(modes: Any, default_cfg: DictConfig) -> None:
    assert _invalid(_with(default_cfg, {"training.eval_modes": modes})).startswith(
        f"training.eval_modes={_shown(modes)} is invalid: allowed is a non-empty list of sampled | greedy"
    )
    validate(_with(default_cfg, {"training.eval_modes": ["greedy"]}))


def test_a_component_rule_holds_only_for_its_component(default_cfg: DictConfig) -> None:
    """env.game names an Atari game for env=atari100k and a MinAtar game for env=minatar; a sequence model without
    acting_context (a plugin's) uses the keyword's default."""
    minatar = {"env.name": "minatar", "env.obs": "rgb", "env.max_steps": 9}
    validate(_with(default_cfg, {**minatar, "env.game": "asterix"}))
    validate(_with(default_cfg, {"env.game": "ms_pacman"}))
    message = _invalid(_with(default_cfg, {**minatar, "env.game": "ms_pacman"}))
    assert message.startswith("env.game='ms_pacman' is invalid: allowed is breakout | freeway | asterix")
    cfg = copy.deepcopy(default_cfg)
    with open_dict(cfg):
        del cfg.sequence_model["acting_context"]
    validate(cfg)


def _uncovered_keys(cfg: DictConfig) -> list[str]:
    """Leaf keys of ``cfg`` that no rule of config.RULES checks (a registry group's ``name`` is checked against the
    registry)."""
    covered = {rule.key for rule in RULES if rule.applies(cfg)} | {f"{group}.name" for group in GROUPS}

    def leaves(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1]

    return sorted(set(leaves(OmegaConf.to_container(cfg, resolve=False), "")) - covered)


def test_the_coverage_check_sees_a_key_without_a_rule(default_cfg: DictConfig) -> None:
    assert _uncovered_keys(default_cfg) == []
    assert _uncovered_keys(_with(default_cfg, {"agent.world_model.new_knob": 1, "sampler.extra": 2})) == [
        "agent.world_model.new_knob",
        "sampler.extra",
    ]


@pytest.mark.parametrize("override", _config_options())
def test_every_key_of_every_option_has_a_rule(override: str, hydra_compose: Any) -> None:
    """Types, ranges and enums of every key fail at composition (python -m hieros validates before anything runs):
    a new key in a shipped config file needs a rule in hieros.config.RULES."""
    assert _uncovered_keys(hydra_compose(override)) == []


# ---------------------------------------------------------------------------------------------- combinations
COMBINATION_CASES: list[tuple[dict[str, Any], str]] = [
    (
        {"hierarchy.layers": 1, "hierarchy.reward_weights.subgoal": 0.3},
        "hierarchy.reward_weights.subgoal=0.3 is invalid with hierarchy.layers=1",
    ),
    (
        {"hierarchy.layers": 1, "hierarchy.shared_world_model": True},
        "hierarchy.shared_world_model=true is invalid with hierarchy.layers=1",
    ),
    (
        {"hierarchy.shared_world_model": True, "hierarchy.higher_obs": "kth_state"},
        "hierarchy.higher_obs='kth_state' is invalid with hierarchy.shared_world_model=true",
    ),
    (
        {
            "hierarchy.reward_weights.extrinsic": 0,
            "hierarchy.reward_weights.subgoal": 0,
            "hierarchy.reward_weights.novelty": 0,
        },
        "hierarchy.reward_weights.extrinsic=0 is invalid",
    ),
    ({"training.min_windows": 8}, "training.min_windows=8 is invalid"),
    ({"training.num_envs": 2}, "training.num_envs=2 is invalid with hierarchy.layers=3"),
    (
        {"hierarchy.layers": 1, "training.replay_capacity": 100, "training.num_envs": 4},
        "training.replay_capacity=100 is invalid",
    ),
    (
        {"sequence_model.state_size": 30},
        "sequence_model.state_size=30 is invalid with sequence_model.init_blocks=4",
    ),
    ({"sequence_model.dt_min": 0.5}, "sequence_model.dt_min=0.5 is invalid with sequence_model.dt_max=0.1"),
    ({"fabric.precision": "64-true"}, "fabric.precision='64-true' is invalid: allowed is 32-true"),
    (
        {"fabric.accelerator": "cpu", "fabric.precision": "16-mixed"},
        "fabric.accelerator='cpu' is invalid with fabric.precision='16-mixed'",
    ),
    (
        {"fabric.deterministic": True, "fabric.cudnn_benchmark": True},
        "fabric.cudnn_benchmark=true is invalid with fabric.deterministic=true",
    ),
]


def test_every_combination_rule_has_a_failing_case() -> None:
    """One case per ``yield`` of config._combination_problems: a new rule needs a new case here."""
    rules = inspect.getsource(config._combination_problems).count("yield ")
    keys = {expected.split("=")[0] for _, expected in COMBINATION_CASES}
    assert len(keys) == rules, f"{rules} combination rules but failing cases for {len(keys)} keys: {sorted(keys)}"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    COMBINATION_CASES,
    ids=lambda x: "+".join(f"{k.split('.')[-1]}={v}" for k, v in x.items()) if isinstance(x, dict) else None,
)
def test_every_combination_rule_fails_in_one_line(overrides: dict, expected: str, default_cfg: DictConfig) -> None:
    assert _invalid(_with(default_cfg, overrides)).startswith(expected)


def test_a_depth_of_one_without_subgoal_weight_is_valid(default_cfg: DictConfig) -> None:
    cfg = _with(default_cfg, {"hierarchy.layers": 1, "hierarchy.reward_weights.subgoal": 0})
    validate(cfg)
    assert level_reward_weights(cfg, 0) == {"extrinsic": 1.0}


@pytest.mark.parametrize(
    "overrides",
    [
        {"hierarchy.layers": 1, "hierarchy.reward_weights.extrinsic": 0},  # novelty is never used with one level
        {"hierarchy.reward_weights.extrinsic": 0, "hierarchy.reward_weights.novelty": 0},  # the top has no subgoal
        {
            "hierarchy.reward_weights.extrinsic": 0,
            "hierarchy.reward_weights.subgoal": 0,
            "hierarchy.novelty_levels": "higher",  # level 0: no novelty, no subgoal reward
        },
    ],
    ids=["depth1-novelty-only", "top-level-subgoal-only", "level0-novelty-higher"],
)
def test_a_level_without_any_reward_is_invalid(overrides: dict, default_cfg: DictConfig) -> None:
    cfg = _with(default_cfg, overrides)
    unrewarded = [level for level in range(cfg.hierarchy.layers) if not any(level_reward_weights(cfg, level).values())]
    assert unrewarded, "the case must really leave a level without reward"
    assert _invalid(cfg).startswith("hierarchy.reward_weights.extrinsic=0 is invalid")


# ------------------------------------------------------------------------------------------------- components
def test_an_unknown_component_name_lists_the_registered_ones(default_cfg: DictConfig, registry: Registry) -> None:
    message = _invalid(_with(default_cfg, {"sampler.name": "etbz"}), registry)
    assert message.startswith("sampler.name='etbz' is invalid: unknown sampler 'etbz'.")
    assert "etbs, etbs_original, tbs, uniform" in message and "Did you mean 'etbs'?" in message


def test_a_missing_component_group_is_named(default_cfg: DictConfig, registry: Registry) -> None:
    cfg = copy.deepcopy(default_cfg)
    with open_dict(cfg):
        del cfg["goal_encoding"]
    assert _invalid(cfg, registry) == "goal_encoding is missing: allowed is one of decoded, encoded"


@pytest.mark.parametrize(
    ("group", "name", "choice", "expected"),
    [
        ("sampler", "etbs", "etbs", None),
        ("sampler", "etbs", "etbs_fast", None),  # a variant of etbs: sampler/etbs_fast.yaml, name: etbs
        ("env", "gym", "gym_acrobot", None),
        ("sampler", "etbs", "newest", "sampler.name='etbs' disagrees with the choice sampler=newest"),  # copied
        ("sampler", "uniform", "etbs", "sampler.name='uniform' disagrees with the choice sampler=etbs"),
        ("sampler", "etbs", "etbs_original", "sampler.name='etbs' disagrees"),  # etbs_original is registered itself
        ("env", "atari100k", "pong", "env.name='atari100k' disagrees with the choice env=pong"),
        ("goal_encoding", "encoded", None, None),  # no Hydra choice (a config composed without Hydra)
    ],
)
def test_a_group_name_must_agree_with_the_chosen_file(
    group: str, name: str, choice: str | None, expected: str | None, registry: Registry
) -> None:
    problem = config.component_name_problem(group, name, choice, registry)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected) and "\n" not in problem
        assert f"{group}/{choice}.yaml must say name: {choice}" in problem


def test_validate_checks_the_group_name_against_the_choices(default_cfg: DictConfig, registry: Registry) -> None:
    choices = {"env": "atari100k", "sequence_model": "s5", "sampler": "etbs", "goal_encoding": "encoded"}
    validate(default_cfg, registry, choices=choices)
    with pytest.raises(ConfigError, match=r"^sampler.name='etbs' disagrees with the choice sampler=tbs"):
        validate(default_cfg, registry, choices={**choices, "sampler": "tbs"})


def _user_group_file(folder: Path, group: str, option: str, text: str) -> str:
    """``folder/group/option.yaml`` and the override that puts ``folder`` on Hydra's search path."""
    (folder / group).mkdir(parents=True, exist_ok=True)
    (folder / group / f"{option}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{folder},pkg://hieros.launchers]"


def test_a_copied_group_file_with_the_old_name_exits_2_before_anything_is_written(
    python_runner, tmp_path: Path, conf_dir: Path
) -> None:
    searchpath = _user_group_file(
        tmp_path / "my_conf", "sampler", "newest", (conf_dir / "sampler" / "etbs.yaml").read_text()
    )
    run_dir = tmp_path / "run"
    done = python_runner("-m", "hieros", searchpath, "sampler=newest", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("hieros: invalid config: sampler.name='etbs' disagrees with the choice sampler=newest: ")
    assert "sampler/newest.yaml must say name: newest" in line
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()
    assert not list(tmp_path.glob("hieros-home/**/mlflow.db")), "no MLflow store or run may be created"
    done = python_runner(
        "-m", "hieros", "sampler=etbs", "sampler.name=uniform", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert done.returncode == 2 and "sampler.name='uniform' disagrees with the choice sampler=etbs" in done.stderr


def test_a_variant_group_file_passes_the_name_check(python_runner, tmp_path: Path) -> None:
    """sampler/etbs_hot.yaml (name: etbs, another temperature) is a variant of etbs: the run gets past the name check
    and stops at the next rule (an invalid depth-1 override, so nothing trains)."""
    searchpath = _user_group_file(
        tmp_path / "my_conf", "sampler", "etbs_hot", "name: etbs  # a variant\ntemperature: 0.9  # hotter\n"
    )
    done = python_runner(
        "-m", "hieros", searchpath, "sampler=etbs_hot", "hierarchy.layers=1", "hierarchy.reward_weights.subgoal=0.5",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "hierarchy.reward_weights.subgoal=0.5 is invalid with hierarchy.layers=1" in done.stderr
    assert "disagrees" not in done.stderr


def test_a_components_own_config_check_runs_after_composition(default_cfg: DictConfig) -> None:
    class Picky:
        """A sampler that checks its config node."""

        @staticmethod
        def validate_config(node: dict) -> None:
            if not 0 <= node["temperature"] <= 1:
                raise ValueError(f"sampler.temperature={node['temperature']} is invalid: allowed is a number in [0, 1]")

    registry = Registry.default(plugins=False)
    registry.add("sampler", "picky", register("sampler", "picky")(Picky))
    validate(_with(default_cfg, {"sampler.name": "picky", "sampler.temperature": 0.5}), registry)
    message = _invalid(_with(default_cfg, {"sampler.name": "picky", "sampler.temperature": 3}), registry)
    assert message == "sampler: sampler.temperature=3 is invalid: allowed is a number in [0, 1]"


# ------------------------------------------------------------------------------------------------ command line
def test_cfg_job_prints_the_composed_config_from_any_directory(python_runner, tmp_path: Path) -> None:
    done = python_runner("-m", "hieros", "--cfg", "job", "model=tiny", "sampler=uniform", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["sampler"] == {"name": "uniform"}
    assert printed["model"]["deter"] == 64
    assert printed["sequence_model"]["d_model"] == "${model.seq_dim}"  # job config, unresolved
    assert set(GROUPS) <= set(printed)
    assert not list(tmp_path.iterdir()), "--cfg job must not write anything"


def test_an_invalid_override_exits_2_with_one_line(python_runner, tmp_path: Path) -> None:
    done = python_runner("-m", "hieros", "hierarchy.layers=1", "hierarchy.reward_weights.subgoal=0.5", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("hieros: invalid config: hierarchy.reward_weights.subgoal=0.5 is invalid")
    assert "hierarchy.layers=1" in lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["+training.stepz=3"],
            "hieros: invalid config: training.stepz is not a config key; did you mean training.steps?",
        ),
        (
            ["+experiment=minatar", "+agent.world_model.lrr=1"],
            "agent.world_model.lrr is not a config key; did you mean",
        ),
    ],
)
def test_an_unknown_key_exits_2_naming_the_closest_key(python_runner, tmp_path: Path, args, expected) -> None:
    done = python_runner("-m", "hieros", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["env=nosuch"], "Available options in 'env': atari100k, chain, gym, minatar"),
        (["+experiment=nosuch"], "Could not find 'experiment/nosuch'"),
        (["training.stepz=3"], "did you mean training.steps?"),
    ],
)
def test_hydras_own_errors_are_one_line_with_exit_2(python_runner, tmp_path: Path, args, expected) -> None:
    done = python_runner("-m", "hieros", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "HYDRA_FULL_ERROR" not in lines[0], done.stderr


def _schema(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """(config, reference) as ``python -m hieros`` builds them: the reference has the same group choices only."""
    with_hydra = compose("config", overrides=overrides, return_hydra_config=True)
    choices = with_hydra.hydra.runtime.choices
    reference = compose(
        "config",
        overrides=[
            f"{group}={option}"
            for group, option in choices.items()
            if option is not None and group != "experiment" and not group.startswith("hydra")
        ],
    )
    return compose("config", overrides=overrides), reference


@pytest.mark.parametrize("override", [option for option in _config_options() if option.startswith("+experiment=")])
def test_every_experiment_overlay_sets_only_known_keys(override: str, hydra_compose: Any) -> None:
    for extra in ([], ["logger=none"]):
        config.unknown_keys(*_schema([override, *extra]))


def test_an_unknown_key_in_an_overlay_is_refused_in_one_line(hydra_compose: Any) -> None:
    cfg, reference = _schema(["+experiment=cartpole"])
    with open_dict(cfg):
        cfg.training.checkpoint_evry = 5
        cfg.agent.world_model.kl_fre = 0.5
    with pytest.raises(ConfigError) as error:
        validate(cfg, reference=reference)
    message = str(error.value)
    assert message.startswith("agent.world_model.kl_fre is not a config key; did you mean agent.world_model.kl_free?")
    assert "also unknown: training.checkpoint_evry" in message and "\n" not in message


# --------------------------------------------------------------------------------------------- YAML comments
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?:- )?(?P<key>[A-Za-z_@][\w.@/\-]*)\s*:(?:\s|$)")
PARENT_KEYS_NEED_COMMENTS = True  # False would exempt keys that only open a nested mapping ("hydra:", "env:")


def _uncommented_keys(text: str) -> list[str]:
    """Lines that define a key without a ``#`` comment; the ``defaults:`` list is exempt."""
    missing = []
    in_defaults = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0 and not stripped.startswith("-"):
            in_defaults = stripped.startswith("defaults:")
            if in_defaults:
                continue
        if in_defaults:
            continue
        match = KEY_LINE.match(line)
        opens_mapping = match is not None and not line[match.end() :].strip()
        if opens_mapping and not PARENT_KEYS_NEED_COMMENTS:
            continue
        if match and " #" not in line[match.end() - 1 :]:
            missing.append(f"{number}: {line.rstrip()}")
    return missing


def test_the_comment_check_sees_missing_comments() -> None:
    text = "defaults:\n  - paper\n  - override /env: gym\nname: x   # ok\nsub:\n  a: 1 # ok\n  b: 2\n# note: 3\n"
    assert _uncommented_keys(text) == ["5: sub:", "7:   b: 2"]


def test_every_yaml_key_carries_a_comment(conf_dir: Path, launchers_dir: Path) -> None:
    files = {f"conf/{p.relative_to(conf_dir).as_posix()}": p for p in conf_dir.glob("**/*.yaml")}
    files |= {f"launchers/{p.relative_to(launchers_dir).as_posix()}": p for p in launchers_dir.glob("**/*.yaml")}
    assert "conf/config.yaml" in files
    missing = {name: lines for name, path in sorted(files.items()) if (lines := _uncommented_keys(path.read_text()))}
    assert not missing, "keys without a '#' comment:\n" + yaml.safe_dump(missing, sort_keys=False, width=200)
