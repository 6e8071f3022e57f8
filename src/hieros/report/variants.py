"""Variant labels: which config keys tell the runs of a sweep apart (game and seed excluded), the label of each run's
variant (``sampler.name=uniform``), and the baseline variant the comparisons are made against."""

from __future__ import annotations

import fnmatch
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hieros.report.flat_config import parse_param
from hieros.report.records import Problem, RunRecord, Sweep, sort_key
from hieros.training.added_keys import ADDED_KEYS

VARIANT_PRIORITY: tuple[str, ...] = (
    "experiment_name",
    "hierarchy.layers",
    "sequence_model.name",
    "sampler.name",
    "sampler.temperature",
    "goal_encoding.name",
    "hierarchy.higher_obs",
    "model.seq_blocks",
    "agent.world_model.stochastic",
    "hierarchy.shared_world_model",
    "sequence_model.h_source",
)
"""Config keys preferred as variant labels when several keys split the runs the same way."""

IGNORED_KEYS: tuple[str, ...] = (
    "seed",
    "env.game",
    "env.id",
    "paths.*",
    "logger.*",
    "hydra.*",
    "fabric.*",
    "training.torch_threads",
    "training.progress",
    "training.compile",
    "training.compile_backend",
    "training.objective",
    "training.resume",
)
"""Keys never used to tell variants apart (game, seed, locations, logging, hardware, and run controls that do not
change what is learned; runs from before such a key existed hold no value for it)."""

_ABSENT = "<absent>"


def _value(config: Mapping[str, Any], key: str, absent: Any = _ABSENT) -> Any:
    """The run's value of ``key``; a run from before the key existed holds the value of the older behaviour."""
    return config.get(key, ADDED_KEYS.get(key, absent))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore)


def assign_variants(
    sweep: Sweep,
    baseline: str | None = None,
    defaults: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ignore: Sequence[str] = IGNORED_KEYS,
) -> None:
    """Group the records into variants by the config keys whose values differ across the sweep (game and seed
    excluded), and pick the baseline variant. Keys that split the runs identically are merged (the one listed first
    in :data:`VARIANT_PRIORITY` names the variant, e.g. ``model.seq_blocks`` rather than ``sequence_model.num_blocks``),
    and only as many keys are kept as are needed to tell the variants apart.

    A key that only changes from one game to another (``env.name``, per-game settings) does not make a variant. A run
    from before a key of :data:`~hieros.training.added_keys.ADDED_KEYS` existed counts as holding its listed value.

    The baseline is ``baseline`` if given (a variant label or ``key=value[,key=value]``), else the variant whose
    settings agree most with ``defaults`` (a mapping or a function returning one, called only when needed: the
    sweep's master config, or the package's default config).
    """
    configured = [record for record in sweep.records if record.config]
    keys = sorted({key for record in configured for key in record.config if not _ignored(key, ignore)})
    partitions: dict[tuple, list[str]] = defaultdict(list)
    for key in keys:
        values = [_canonical(_value(record.config, key)) for record in configured]
        per_game: dict[Any, set[str]] = defaultdict(set)
        for record, value in zip(configured, values):
            per_game[record.game].add(value)
        if any(len(seen) > 1 for seen in per_game.values()):  # differs among runs of one game, not just across games
            first_seen: dict[str, int] = {}
            partitions[tuple(first_seen.setdefault(v, len(first_seen)) for v in values)].append(key)
    representatives = sorted((min(group, key=_key_rank) for group in partitions.values()), key=_key_rank)
    chosen = _minimal_keys(representatives, configured)
    sweep.variant_keys = chosen
    for record in sweep.records:
        if not record.config:
            record.variant, record.settings = "unknown", {}
            continue
        record.settings = {key: _value(record.config, key, None) for key in chosen}
        record.variant = _label(record.settings, record.config)
    sweep.baseline = _pick_baseline(sweep, baseline, defaults)


def _key_rank(key: str) -> tuple:
    priority = VARIANT_PRIORITY.index(key) if key in VARIANT_PRIORITY else len(VARIANT_PRIORITY)
    return priority, key.count("."), key


def _partition(records: Sequence[RunRecord], keys: Sequence[str]) -> int:
    return len({tuple(_canonical(_value(record.config, key)) for key in keys) for record in records})


def _minimal_keys(candidates: list[str], records: list[RunRecord]) -> list[str]:
    """The fewest candidates (in priority order) that split the runs into as many groups as all candidates do."""
    if not candidates:
        return []
    target = _partition(records, candidates)
    for key in candidates:
        if _partition(records, [key]) == target:
            return [key]
    chosen: list[str] = []
    for key in candidates:
        if _partition(records, [*chosen, key]) > _partition(records, chosen):
            chosen.append(key)
        if _partition(records, chosen) == target:
            break
    return chosen


def _label(settings: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    if not settings:
        return str(config.get("experiment_name", "all runs"))
    if list(settings) == ["experiment_name"]:
        return str(settings["experiment_name"])
    return ", ".join(f"{key}={_show(value)}" for key, value in settings.items())


def _show(value: Any) -> str:
    return "absent" if value is None else str(value)


def _pick_baseline(
    sweep: Sweep, baseline: str | None, defaults: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
) -> str | None:
    labels = sorted({record.variant for record in sweep.records if record.config})
    if not labels:
        return None
    if baseline:
        if baseline in labels:
            return baseline
        wanted = dict(part.split("=", 1) for part in baseline.split(",") if "=" in part)
        for label in labels:
            settings = sweep.settings(label)
            if wanted and all(
                _canonical(parse_param(v)) == _canonical(settings.get(k.strip())) for k, v in wanted.items()
            ):
                return label
        sweep.problems.append(
            Problem("unknown baseline", f"--baseline {baseline!r} matches no variant; variants: {', '.join(labels)}")
        )
    if len(labels) == 1:
        return labels[0]
    defaults = (defaults() if callable(defaults) else defaults) or {}

    def agreement(label: str) -> int:
        settings = sweep.settings(label)
        return sum(
            key in defaults and _canonical(defaults[key]) == _canonical(value) for key, value in settings.items()
        )

    ordered = sorted(labels, key=lambda label: sort_key(str(v) for v in sweep.settings(label).values()))
    best = max(ordered, key=agreement)  # max keeps the first of equals
    if agreement(best) == 0:
        sweep.notes.append(
            f"No variant matches the default config; the baseline for comparisons is the first variant, {best!r} "
            "(choose another with --baseline)."
        )
    return best
