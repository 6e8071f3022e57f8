"""The report builder: :func:`build_report` loads a SOURCE, computes the tables and figures, writes them (CSV, PNG/SVG)
and ``report.md`` into one folder, and logs that folder to the sweep's MLflow parent run. Also the Figure-13 replay
sampling counts it shows (:func:`etbs_counts`) and the default output folder (:func:`default_out`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hieros.report import figures as fg
from hieros.report import scores as sc
from hieros.report import tables as tb
from hieros.report.checks import check_sweep
from hieros.report.loading import load
from hieros.report.markdown import ReportContent, write_report
from hieros.report.records import DEFAULT_METRICS, EVAL_MODES, SCORE_KINDS, Problem, Sweep, latest_media
from hieros.report.scores import load_reference

FIGURES: tuple[str, ...] = (
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
)
"""Every figure a report can hold (file stem); each is skipped with a note when its data is missing."""


@dataclass
class Report:
    """What :func:`build_report` produced."""

    out: Path
    report: Path
    sweep: Sweep
    content: ReportContent
    figures: dict[str, list[Path]] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    logged_to: str | None = None


def default_out(source: str | Path) -> Path:
    """``<sweep>/report`` for a directory, ``<HIEROS_HOME or ./hieros-runs>/reports/<source>`` for MLflow."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve() / "report"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(source)).strip("_") or "mlflow"
    return Path(os.environ.get("HIEROS_HOME", "hieros-runs")).expanduser().resolve() / "reports" / safe


def etbs_counts(
    path: str | Path | None = None, size: int = 4000, seeds: int = 20, temperatures: Sequence[float] | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Per-item sampling counts for Figure 13: from a ``counts.json`` of ``python -m hieros.report.figure13`` if
    ``path`` is given (uniform, ETBS and the original rule at capacity 1e6, tau = 0.3, kept; the other curves of that
    file dropped to keep the figure readable), else simulated with :func:`hieros.report.figure13.simulate` (the same
    samplers). Returns (counts by sampler, where they came from)."""
    if path is not None:
        data = json.loads(Path(path).read_text())
        shown = ("uniform", "etbs tau=*", "etbs_original capacity=1e6 tau=0.3")
        chosen = {n: v for n, v in data["counts"].items() if any(fnmatch.fnmatchcase(n, p) for p in shown)}
        counts = chosen or data["counts"]
        return {name: np.asarray(values, dtype=np.float64) for name, values in counts.items()}, str(path)
    from hieros.report import figure13  # here: it imports the samplers
    from hieros.samplers.etbs import EfficientTimeBalanced
    from hieros.samplers.etbs_original import EfficientTimeBalancedOriginal
    from hieros.samplers.uniform import Uniform

    samplers: dict[str, Any] = {"uniform": Uniform()}
    for temperature in temperatures or figure13.TEMPERATURES:
        samplers[f"etbs tau={temperature}"] = EfficientTimeBalanced(temperature)
    samplers["etbs_original tau=0.3 (capacity 1e6)"] = EfficientTimeBalancedOriginal(0.3)
    counts = {name: figure13.simulate(sampler, size, seeds) for name, sampler in samplers.items()}
    return counts, f"simulated with hieros.report.figure13.simulate (size {size}, {seeds} seeds)"


def _find_counts(sweep: Sweep) -> Path | None:
    if sweep.kind != "directory":
        return None
    root = Path(sweep.source)
    for candidate in (root / "counts.json", root / "figure13" / "counts.json"):
        if candidate.is_file():
            return candidate
    return None


def build_report(
    source: str | Path,
    out: str | Path | None = None,
    score: str = "final_eval",
    mode: str = "sampled",
    reps: int = 50_000,
    seed: int = 0,
    tracking_uri: str | None = None,
    baseline: str | None = None,
    counts: str | Path | None = None,
    etbs_size: int = 4000,
    etbs_seeds: int = 20,
    reference_kind: str = "standard",
    log_to_mlflow: bool = True,
    all_sweeps: bool = False,
    metrics: Sequence[str] = DEFAULT_METRICS,
    formats: Sequence[str] = ("png", "svg"),
    only: Sequence[str] | None = None,
) -> Report:
    """Load SOURCE, compute the tables and figures, write them and ``report.md`` into ``out``; when the sweep has an
    MLflow parent run (an MLflow SOURCE, or a sweep directory's ``mlflow_parent.json``) also log ``out`` to it.
    Problems in the data are listed in the report, never raised."""
    if score not in SCORE_KINDS:
        raise ValueError(f"--score must be one of {', '.join(SCORE_KINDS)}, got {score!r}")
    if mode not in EVAL_MODES:
        raise ValueError(f"--mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    if reference_kind not in sc.REFERENCE_KINDS:
        raise ValueError(f"reference_kind must be one of {sc.REFERENCE_KINDS}, got {reference_kind!r}")
    if int(reps) < 1:
        raise ValueError(f"--reps must be >= 1, got {reps}")
    if not formats or any(f not in ("png", "svg", "pdf") for f in formats):
        raise ValueError(f"figure formats must be a non-empty subset of png, svg, pdf; got {list(formats)}")
    if only is not None and set(only) - set(FIGURES):
        raise ValueError(f"unknown figure(s) {sorted(set(only) - set(FIGURES))}; choose from {', '.join(FIGURES)}")
    sweep = load(source, tracking_uri=tracking_uri, metrics=metrics, baseline=baseline, all_sweeps=all_sweeps)
    out = Path(out).expanduser().resolve() if out is not None else default_out(source)
    out.mkdir(parents=True, exist_ok=True)
    reference = load_reference()
    problems = check_sweep(sweep, score, mode, reference)
    notes: list[str] = []

    def attempt(what: str, make: Callable[[], Any], fallback: Any = None) -> Any:
        try:
            return make()
        except Exception as error:  # noqa: BLE001 - one failing table or figure must not stop the report
            problems.append(Problem("report step failed", f"{what}: {type(error).__name__}: {error}"))
            return fallback

    import pandas as pd

    empty = pd.DataFrame()
    per_seed = tb.per_seed_table(sweep, reference, score, mode, reference_kind)
    normalisation = tb.choose_normalisation(per_seed)
    human = tb.normalised_scores(per_seed, "human")
    comparison = human if normalisation == "human" else tb.normalised_scores(per_seed, "minmax")
    variants = sweep.variants
    per_game = attempt("per-game table", lambda: tb.per_game_table(per_seed, reference), empty)
    aggregates = attempt("aggregates", lambda: tb.aggregate_table(human, variants, reps, seed), empty)
    comparison_aggregates = (
        aggregates
        if normalisation == "human"
        else attempt(
            "min-max aggregates",
            lambda: tb.aggregate_table(comparison, variants, reps, seed, normalisation="minmax"),
            empty,
        )
    )
    atari_games = [g for g in sweep.games if reference.lookup(g) is not None]
    published = tb.published_comparison(reference, atari_games)
    table1 = tb.table1_check_table(reference)
    improvement = attempt(
        "probability of improvement",
        lambda: tb.improvement_table(comparison, variants, sweep.baseline, reps, seed) if sweep.baseline else empty,
        empty,
    )
    frames = {
        "per_seed_scores": per_seed,
        "per_game_scores": per_game,
        "aggregates": aggregates,
        "published_comparison": published,
        "table1_check": table1,
        "probability_of_improvement": improvement,
        "variants": tb.variants_table(sweep),
    }
    if normalisation != "human":
        frames["aggregates_minmax"] = comparison_aggregates

    figures: dict[str, list[Path]] = {}
    wanted = set(FIGURES if only is None else only)

    def figure(name: str, make: Callable[[], Any]) -> None:
        if name not in wanted:
            return
        made = attempt(f"figure {name}", make)
        if made is not None:
            figures[name] = fg.save(made, out, name, formats)

    figure("reward_curves", lambda: fg.reward_curves(sweep, "episode/score"))
    for eval_mode in (mode, *(m for m in EVAL_MODES if m != mode)):  # the chosen policy's curve if it was logged
        if any(f"eval/{eval_mode}_score" in r.curves for r in sweep.records) and "eval_curves" not in figures:
            figure("eval_curves", lambda m=eval_mode: fg.reward_curves(sweep, f"eval/{m}_score"))
    figure("aggregate_intervals", lambda: fg.aggregate_intervals(comparison_aggregates, normalisation))
    figure(
        "performance_profiles",
        lambda: fg.performance_profiles(comparison, variants, min(reps, 2000), seed, normalisation),
    )
    figure("probability_of_improvement", lambda: fg.improvement_intervals(improvement))
    figure("partial_rewards", lambda: fg.partial_rewards(sweep))
    figure("world_model_losses", lambda: fg.world_model_losses(sweep))
    counts_path = counts or _find_counts(sweep)
    etbs = (
        attempt("ETBS counts", lambda: etbs_counts(counts_path, etbs_size, etbs_seeds))
        if "etbs_counts" in wanted
        else None
    )
    if etbs is not None:
        samplers = sorted(
            {
                f"{r.config.get('sampler.name')} tau={r.config.get('sampler.temperature')}"
                for r in sweep.records
                if r.config
            }
        )
        title = (
            f"Replay sampling counts (Figure 13), {etbs[1]}\nthis sweep's samplers: {', '.join(samplers) or 'unknown'}"
        )
        figure("etbs_counts", lambda: fg.etbs_counts(etbs[0], title=title))

    media: dict[str, Path] = {}
    known_problems = len(sweep.problems)
    for kind in ("imagination", "subgoals"):
        chosen = latest_media(sweep.select(sweep.baseline), kind) or latest_media(sweep.records, kind)
        if chosen is None:
            continue
        local = sweep.fetch_media(chosen, out / "media" / "download")
        if local is None:
            continue
        target = out / "media" / f"{kind}{Path(local).suffix.lower()}"
        if Path(local).resolve() != target.resolve():
            shutil.copyfile(local, target)
        media[kind] = target
        figure(f"{kind}_frames", lambda t=target, k=kind, n=chosen.name: fg.video_frames(t, title=f"{k}: {n}"))
    if only is not None:
        notes.append(f"Figures limited to: {', '.join(sorted(wanted))}.")
    shutil.rmtree(out / "media" / "download", ignore_errors=True)
    problems.extend(sweep.problems[known_problems:])  # media that could not be fetched

    tables: dict[str, Path] = {}
    for name, frame in frames.items():
        tables[name] = out / f"{name}.csv"
        frame.to_csv(tables[name], index=False)
    problem_frame = tb.problems_table(problems)
    tables["missing_data"] = out / "missing_data.csv"
    problem_frame.to_csv(tables["missing_data"], index=False)

    content = ReportContent(
        sweep=sweep,
        score=score,
        mode=mode,
        reps=reps,
        seed=seed,
        reference_kind=reference_kind,
        normalisation=normalisation,
        per_seed=per_seed,
        per_game=per_game,
        aggregates=aggregates,
        comparison_aggregates=comparison_aggregates,
        published=published,
        table1=table1,
        improvement=improvement,
        variants=frames["variants"],
        problems=problems,
        figures=figures,
        tables=tables,
        media=media,
        notes=notes,
    )
    report_path = write_report(content, out)
    report = Report(out, report_path, sweep, content, figures, tables, problems)
    if log_to_mlflow and (sweep.kind == "mlflow" or sweep.parent_run_id is not None):
        report.logged_to = _log_to_mlflow(sweep, out, problems)
        if report.logged_to is None:
            write_report(content, out)  # the report now lists why logging failed
    return report


def _log_to_mlflow(sweep: Sweep, out: Path, problems: list[Problem]) -> str | None:
    if sweep.parent_run_id is None:
        problems.append(Problem("not logged", "the MLflow source has no parent run to attach the report to"))
        return None
    from hieros.training.mlflow_store import sqlite_path

    database = sqlite_path(sweep.tracking_uri or "")
    if database is not None and not database.is_file():
        # a sweep directory copied away from its store: do not create an empty store at the old path
        problems.append(
            Problem("not logged", f"the sweep's MLflow store {sweep.tracking_uri} does not exist (moved or deleted)")
        )
        return None
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(sweep.tracking_uri).log_artifacts(sweep.parent_run_id, str(out), artifact_path="report")
        return sweep.parent_run_id
    except Exception as error:  # noqa: BLE001 - the files are written; logging is a bonus
        problems.append(Problem("not logged", f"logging the report to run {sweep.parent_run_id} failed: {error}"))
        return None
