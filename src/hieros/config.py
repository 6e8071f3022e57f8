"""Composition helpers and validation of the composed config.

:func:`validate` runs right after Hydra composes the config and before any work starts. A bad value raises
:class:`ConfigError` whose message is one line: the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hieros.agent.reward_weights import level_reward_weights
from hieros.registry import GROUPS, Registry, UnknownComponentError

# Precisions the training step honours: fp32, or bf16 autocast around the networks (no loss scaler needed).
# 16-mixed needs a loss scaler stepping each optimizer, and bf16-true / 64-true need the modules converted by
# fabric.setup_module; the agent's optimizers are not set up through Fabric yet, so these are refused (issue 15).
PRECISIONS = ("32-true", "32", "bf16-mixed")


class ConfigError(ValueError):
    """An invalid configuration; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Rule:
    key: str
    check: Callable[[Any], bool]
    allowed: str


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
    Rule("fabric.precision", _one_of(*PRECISIONS), " | ".join(PRECISIONS)),
    Rule(
        "fabric.devices",
        _int_in(1, 1),
        "1 (one device per run: data-parallel updates are not implemented; run seeds as a sweep)",
    ),
)


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)} is invalid: allowed is {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, DictConfig):
        return str(OmegaConf.to_container(value))
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def validate(cfg: DictConfig, registry: Registry | None = None, reference: DictConfig | None = None) -> None:
    """Check types, ranges and combinations of a composed config; raise :class:`ConfigError` on the first problem.
    With ``reference`` (see :func:`unknown_keys`) keys the config tree does not define are refused first."""
    if reference is not None:
        unknown_keys(cfg, reference)
    for rule in RULES:
        try:
            value = _select(cfg, rule.key)
        except Exception as error:  # missing mandatory value or bad interpolation
            reason = str(error).splitlines()[0]
            raise ConfigError(f"{rule.key} cannot be read ({reason}): allowed is {rule.allowed}") from None
        if not rule.check(value):
            raise _fail(rule.key, value, rule.allowed)
    for problem in _combination_problems(cfg):
        raise problem
    if registry is not None:
        _validate_components(cfg, registry)


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
    modes = list(cfg.training.eval_modes)
    if not modes or any(mode not in ("sampled", "greedy") for mode in modes):
        yield ConfigError(f"training.eval_modes={modes} is invalid: allowed is a non-empty list of sampled | greedy")
    if cfg.sequence_model.name == "s5" and cfg.sequence_model.get("h_source") not in ("state", "output"):
        yield _fail("sequence_model.h_source", cfg.sequence_model.get("h_source"), "state | output")
    if cfg.sequence_model.get("acting_context", "episode") not in ("episode", "window"):
        yield _fail("sequence_model.acting_context", cfg.sequence_model.get("acting_context"), "episode | window")


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
