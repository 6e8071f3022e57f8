"""The records a report is built from: one :class:`RunRecord` per training job (its flattened config, ``scores.json``,
metric :class:`Curve` s and :class:`Media`), the :class:`Sweep` holding them with the :class:`Problem` s found while
loading, the score selection (:data:`SCORE_KINDS` x :data:`EVAL_MODES`), media lookup, and one tidy row per run
(:func:`records_table`).

The loaders (:mod:`hieros.report.loading`) fill these records; nothing here reads files except
:meth:`Sweep.fetch_media`, which downloads an MLflow video on request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hieros.training.objective import POLICY_MODES

SCORE_KINDS: tuple[str, ...] = ("final_eval", "train_last10pct")
EVAL_MODES: tuple[str, ...] = POLICY_MODES
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

MEDIA_SUFFIXES: tuple[str, ...] = (".gif", ".mp4", ".webm")


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
        return select_score(self.scores, kind, mode)[0]

    def curve(self, name: str) -> Curve | None:
        return self.curves.get(name)


def select_score(scores: Mapping[str, Any] | None, kind: str, mode: str) -> tuple[float | None, str | None]:
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
        ordered = sorted(labels, key=lambda label: sort_key(self._settings_of(label)))
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

            from hieros.report.loading_mlflow import quiet_artifact_downloads  # here: that module imports this one

            run_id, artifact_path = media.artifact
            with quiet_artifact_downloads():
                local = MlflowClient(self.tracking_uri).download_artifacts(run_id, artifact_path, str(destination))
            return Path(local)
        except Exception as error:  # noqa: BLE001 - a media download must never stop the report
            self.problems.append(Problem("media unavailable", f"{media.name}: {error}"))
            return None


def sort_key(values: Iterable[Any]) -> tuple:
    """Numbers sort numerically, everything else alphabetically."""
    key = []
    for value in values:
        try:
            key.append((0, float(value), ""))
        except (TypeError, ValueError):
            key.append((1, 0.0, str(value)))
    return tuple(key)


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


def records_table(sweep: Sweep, score: str = "final_eval", mode: str = "sampled") -> list[dict[str, Any]]:
    """Tidy rows, one per run: run, variant, game, seed, status, score (None where missing) and the settings."""
    rows = []
    for record in sweep.records:
        value, missing = select_score(record.scores, score, mode)
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
