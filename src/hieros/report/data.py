"""Loaders: a Hydra sweep directory or an MLflow experiment / parent run -> one :class:`RunRecord` per training job.

Both sources give the same records: the flattened config (dotted keys), game, seed, the content of ``scores.json``,
metric curves on the agent-step axis (named as in ``metrics.jsonl``), and the run's media (imagination and subgoal
videos). Anything missing or unreadable becomes a :class:`Problem` on the :class:`Sweep`; a loader never drops a run
silently and never raises for bad run data (only for a SOURCE that does not exist).

Run directory layout (written by ``hieros.training.loop``)::

    <sweep>/multirun.yaml                 Hydra's master config of the sweep (sweep overrides in hydra.overrides.task)
    <sweep>/<job number>/.hydra/config.yaml, overrides.yaml   (unresolved; written by Hydra at job start)
    <sweep>/<job number>/config.yaml      the resolved config (written by the loop)
    <sweep>/<job number>/scores.json      final_eval.{mode}.mean, train_return_last10pct, agent_steps, ...
    <sweep>/<job number>/metrics.jsonl    {"step": ..., "time": ..., "episode/score": ..., "train/level0/...": ...}
    <sweep>/<job number>/media/           open_loop_step<N>.gif/.mp4, subgoals_step<N>.gif/.mp4

The MLflow mirror (``hieros.training.tracking``): params = the flattened resolved config as text, metrics named as
in metrics.jsonl on the agent-step axis, artifacts ``scores.json``, ``metrics.jsonl`` (at the end), ``config/`` and
``media/``; a sweep's jobs carry the tag ``mlflow.parentRunId``.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hieros.mappings import flatten

SCORE_KINDS: tuple[str, ...] = ("final_eval", "train_last10pct")
EVAL_MODES: tuple[str, ...] = ("sampled", "greedy")
DEFAULT_METRICS: tuple[str, ...] = (
    "episode/score",
    "episode/length",
    "eval/*",
    "sps",
    "train/level*/model_loss",
    "train/level*/image_loss",
    "train/level*/vector_loss",
    "train/level*/reward_loss",
    "train/level*/cont_loss",
    "train/level*/dyn_loss",
    "train/level*/rep_loss",
    "train/level*/imag_*_reward",
    "train/level*/actor_entropy",
)
"""Metric names (fnmatch patterns) loaded by default; pass ``metrics=("*",)`` for all."""

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

IGNORED_KEYS: tuple[str, ...] = ("seed", "env.game", "env.id", "paths.*", "logger.*", "hydra.*", "fabric.*")
"""Keys never used to tell variants apart (game, seed, locations, logging, hardware)."""

MEDIA_SUFFIXES: tuple[str, ...] = (".gif", ".mp4", ".webm")
_SKIP_DIRS = {"replay", "checkpoints", ".hydra", ".submitit", "report", "__pycache__"}
_ABSENT = "<absent>"


# --------------------------------------------------------------------------- records
@dataclass
class Curve:
    """One metric of one run: agent steps (n,) and values (n,), sorted by step."""

    steps: np.ndarray
    values: np.ndarray


@dataclass
class Media:
    """A video of a run: ``kind`` is ``imagination`` (open-loop world-model video, Fig. 2) or ``subgoals`` (decoded
    subgoals, Fig. 5). ``path`` is a local file, or ``artifact`` = (run id, artifact path) to fetch from MLflow."""

    kind: str
    name: str
    step: int | None
    path: Path | None = None
    artifact: tuple[str, str] | None = None


@dataclass
class Problem:
    """Something missing or partial; every one is listed in the report."""

    kind: str
    detail: str
    run: str | None = None
    variant: str | None = None
    game: str | None = None
    seed: int | None = None


@dataclass
class RunRecord:
    """One training job."""

    run: str
    location: str
    config: dict[str, Any]
    status: str
    scores: dict[str, Any] | None = None
    curves: dict[str, Curve] = field(default_factory=dict)
    media: list[Media] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    variant: str = "unknown"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> str | None:
        return self.config.get("env.name")

    @property
    def game(self) -> str | None:
        """Atari games by friendly name (``breakout``); other environments as ``<env>:<game or id>``."""
        env = self.config.get("env.name")
        name = self.config.get("env.game", self.config.get("env.id"))
        if env is None and name is None:
            return None
        if env == "atari100k":
            return None if name is None else str(name)
        return f"{env}:{name}" if name is not None else str(env)

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        try:
            return int(seed) if seed is not None else None
        except (TypeError, ValueError):
            return None

    def score(self, kind: str = "final_eval", mode: str = "sampled") -> float | None:
        """The selected final score, or None when scores.json lacks it."""
        return _select_score(self.scores, kind, mode)[0]

    def curve(self, name: str) -> Curve | None:
        return self.curves.get(name)


def _select_score(scores: Mapping[str, Any] | None, kind: str, mode: str) -> tuple[float | None, str | None]:
    """(score, why it is missing)."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score {kind!r}; use one of {', '.join(SCORE_KINDS)}")
    if scores is None:
        return None, "no scores.json"
    if kind == "final_eval":
        entry = (scores.get("final_eval") or {}).get(mode)
        value = entry.get("mean") if isinstance(entry, Mapping) else None
        if value is None:
            modes = sorted((scores.get("final_eval") or {}).keys())
            return None, f"scores.json has no final_eval.{mode}.mean (modes present: {modes or 'none'})"
    else:
        value = scores.get("train_return_last10pct")
        if value is None:
            return None, "scores.json has no train_return_last10pct (no training episode ended in the last 10%)"
    value = float(value)
    if not np.isfinite(value):
        return None, f"score is {value}"
    return value, None


@dataclass
class Sweep:
    """All records of one SOURCE, the problems found while loading, and the variant grouping."""

    source: str
    kind: str
    records: list[RunRecord]
    problems: list[Problem] = field(default_factory=list)
    variant_keys: list[str] = field(default_factory=list)
    baseline: str | None = None
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    master_config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        """Variant labels, the baseline first, then in the order of their settings."""
        labels = {record.variant for record in self.records}
        ordered = sorted(labels, key=lambda label: _sort_key(self._settings_of(label)))
        if self.baseline in labels:
            ordered.remove(self.baseline)
            ordered.insert(0, self.baseline)
        return ordered

    @property
    def games(self) -> list[str]:
        return sorted({record.game for record in self.records if record.game is not None})

    def _settings_of(self, label: str) -> tuple:
        for record in self.records:
            if record.variant == label:
                return tuple(str(record.settings.get(key)) for key in self.variant_keys) + (label,)
        return (label,)

    def settings(self, variant: str) -> dict[str, Any]:
        for record in self.records:
            if record.variant == variant:
                return dict(record.settings)
        return {}

    def select(self, variant: str | None = None, game: str | None = None) -> list[RunRecord]:
        return [
            r for r in self.records if (variant is None or r.variant == variant) and (game is None or r.game == game)
        ]

    def fetch_media(self, media: Media, destination: str | Path) -> Path | None:
        """A local copy of ``media`` in ``destination`` (downloaded from MLflow if needed); None if it fails."""
        destination = Path(destination)
        destination.mkdir(parents=True, exist_ok=True)
        try:
            if media.path is not None:
                return media.path
            if media.artifact is None:
                return None
            from mlflow.tracking import MlflowClient

            run_id, artifact_path = media.artifact
            with quiet_artifact_downloads():
                local = MlflowClient(self.tracking_uri).download_artifacts(run_id, artifact_path, str(destination))
            return Path(local)
        except Exception as error:  # noqa: BLE001 - a media download must never stop the report
            self.problems.append(Problem("media unavailable", f"{media.name}: {error}"))
            return None


def _sort_key(values: Iterable[Any]) -> tuple:
    """Numbers sort numerically, everything else alphabetically."""
    key = []
    for value in values:
        try:
            key.append((0, float(value), ""))
        except (TypeError, ValueError):
            key.append((1, 0.0, str(value)))
    return tuple(key)


# --------------------------------------------------------------------------- config helpers
def parse_param(text: Any) -> Any:
    """An MLflow param (always a string) back to a Python value: ``"3"`` -> 3, ``"True"`` -> True, ``"None"`` -> None,
    ``"['a', 'b']"`` -> list; anything else stays a string."""
    if not isinstance(text, str):
        return text
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return {"true": True, "false": False, "none": None, "null": None}.get(text.strip().lower(), text)


def load_config_file(path: Path) -> dict[str, Any]:
    """Flattened config of a Hydra ``config.yaml``/``multirun.yaml`` with interpolations resolved where they can be
    (``${model.seq_blocks}`` resolves; ``${now:...}`` or a missing env var keep their raw text)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    config = OmegaConf.load(path)

    def walk(node: DictConfig, prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key in node:
            name = f"{prefix}{key}"
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - unresolvable interpolation: keep the raw text
                flat[name] = OmegaConf.to_container(node, resolve=False)[key]
                continue
            if isinstance(value, DictConfig):
                flat.update(walk(value, name + ".") if len(value) else {name: {}})
            elif isinstance(value, ListConfig):
                try:
                    flat[name] = OmegaConf.to_container(value, resolve=True)
                except Exception:  # noqa: BLE001
                    flat[name] = OmegaConf.to_container(value, resolve=False)
            else:
                flat[name] = value
        return flat

    return walk(config, "") if isinstance(config, DictConfig) else {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore)


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# --------------------------------------------------------------------------- variants
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

    A key that only changes from one game to another (``env.name``, per-game settings) does not make a variant.

    The baseline is ``baseline`` if given (a variant label or ``key=value[,key=value]``), else the variant whose
    settings agree most with ``defaults`` (a mapping or a function returning one, called only when needed: the
    sweep's master config, or the package's default config).
    """
    configured = [record for record in sweep.records if record.config]
    keys = sorted({key for record in configured for key in record.config if not _ignored(key, ignore)})
    partitions: dict[tuple, list[str]] = defaultdict(list)
    for key in keys:
        values = [_canonical(record.config.get(key, _ABSENT)) for record in configured]
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
        record.settings = {key: record.config.get(key) for key in chosen}
        record.variant = _label(record.settings, record.config)
    sweep.baseline = _pick_baseline(sweep, baseline, defaults)


def _key_rank(key: str) -> tuple:
    priority = VARIANT_PRIORITY.index(key) if key in VARIANT_PRIORITY else len(VARIANT_PRIORITY)
    return priority, key.count("."), key


def _partition(records: Sequence[RunRecord], keys: Sequence[str]) -> int:
    return len({tuple(_canonical(record.config.get(key, _ABSENT)) for key in keys) for record in records})


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

    ordered = sorted(labels, key=lambda label: _sort_key(str(v) for v in sweep.settings(label).values()))
    best = max(ordered, key=agreement)  # max keeps the first of equals
    if agreement(best) == 0:
        sweep.notes.append(
            f"No variant matches the default config; the baseline for comparisons is the first variant, {best!r} "
            "(choose another with --baseline)."
        )
    return best


def package_defaults(experiment: str | None = None) -> dict[str, Any]:
    """The flattened default config of the installed package (with ``+experiment=<experiment>`` if that file
    exists); empty if it cannot be composed."""
    try:
        from hydra import compose, initialize_config_module
        from omegaconf import OmegaConf

        overrides = []
        if experiment:
            from importlib import resources

            if resources.files("hieros.conf").joinpath("experiment", f"{experiment}.yaml").is_file():
                overrides.append(f"+experiment={experiment}")
        with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
            config = compose(config_name="config", overrides=overrides)
        container = OmegaConf.to_container(config, resolve=False)
        return {k: v for k, v in flatten(container).items() if not (isinstance(v, str) and "${" in v)}
    except Exception:  # noqa: BLE001 - defaults only choose the baseline; without them the first variant is used
        return {}


# --------------------------------------------------------------------------- completeness checks
def check_sweep(sweep: Sweep, score: str = "final_eval", mode: str = "sampled", reference: Any = None) -> list[Problem]:
    """Problems of the loaded sweep for the chosen score: crashed or unfinished jobs, runs without that score,
    missing seeds and games per variant, unknown games and games without human reference scores."""
    problems = list(sweep.problems)
    for record in sweep.records:
        where = dict(run=record.run, variant=record.variant, game=record.game, seed=record.seed)
        for message in record.problems:
            problems.append(Problem("unreadable data", message, **where))
        if record.status != "finished":
            last = record.curves.get("episode/score") or next(iter(record.curves.values()), None)
            reached = f"; metrics reach step {int(last.steps[-1])}" if last is not None and last.steps.size else ""
            steps = record.config.get("training.steps")
            budget = f" of {steps}" if reached and steps is not None else ""
            problems.append(Problem(record.status, f"job without final scores{reached}{budget}", **where))
        elif record.config and record.score(score, mode) is None:
            problems.append(Problem("no score", _select_score(record.scores, score, mode)[1] or "", **where))
    configured = [record for record in sweep.records if record.config]
    seeds = {record.seed for record in configured if record.seed is not None}
    games = {record.game for record in configured if record.game is not None}
    for variant in sweep.variants:
        records = [record for record in configured if record.variant == variant]
        if not records:
            continue
        for game in sorted(games):
            present = {record.seed for record in records if record.game == game}
            if not present:
                problems.append(Problem("missing game", f"no run of game {game!r}", variant=variant, game=game))
                continue
            for seed in sorted(seeds - present):
                problems.append(
                    Problem(
                        "missing seed",
                        f"seed {seed} missing (present: {', '.join(str(s) for s in sorted(present, key=str))})",
                        variant=variant,
                        game=game,
                        seed=seed,
                    )
                )
    if reference is not None:
        for game in sorted(games):
            env = next(record.env for record in configured if record.game == game)
            if env == "atari100k" and reference.lookup(game) is None:
                problems.append(Problem("unknown game", f"{game!r} is not one of the 26 Atari100k games", game=game))
            elif reference.lookup(game) is None or env != "atari100k":
                problems.append(
                    Problem("no human score", f"no random/human reference for {game!r}: raw scores only", game=game)
                )
    return problems


# --------------------------------------------------------------------------- sweep directories
def find_job_dirs(root: Path, depth: int = 3) -> list[Path]:
    """Run directories under ``root``: folders holding ``.hydra/``, ``scores.json`` or ``metrics.jsonl``, and the
    numbered folders of a Hydra multirun (kept even when empty, so a job that died at once is reported)."""
    root = Path(root)
    if _is_job_dir(root):
        return [root]
    found: list[Path] = []
    frontier = [root]
    for _ in range(depth):
        next_frontier = []
        for folder in frontier:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS):
                if _is_job_dir(child) or (child.name.isdigit() and (folder / "multirun.yaml").is_file()):
                    found.append(child)
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else 0, p.name))


def _is_job_dir(folder: Path) -> bool:
    return any((folder / name).exists() for name in (".hydra/config.yaml", "scores.json", "metrics.jsonl"))


RESERVED_METRIC_KEYS: tuple[str, ...] = ("step", "time")
"""Keys of a metrics.jsonl line that are not metrics (agent step, wall-clock time)."""


def read_metrics_jsonl(path: Path, patterns: Sequence[str] = DEFAULT_METRICS) -> tuple[dict[str, Curve], list[str]]:
    """Curves of the wanted metrics in a metrics.jsonl, and a message per unreadable line."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    problems = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                step = float(entry["step"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{path}: line {number} is not a JSON object with a 'step' (skipped)")
                continue
            for name, value in entry.items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if name not in RESERVED_METRIC_KEYS and numeric and _wanted(name, patterns):
                    points[name].append((step, float(value)))
    return {name: _curve(values) for name, values in points.items()}, problems


def _curve(points: Sequence[tuple[float, float]]) -> Curve:
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    order = np.argsort(array[:, 0], kind="stable")
    return Curve(array[order, 0], array[order, 1])


def find_media(folder: Path) -> list[Media]:
    """Videos under a run directory (replay and checkpoints skipped)."""
    media = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in MEDIA_SUFFIXES and not (_SKIP_DIRS & set(path.relative_to(folder).parts[:-1])):
            media.append(Media(media_kind(path.name), path.name, media_step(path.name), path=path))
    return media


def media_kind(name: str) -> str:
    lowered = name.lower()
    if "subgoal" in lowered:
        return "subgoals"
    if any(word in lowered for word in ("imag", "video_pred", "openloop", "open_loop", "prediction", "dream")):
        return "imagination"
    return "other"


def media_step(name: str) -> int | None:
    numbers = re.findall(r"\d+", Path(name).stem)
    return int(numbers[-1]) if numbers else None


def latest_media(records: Iterable[RunRecord], kind: str) -> Media | None:
    """The newest video of ``kind`` among ``records`` (highest step in its name; the GIF where a GIF and an MP4 of
    the same step exist, since Markdown can embed only the GIF)."""
    candidates = [media for record in records for media in record.media if media.kind == kind]
    if not candidates:
        return None
    return max(candidates, key=lambda m: (m.step if m.step is not None else -1, m.name.endswith(".gif"), m.name))


def load_run_dir(folder: Path, metrics: Sequence[str] = DEFAULT_METRICS) -> RunRecord:
    """One job directory -> record (never raises for missing or broken files)."""
    folder = Path(folder)
    problems: list[str] = []
    config: dict[str, Any] = {}
    # The loop writes the resolved config to <run>/config.yaml; Hydra's .hydra/config.yaml (unresolved) also exists
    # for a job that died before the loop started.
    candidates = [path for path in (folder / "config.yaml", folder / ".hydra" / "config.yaml") if path.is_file()]
    for config_path in candidates:
        try:
            config = load_config_file(config_path)
            break
        except Exception as error:  # noqa: BLE001
            problems.append(f"{config_path}: unreadable ({error})")
    if not candidates:
        problems.append(f"{folder / '.hydra' / 'config.yaml'} missing: game, seed and variant unknown")
    scores = None
    scores_path = folder / "scores.json"
    if scores_path.is_file():
        try:
            scores = json.loads(scores_path.read_text())
        except (ValueError, OSError) as error:
            problems.append(f"{scores_path}: unreadable ({error})")
    curves: dict[str, Curve] = {}
    metrics_path = folder / "metrics.jsonl"
    if metrics_path.is_file():
        curves, bad_lines = read_metrics_jsonl(metrics_path, metrics)
        problems.extend(bad_lines)
    status = "finished" if isinstance(scores, dict) else "crashed or unfinished"
    return RunRecord(
        run=folder.name,
        location=str(folder),
        config=config,
        status=status,
        scores=scores if isinstance(scores, dict) else None,
        curves=curves,
        media=find_media(folder),
        problems=problems,
    )


def expected_jobs(master: Mapping[str, Any]) -> int | None:
    """Number of jobs a basic-sweeper multirun launches, from ``hydra.overrides.task`` and ``hydra.sweeper.params``
    of multirun.yaml; None when a sweep override is not a plain comma list (range(), glob(), ...)."""
    prefix = "hydra.sweeper.params."
    params = [f"{key[len(prefix) :]}={value}" for key, value in master.items() if key.startswith(prefix)]
    overrides = params + list(master.get("hydra.overrides.task") or [])
    grid: dict[str, int] = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        value = str(value)
        if any(token in value for token in ("(", "[", "{", "\\")):
            return None
        grid[key.lstrip("+~")] = len(value.split(",")) if value else 1
    return int(np.prod(list(grid.values()))) if grid else 1


def load_sweep_dir(path: str | Path, metrics: Sequence[str] = DEFAULT_METRICS) -> Sweep:
    """A Hydra multirun directory (or one run directory, or a folder of several sweeps) -> :class:`Sweep`."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    records = [load_run_dir(folder, metrics) for folder in find_job_dirs(root)]
    sweep = Sweep(source=str(root), kind="directory", records=records)
    if not records:
        sweep.problems.append(
            Problem("no runs", f"{root} holds no run directories (.hydra/config.yaml, scores.json or metrics.jsonl)")
        )
    if len({str(Path(r.location).parent) for r in records}) > 1:
        sweep.notes.append(f"Runs of several sweeps under {root} were pooled.")
    master_path = root / "multirun.yaml"
    if master_path.is_file():
        try:
            sweep.master_config = load_config_file(master_path)
        except Exception as error:  # noqa: BLE001
            sweep.problems.append(Problem("unreadable data", f"{master_path}: {error}"))
    if sweep.master_config is not None:
        expected = expected_jobs(sweep.master_config)
        numbers = {int(Path(r.location).name) for r in records if Path(r.location).name.isdigit()}
        if expected is not None and len(numbers) < expected:
            missing = sorted(set(range(expected)) - numbers)
            sweep.problems.append(
                Problem(
                    "missing job",
                    f"multirun.yaml describes {expected} jobs, {len(numbers)} job folders exist; "
                    f"missing job numbers: {', '.join(map(str, missing))}",
                )
            )
    from hieros.training.tracking import read_sweep_parent  # here: the training package imports torch

    parent = read_sweep_parent(root)  # written by the sweep callback (hieros.training.sweep) on the submitting host
    if parent is not None:
        sweep.parent_run_id, sweep.tracking_uri = str(parent["run_id"]), parent.get("tracking_uri")
    return sweep


def latest_sweep(home: str | Path | None = None) -> Path | None:
    """The newest ``multirun_*`` folder under ``$HIEROS_HOME/runs`` (default ``./hieros-runs/runs``)."""
    runs = Path(home or os.environ.get("HIEROS_HOME", "hieros-runs")) / "runs"
    sweeps = sorted(runs.glob("*/multirun_*"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    return sweeps[-1] if sweeps else None


# --------------------------------------------------------------------------- MLflow
@contextlib.contextmanager
def quiet_artifact_downloads():
    """Switch off MLflow's per-download progress bars for the duration of the block (restored afterwards)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the sqlite store the training runs use: ``sqlite:///<HIEROS_HOME>/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("HIEROS_HOME", "hieros-runs")).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def load_mlflow(
    source: str, tracking_uri: str | None = None, metrics: Sequence[str] = DEFAULT_METRICS, all_sweeps: bool = False
) -> Sweep:
    """An MLflow experiment name or a (parent) run id -> :class:`Sweep`.

    A parent run id selects its child runs (a run without children is loaded on its own). An experiment name
    selects the children of its newest parent run (``all_sweeps=True``: every job run of the experiment); runs that
    are parents are never loaded as jobs. Missing artifacts and metrics are reported, not raised.
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(source)
    notes: list[str] = []
    if experiment is not None:
        runs = _search_runs(client, [experiment.experiment_id])
        evaluations = [run for run in runs if "hieros.eval_of" in run.data.tags]
        if evaluations:
            notes.append(f"{len(evaluations)} stand-alone evaluation run(s) of hieros-eval were not counted as jobs.")
            runs = [run for run in runs if "hieros.eval_of" not in run.data.tags]
        parent_ids = {run.data.tags.get("mlflow.parentRunId") for run in runs} - {None}
        jobs = [run for run in runs if run.info.run_id not in parent_ids]
        parents = sorted(
            (run for run in runs if run.info.run_id in parent_ids), key=lambda run: run.info.start_time or 0
        )
        parent_id = parents[-1].info.run_id if parents else None
        if len(parents) > 1 and not all_sweeps:
            jobs = [run for run in jobs if run.data.tags.get("mlflow.parentRunId") == parent_id]
            notes.append(
                f"Experiment {source!r} holds {len(parents)} sweeps (parent runs); this report covers the newest, "
                f"{parent_id} ({parents[-1].info.run_name}). Pass a parent run id to report another one."
            )
        elif len(parents) > 1:
            notes.append(f"Runs of {len(parents)} sweeps of experiment {source!r} were pooled.")
    else:
        try:
            run = client.get_run(source)
        except Exception as error:  # noqa: BLE001 - mlflow raises MlflowException subclasses for unknown ids
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise ValueError(
                f"{source!r} is not a directory, an MLflow experiment name or a run id in {uri} "
                f"(experiments there: {names}). Set MLFLOW_TRACKING_URI or pass --tracking-uri for another store."
            ) from error
        children = _search_runs(client, [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        jobs, parent_id = (children, run.info.run_id) if children else ([run], run.info.run_id)
    sweep = Sweep(source=source, kind="mlflow", records=[], tracking_uri=uri, parent_run_id=parent_id, notes=notes)
    if not jobs:
        sweep.problems.append(Problem("no runs", f"MLflow source {source!r} holds no job runs"))
    with tempfile.TemporaryDirectory(prefix="hieros-report-") as scratch, quiet_artifact_downloads():
        for index, run in enumerate(jobs):
            sweep.records.append(_mlflow_record(client, run, metrics, Path(scratch) / str(index)))
    return sweep


def _search_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=1000, page_token=token, order_by=["attributes.start_time ASC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _list_artifacts(client, run_id: str, path: str | None = None, depth: int = 3) -> list[tuple[str, int | None]]:
    """(artifact path, size) of every file up to ``depth`` folders deep."""
    files = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            if depth > 0:
                files.extend(_list_artifacts(client, run_id, info.path, depth - 1))
        else:
            files.append((info.path, info.file_size))
    return files


def _mlflow_record(client, run, metrics: Sequence[str], scratch: Path) -> RunRecord:
    run_id = run.info.run_id
    problems: list[str] = []
    config = {key: parse_param(value) for key, value in run.data.params.items()}
    for key in ("env.name", "env.game", "env.id", "seed", "experiment_name"):  # run tags as a fallback
        if key not in config and key in run.data.tags:
            config[key] = parse_param(run.data.tags[key])
    if not config:
        problems.append(f"MLflow run {run_id} has no params: game, seed and variant unknown")
    try:
        artifacts = _list_artifacts(client, run_id)
    except Exception as error:  # noqa: BLE001
        artifacts = []
        problems.append(f"artifacts of run {run_id} unreadable ({error})")
    by_name: dict[str, list[str]] = defaultdict(list)
    for artifact_path, _ in artifacts:
        by_name[Path(artifact_path).name].append(artifact_path)
    scores = None
    for artifact_path in sorted(by_name.get("scores.json", []), key=lambda p: p.count("/")):
        try:
            local = client.download_artifacts(run_id, artifact_path, str(_fresh(scratch)))
            scores = json.loads(Path(local).read_text())
            break
        except Exception as error:  # noqa: BLE001
            problems.append(f"artifact {artifact_path} of run {run_id} unreadable ({error})")
    curves: dict[str, Curve] = {}
    # A finished run's metrics.jsonl artifact holds every curve in one download; a running or crashed run (or one
    # without that artifact) is read from its MLflow metric histories, one query per metric.
    if run.info.status != "RUNNING" and by_name.get("metrics.jsonl"):
        try:
            local = client.download_artifacts(run_id, sorted(by_name["metrics.jsonl"])[0], str(_fresh(scratch)))
            curves, bad_lines = read_metrics_jsonl(Path(local), metrics)
            problems.extend(bad_lines)
        except Exception as error:  # noqa: BLE001
            problems.append(f"metrics.jsonl artifact of run {run_id} unreadable ({error}); using metric histories")
    if not curves:
        from hieros.training.tracking import is_stale, stale_ranges  # here: the training package imports torch

        for name in sorted(run.data.metrics):
            if not _wanted(name, metrics):
                continue
            try:
                history = client.get_metric_history(run_id, name)
            except Exception as error:  # noqa: BLE001
                problems.append(f"metric {name} of run {run_id} unreadable ({error})")
                continue
            rewinds = stale_ranges(run.data.tags)  # points a resume discarded (MLflow keeps them)
            history = [m for m in history if not is_stale(m.step, m.timestamp, rewinds)]
            if history:
                curves[name] = _curve([(m.step, m.value) for m in history])
    media = [
        Media(media_kind(path), Path(path).name, media_step(path), artifact=(run_id, path))
        for path, _ in artifacts
        if Path(path).suffix.lower() in MEDIA_SUFFIXES
    ]
    if isinstance(scores, dict):
        status = "finished"
    else:
        scores = None
        status = {"RUNNING": "running", "SCHEDULED": "running", "FAILED": "crashed", "KILLED": "crashed"}.get(
            run.info.status, "finished without scores.json"
        )
    return RunRecord(
        run=run_id,
        location=f"mlflow run {run_id} ({run.info.run_name})",
        config=config,
        status=status,
        scores=scores,
        curves=curves,
        media=media,
        problems=problems,
    )


def _fresh(scratch: Path) -> Path:
    folder = scratch / str(len(list(scratch.glob("*"))) if scratch.exists() else 0)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------- entry point
def load(
    source: str | Path,
    tracking_uri: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline: str | None = None,
    all_sweeps: bool = False,
) -> Sweep:
    """A sweep directory, an MLflow experiment name or a parent run id -> :class:`Sweep` with variants assigned."""
    if Path(source).expanduser().is_dir():
        sweep = load_sweep_dir(source, metrics)
    else:
        sweep = load_mlflow(str(source), tracking_uri, metrics, all_sweeps)
    experiments = {record.config.get("experiment_name") for record in sweep.records if record.config}
    experiment = next(iter(experiments)) if len(experiments) == 1 else None
    defaults = sweep.master_config or (lambda: package_defaults(experiment))
    assign_variants(sweep, baseline=baseline, defaults=defaults)
    return sweep


def records_table(sweep: Sweep, score: str = "final_eval", mode: str = "sampled") -> list[dict[str, Any]]:
    """Tidy rows, one per run: run, variant, game, seed, status, score (None where missing) and the settings."""
    rows = []
    for record in sweep.records:
        value, missing = _select_score(record.scores, score, mode)
        rows.append(
            {
                "run": record.run,
                "variant": record.variant,
                "game": record.game,
                "seed": record.seed,
                "status": record.status,
                "score": value,
                "score_missing": missing,
                "location": record.location,
                **{f"setting:{key}": value for key, value in record.settings.items()},
            }
        )
    return rows


def curve_matrix(
    records: Sequence[RunRecord], metric: str, grid: np.ndarray | None = None, points: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """The curves of ``metric`` of several runs on one step grid: (grid (P,), values (runs, P)); NaN outside a run's
    own step range. The default grid is the union of the runs' logged steps (``points`` evenly spaced steps when
    that union is longer)."""
    curves = [record.curves[metric] for record in records if metric in record.curves]
    curves = [curve for curve in curves if curve.steps.size]
    if grid is None:
        grid = np.unique(np.concatenate([curve.steps for curve in curves])) if curves else np.zeros(0)
        if grid.size > points:
            grid = np.linspace(grid[0], grid[-1], points)
    values = np.full((len(curves), grid.size), np.nan)
    for row, curve in enumerate(curves):
        finite = np.isfinite(curve.values)
        steps, ys = curve.steps[finite], curve.values[finite]
        if steps.size == 0:
            continue
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        values[row, inside] = np.interp(grid[inside], steps, ys)
    return grid, values
