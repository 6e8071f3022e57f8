"""Composition helpers and validation of the composed config.

:func:`validate` runs right after Hydra composes the config and before any work starts. A bad value raises
:class:`ConfigError` whose message is one line: the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from hieros.agent.reward_weights import level_reward_weights
from hieros.registry import GROUPS, Registry, UnknownComponentError
from hieros.training.objective import ALLOWED as OBJECTIVES
from hieros.training.objective import POLICY_MODES, is_objective_name

# Precisions the training step honours (hieros.training.precision says what each runs); the S5 scan stays
# float32/complex64 under all of them. Refused ones, with the reason the error gives:
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed")
_NO_FLOAT64 = (
    "64-true is refused: the S5 scan stays complex64 by the spec and the replay holds float32, so float64 weights "
    "would double memory and time without making the recurrence more exact"
)
REFUSED_PRECISIONS = {
    "64-true": _NO_FLOAT64,
    "64": _NO_FLOAT64,
    "16-true": "16-true is refused: fp16 weights without a loss scaler lose small gradients to underflow and overflow "
    "past 65504; use 16-mixed (GPU) or bf16-true",
}


_ABSENT = object()  # OmegaConf.select's default: the key is not in the config


class ConfigError(ValueError):
    """An invalid configuration; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Rule:
    """``check(value of key)`` must hold. ``components``: the rule holds only where ``<first part of key>.name`` is one
    of them (a component's own keys: ``env.game`` of ``env=minatar``); ``optional``: an absent key is accepted (a
    keyword every component of the group has, with a default)."""

    key: str
    check: Callable[[Any], bool]
    allowed: str
    components: tuple[str, ...] = ()
    optional: bool = False

    def applies(self, cfg: DictConfig) -> bool:
        return not self.components or OmegaConf.select(cfg, f"{self.key.split('.')[0]}.name") in self.components


def _int_in(low: int, high: int | None = None) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
        )

    return check


def _number_in(low: float, high: float | None = None, low_open: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = value > low if low_open else value >= low
        return above and (high is None or value <= high)

    return check


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_folder_name(value: Any) -> bool:
    return _is_text(value) and "/" not in value


def _power_of_two(low: int) -> Callable[[Any], bool]:
    return lambda value: _int_in(low)(value) and value & (value - 1) == 0


def _list_of(*choices: Any) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        items = list(value) if isinstance(value, ListConfig | list | tuple) else None
        return bool(items) and all(item in choices for item in items) and len(set(items)) == len(items)

    return check


def _atari_game(value: Any) -> bool:
    from hieros.envs.atari100k import ATARI100K_GAMES  # imported when checked: it loads ALE and OpenCV

    return isinstance(value, str) and value in ATARI100K_GAMES


def _minatar_game(value: Any) -> bool:
    from hieros.envs.minatar import MINATAR_GAMES

    return value in MINATAR_GAMES


RULES: tuple[Rule, ...] = (
    Rule("seed", _int_in(0), "an integer >= 0"),
    Rule("hierarchy.layers", _int_in(1, 4), "an integer in 1..4"),
    Rule("hierarchy.k", _int_in(2), "an integer >= 2"),
    Rule("hierarchy.reward_weights.extrinsic", _number_in(0.0), "a number >= 0"),
    Rule("hierarchy.reward_weights.subgoal", lambda v: v is None or _number_in(0.0)(v), "null or a number >= 0"),
    Rule("hierarchy.reward_weights.novelty", _number_in(0.0), "a number >= 0"),
    Rule("hierarchy.novelty_levels", _one_of("all", "higher"), "all | higher"),
    Rule("hierarchy.subgoal_reward", _one_of("director", "original"), "director | original"),
    Rule("hierarchy.novelty_reward", _one_of("symlog_mse", "l2", "original"), "symlog_mse | l2 | original"),
    Rule("hierarchy.imagination_goal", _one_of("data", "hold"), "data | hold"),
    Rule("hierarchy.higher_obs", _one_of("k_states", "kth_state"), "k_states | kth_state"),
    Rule("hierarchy.extrinsic_aggregation", _one_of("sum", "mean"), "sum | mean"),
    Rule("hierarchy.shared_world_model", _is_bool, "true | false"),
    Rule("model.deter", _int_in(1), "an integer >= 1"),
    Rule("model.stoch", _int_in(1), "an integer >= 1"),
    Rule("model.classes", _int_in(2), "an integer >= 2"),
    Rule("model.units", _int_in(1), "an integer >= 1"),
    Rule("model.mlp_layers", _int_in(0), "an integer >= 0"),
    Rule("model.cnn_depth", _int_in(1), "an integer >= 1"),
    Rule("model.seq_blocks", _int_in(1), "an integer >= 1"),
    Rule("model.seq_state", _int_in(1), "an integer >= 1"),
    Rule("agent.world_model.lr", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.world_model.kl_free", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.stochastic", _is_bool, "true | false"),
    Rule("agent.world_model.action_alignment", _one_of("previous", "original"), "previous | original"),
    Rule("agent.world_model.image_loss", _one_of("mse", "weighted_mse"), "mse | weighted_mse"),
    Rule("agent.world_model.image_on_weight", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.actor_critic.discount", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.actor_critic.return_lambda", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.actor_critic.entropy", _number_in(0.0), "a number >= 0"),
    Rule("agent.actor_critic.return_norm", _one_of("percentile", "none"), "percentile | none"),
    Rule(
        "agent.actor_critic.advantage_combine", _one_of("weighted_mean", "weighted_sum"), "weighted_mean | weighted_sum"
    ),
    Rule("agent.actor_critic.slow_critic_fraction", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.actor_critic.imag_horizon", _int_in(2), "an integer >= 2"),
    Rule("agent.actor_critic.imag_starts", _int_in(0), "an integer >= 0 (0 = all B x T posterior states)"),
    Rule("agent.subgoal_autoencoder.code", _one_of("sample", "argmax"), "sample | argmax"),
    Rule("agent.subgoal_autoencoder.latents", _int_in(1), "an integer >= 1"),
    Rule("agent.subgoal_autoencoder.classes", _int_in(2), "an integer >= 2"),
    Rule("training.steps", _int_in(1), "an integer >= 1"),
    Rule("training.num_envs", _int_in(1), "an integer >= 1"),
    Rule("training.train_ratio", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("training.batch_size", _int_in(1), "an integer >= 1"),
    Rule("training.batch_length", _int_in(2), "an integer >= 2"),
    Rule("training.prefill", _int_in(0), "an integer >= 0"),
    Rule("training.min_windows", _int_in(1), "an integer >= 1"),
    Rule("training.replay_capacity", _int_in(1), "an integer >= 1"),
    Rule("training.eval_every", _int_in(0), "an integer >= 0"),
    Rule("training.eval_episodes", _int_in(0), "an integer >= 0"),
    Rule("training.final_eval_episodes", _int_in(0), "an integer >= 0"),
    Rule("training.eval_max_steps", lambda v: v is None or _int_in(1)(v), "null or an integer >= 1"),
    Rule("training.log_every", _int_in(1), "an integer >= 1"),
    Rule("training.checkpoint_every", _int_in(0), "an integer >= 0"),
    Rule("training.checkpoint_minutes", _number_in(0.0), "a number >= 0"),
    Rule("training.keep_checkpoints", _int_in(1), "an integer >= 1"),
    Rule("training.resume", _one_of("auto", "must", "never"), "auto | must | never"),
    Rule("training.compile", _is_bool, "true | false"),
    Rule("training.compile_backend", _one_of("inductor", "aot_eager", "eager"), "inductor | aot_eager | eager"),
    Rule("fabric.precision", _one_of(*PRECISIONS, *REFUSED_PRECISIONS), " | ".join(PRECISIONS)),
    # torch's numerics switches (hieros.training.numerics); a fabric file without them gets torch's defaults
    Rule(
        "fabric.float32_matmul_precision",
        _one_of("highest", "high", "medium"),
        "highest | high | medium",
        optional=True,
    ),
    Rule("fabric.deterministic", lambda v: isinstance(v, bool) or v == "warn", "false | true | warn", optional=True),
    Rule("fabric.cudnn_benchmark", _is_bool, "true | false", optional=True),
    Rule(
        "fabric.devices",
        _int_in(1, 1),
        "1 (one device per run: data-parallel updates are not implemented; run seeds as a sweep)",
    ),
    # Every other leaf key of the shipped config files (tests/test_config.py checks that each one has a rule).
    Rule("experiment_name", _is_folder_name, "a non-empty name without '/' (MLflow experiment and run folder)"),
    Rule("paths.root", _is_text, "a non-empty path"),
    Rule("paths.runs", _is_text, "a non-empty path"),
    Rule("model.hidden", _int_in(1), "an integer >= 1"),
    Rule("model.vector_units", _int_in(1), "an integer >= 1"),
    Rule("model.vector_layers", _int_in(0), "an integer >= 0"),
    Rule("model.seq_dim", _int_in(1), "an integer >= 1"),
    Rule("model.seq_init_blocks", _int_in(1), "an integer >= 1"),
    Rule("agent.world_model.eps", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.world_model.grad_clip", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.world_model.weight_decay", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.warmup_steps", _int_in(0), "an integer >= 0"),
    Rule("agent.world_model.dyn_scale", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.rep_scale", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.image_scale", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.reward_scale", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.cont_scale", _number_in(0.0), "a number >= 0"),
    Rule("agent.world_model.unimix", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.actor_critic.actor_lr", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.actor_critic.critic_lr", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.actor_critic.eps", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.actor_critic.grad_clip", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.actor_critic.weight_decay", _number_in(0.0), "a number >= 0"),
    Rule("agent.actor_critic.unimix", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.actor_critic.slow_critic_weight", _number_in(0.0), "a number >= 0"),
    Rule("agent.actor_critic.return_norm_decay", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.subgoal_autoencoder.layers", _int_in(0), "an integer >= 0"),
    Rule("agent.subgoal_autoencoder.encoder_units", _int_in(1), "an integer >= 1"),
    Rule("agent.subgoal_autoencoder.decoder_units", _int_in(1), "an integer >= 1"),
    Rule("agent.subgoal_autoencoder.beta", _number_in(0.0), "a number >= 0"),
    Rule("agent.subgoal_autoencoder.unimix", _number_in(0.0, 1.0), "a number in [0, 1]"),
    Rule("agent.subgoal_autoencoder.lr", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.subgoal_autoencoder.eps", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("agent.subgoal_autoencoder.grad_clip", _number_in(0.0, low_open=True), "a number > 0"),
    Rule("training.eval_modes", _list_of(*POLICY_MODES), "a non-empty list of sampled | greedy, each once"),
    Rule("training.eval_num_envs", _int_in(1), "an integer >= 1"),
    Rule("training.parallel_envs", _is_bool, "true | false"),
    Rule("training.torch_threads", _int_in(0), "an integer >= 0 (0 = torch's default)"),
    Rule("training.progress", _one_of("auto", "rich", "plain"), "auto | rich | plain"),
    Rule("training.objective", is_objective_name, f"a metric name: {OBJECTIVES}"),
    Rule("fabric.accelerator", _one_of("auto", "cpu", "cuda", "gpu", "mps"), "auto | cpu | cuda | gpu | mps"),
    Rule("fabric.strategy", _one_of("auto"), "auto (one device per run)"),
    Rule("logger.name", _one_of("mlflow", "none"), "mlflow | none"),
    Rule("logger.tracking_uri", _is_text, "a tracking URI (sqlite:///PATH, http://HOST:PORT, ...)", ("mlflow",)),
    Rule("logger.artifact_location", _or_null(_is_text), "null or a path", ("mlflow",)),
    Rule("logger.on_unreachable", _one_of("fail", "local"), "fail | local", ("mlflow",)),
    Rule("logger.media_every", _int_in(0), "an integer >= 0", ("mlflow",)),
    Rule("logger.log_checkpoints", _is_bool, "true | false", ("mlflow",)),
    Rule("logger.sync_seconds", _number_in(0.0, low_open=True), "a number > 0", ("mlflow",)),
    Rule("logger.system_metrics", _is_bool, "true | false", ("mlflow",)),
    Rule("logger.system_metrics_interval", _number_in(0.0, low_open=True), "a number > 0 (seconds)", ("mlflow",)),
    Rule("logger.log_model", _one_of("final", "periodic", "never"), "final | periodic | never", ("mlflow",)),
    # Keys of the built-in components (a plugin component checks its own keys with a validate_config hook).
    Rule("env.game", _atari_game, "an Atari100k game by friendly name (pong, ms_pacman, ...)", ("atari100k",)),
    Rule("env.game", _minatar_game, "breakout | freeway | asterix | seaquest | space_invaders", ("minatar",)),
    Rule("env.size", _power_of_two(8), "a power of two >= 8 (8, 16, 32, 64, ...)", ("atari100k", "minatar")),
    Rule("env.action_repeat", _int_in(1), "an integer >= 1", ("atari100k",)),
    Rule("env.noop_max", _int_in(1), "an integer >= 1", ("atari100k",)),
    Rule("env.max_frames", _int_in(1), "an integer >= 1", ("atari100k",)),
    Rule("env.sticky_prob", _number_in(0.0, 1.0), "a number in [0, 1]", ("atari100k", "minatar")),
    Rule("env.obs", _one_of("channels", "rgb"), "channels | rgb", ("minatar",)),
    Rule("env.max_steps", _int_in(1), "an integer >= 1", ("minatar",)),
    Rule("env.max_steps", _or_null(_int_in(1)), "null or an integer >= 1", ("gym",)),
    Rule("env.id", _is_text, "a registered gymnasium id (e.g. CartPole-v1)", ("gym",)),
    Rule("env.length", _int_in(1), "an integer >= 1", ("chain",)),
    Rule("env.actions", _int_in(2), "an integer >= 2", ("chain",)),
    Rule("env.rewarded_action", _int_in(0), "an integer >= 0 (below env.actions)", ("chain",)),
    Rule("env.terminal", _is_bool, "true | false", ("chain",)),
    Rule("env.observe_action", _is_bool, "true | false", ("chain",)),
    Rule("sampler.temperature", _number_in(0.0, 1.0), "a number in [0, 1]", ("etbs", "etbs_original")),
    Rule("sampler.temperature", _number_in(0.0, low_open=True), "a number > 0", ("tbs",)),
    Rule("sampler.capacity", _int_in(1), "an integer >= 1", ("etbs_original",)),
    Rule(
        "sequence_model.acting_context", _one_of("episode", "window"), "episode | window", optional=True
    ),  # every sequence model
    Rule("sequence_model.h_source", _one_of("state", "output"), "state | output", ("s5",)),
    Rule("sequence_model.num_blocks", _int_in(1), "an integer >= 1", ("s5",)),
    Rule("sequence_model.d_model", _int_in(1), "an integer >= 1", ("s5",)),
    Rule("sequence_model.state_size", _int_in(1), "an integer >= 1", ("s5",)),
    Rule("sequence_model.init_blocks", _int_in(1), "an integer >= 1", ("s5",)),
    Rule("sequence_model.dropout", _number_in(0.0, 1.0), "a number in [0, 1]", ("s5",)),
    Rule("sequence_model.dt_min", _number_in(0.0, low_open=True), "a number > 0", ("s5",)),
    Rule("sequence_model.dt_max", _number_in(0.0, low_open=True), "a number > 0", ("s5",)),
    Rule("sequence_model.num_layers", _int_in(1), "an integer >= 1", ("gru",)),
    Rule("sequence_model.units", _int_in(1), "an integer >= 1", ("gru",)),
)


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)} is invalid: allowed is {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, DictConfig):
        return str(OmegaConf.to_container(value))
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def validate(
    cfg: DictConfig,
    registry: Registry | None = None,
    reference: DictConfig | None = None,
    choices: Mapping[str, str | None] | None = None,
) -> None:
    """Check types, ranges and combinations of a composed config; raise :class:`ConfigError` on the first problem.
    With ``reference`` (see :func:`unknown_keys`) keys the config tree does not define are refused first; with
    ``choices`` (Hydra's group choices) and ``registry`` a component group's ``name`` must match its chosen file
    (:func:`component_name_problem`)."""
    if reference is not None:
        unknown_keys(cfg, reference)
    if registry is not None and choices is not None:
        for group in GROUPS:
            name = OmegaConf.select(cfg, f"{group}.name")
            problem = component_name_problem(group, name, choices.get(group), registry)
            if problem:
                raise ConfigError(problem)
    for rule in RULES:
        if not rule.applies(cfg):
            continue
        try:
            value = OmegaConf.select(cfg, rule.key, default=_ABSENT, throw_on_missing=True)
        except Exception as error:  # missing mandatory value or bad interpolation
            reason = str(error).splitlines()[0]
            raise ConfigError(f"{rule.key} cannot be read ({reason}): allowed is {rule.allowed}") from None
        if value is _ABSENT and rule.optional:
            continue
        if not rule.check(None if value is _ABSENT else value):
            raise _fail(rule.key, None if value is _ABSENT else value, rule.allowed)
    for problem in _combination_problems(cfg):
        raise problem
    if registry is not None:
        _validate_components(cfg, registry)


def component_name_problem(group: str, name: Any, choice: str | None, registry: Registry) -> str | None:
    """Why the ``name`` in the file chosen by ``group=choice`` disagrees with that choice, or None.

    A group file is named after the registered component it selects (``sampler/etbs.yaml``: ``name: etbs``). A file
    named after no registered component may be a variant of one, named ``<component>_<variant>.yaml`` (e.g.
    ``sampler/etbs_fast.yaml`` with ``name: etbs``); a file named after a registered component must select that one.
    """
    if choice is None or name == choice:
        return None
    if choice not in registry.names(group) and isinstance(name, str) and choice.startswith(f"{name}_"):
        return None
    return (
        f"{group}.name={_show(name)} disagrees with the choice {group}={choice}: {group}/{choice}.yaml must say "
        f"name: {choice}, or, for a variant of the {group} {name}, be named {name}_<variant>.yaml "
        f"(to use {name} itself, choose {group}={name})"
    )


def _combination_problems(cfg: DictConfig) -> Iterator[ConfigError]:
    layers = cfg.hierarchy.layers
    subgoal_weight = cfg.hierarchy.reward_weights.subgoal
    if layers == 1 and subgoal_weight not in (None, 0, 0.0):
        yield ConfigError(
            f"hierarchy.reward_weights.subgoal={subgoal_weight} is invalid with hierarchy.layers=1: a 1-level agent "
            f"has no subgoals; allowed is null or 0 (or use hierarchy.layers>=2)"
        )
    if layers == 1 and cfg.hierarchy.shared_world_model:
        yield ConfigError(
            "hierarchy.shared_world_model=true is invalid with hierarchy.layers=1: there is no higher level to share "
            "level 0's world model; allowed is false (or use hierarchy.layers>=2)"
        )
    if cfg.hierarchy.shared_world_model and cfg.hierarchy.higher_obs != "k_states":
        yield ConfigError(
            f"hierarchy.higher_obs={cfg.hierarchy.higher_obs!r} is invalid with hierarchy.shared_world_model=true: "
            f"higher levels then imagine in level 0's latent space and observe nothing of their own; allowed is 'k_states'"
        )
    if layers > 1 and cfg.training.num_envs > 1:
        yield ConfigError(
            f"training.num_envs={cfg.training.num_envs} is invalid with hierarchy.layers={layers}: higher levels "
            f"observe each environment at its own times and their replay cannot hold streams that advance "
            f"separately yet; allowed is training.num_envs=1 (the paper's setting) or hierarchy.layers=1"
        )
    weights = cfg.hierarchy.reward_weights
    unrewarded = [lvl for lvl in range(layers) if not any(w > 0 for w in level_reward_weights(cfg, lvl).values())]
    if unrewarded:
        yield ConfigError(
            f"hierarchy.reward_weights.extrinsic={weights.extrinsic} is invalid: level {unrewarded[0]} would have no "
            f"reward (its subgoal and novelty terms are 0 or absent); allowed is a positive extrinsic weight, or "
            f"positive subgoal/novelty weights on every level"
        )
    if cfg.training.min_windows < cfg.training.batch_size:
        yield ConfigError(
            f"training.min_windows={cfg.training.min_windows} is invalid: a level needs at least a batch of windows; "
            f"allowed is an integer >= training.batch_size ({cfg.training.batch_size})"
        )
    if cfg.training.replay_capacity < cfg.training.batch_length * cfg.training.num_envs:
        yield ConfigError(
            f"training.replay_capacity={cfg.training.replay_capacity} is invalid: it must hold one window per "
            f"environment; allowed is an integer >= batch_length x num_envs "
            f"({cfg.training.batch_length * cfg.training.num_envs})"
        )
    precision, accelerator = cfg.fabric.precision, cfg.fabric.accelerator
    if precision in REFUSED_PRECISIONS:
        yield _fail("fabric.precision", precision, f"{' | '.join(PRECISIONS)} ({REFUSED_PRECISIONS[precision]})")
    if precision == "16-mixed" and accelerator == "cpu":
        yield ConfigError(
            "fabric.accelerator='cpu' is invalid with fabric.precision='16-mixed': fp16 autocast with a loss scaler "
            "needs CUDA and Lightning would silently run bf16-mixed instead; allowed is cuda | gpu | auto (on a GPU "
            "machine), or a CPU precision: 32-true | bf16-mixed | bf16-true"
        )
    deterministic = cfg.fabric.get("deterministic", False)
    if deterministic is not False and cfg.fabric.get("cudnn_benchmark", False):
        yield ConfigError(
            f"fabric.cudnn_benchmark=true is invalid with fabric.deterministic={str(deterministic).lower()}: "
            "cuDNN's benchmark picks algorithms by timing, which is not reproducible; allowed is false"
        )
    s5 = cfg.sequence_model if cfg.sequence_model.name == "s5" else None
    if s5 is not None and s5.state_size % s5.init_blocks:
        yield ConfigError(
            f"sequence_model.state_size={s5.state_size} is invalid with sequence_model.init_blocks={s5.init_blocks}: "
            f"each HiPPO-N initialisation block takes an equal share of the S5 state; allowed is a multiple of "
            f"init_blocks (model.seq_state and model.seq_init_blocks)"
        )
    if s5 is not None and s5.dt_min > s5.dt_max:
        yield ConfigError(
            f"sequence_model.dt_min={s5.dt_min} is invalid with sequence_model.dt_max={s5.dt_max}: the initial step "
            f"sizes are drawn from [dt_min, dt_max]; allowed is dt_min <= dt_max"
        )


def _leaf_keys(node: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every key of a nested mapping (containers and leaves)."""
    keys: set[str] = set()
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}{key}"
            keys.add(path)
            keys |= _leaf_keys(value, f"{path}.")
    return keys


def unknown_keys(cfg: DictConfig | Mapping, reference: DictConfig | Mapping) -> None:
    """Refuse keys of ``cfg`` that the config tree does not define: ``reference`` is the config composed from the same
    group choices without the experiment overlay and without any key override, so a misspelled key in an overlay or a
    ``+training.stepz=10`` is caught before anything runs. The message names the key and the closest known one."""
    plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    known_tree = OmegaConf.to_container(reference, resolve=False) if isinstance(reference, DictConfig) else reference
    known = _leaf_keys(known_tree)
    # the top-most unknown paths only: `training.stepz`, not also its children
    unknown = sorted(
        key for key in _leaf_keys(plain) if key not in known and ("." not in key or key.rsplit(".", 1)[0] in known)
    )
    if (plain.get("logger") or {}).get("name") == "none":  # overlays tune the MLflow logger; logger=none ignores it
        unknown = [key for key in unknown if not key.startswith("logger.")]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    others = f" (also unknown: {', '.join(unknown[1:4])})" if len(unknown) > 1 else ""
    raise ConfigError(
        f"{key} is not a config key{hint}{others}: check the spelling in your overrides or experiment overlay "
        "(`python -m hieros --cfg job` prints every key)"
    )


def _validate_components(cfg: DictConfig, registry: Registry) -> None:
    for group in GROUPS:
        node = cfg.get(group)
        if node is None:
            raise ConfigError(f"{group} is missing: allowed is one of {', '.join(registry.names(group))}")
        name = node.get("name")
        try:
            component = registry.get(group, name)
        except UnknownComponentError as error:
            raise ConfigError(f"{group}.name={_show(name)} is invalid: {error}") from None
        check = getattr(component, "validate_config", None)
        if check is not None:
            try:
                check(OmegaConf.to_container(node, resolve=True))
            except (ValueError, KeyError) as error:
                raise ConfigError(f"{group}: {error}") from None
