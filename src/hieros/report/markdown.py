"""``report.md``: one Markdown file that states which score it used and shows the tables, figures, notes and the
missing-or-partial-data list of a report. Its sections are written here; the tables they show are built and rendered
in :mod:`hieros.report.markdown_tables`."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hieros.report import scores as sc
from hieros.report.markdown_tables import (
    aggregate_frame,
    games_frame,
    hns_frame,
    markdown_table,
    per_seed_frame,
    subset_frame,
)
from hieros.report.records import Problem, Sweep

SCORE_DESCRIPTIONS: Mapping[str, str] = {
    "final_eval": (
        "final evaluation: per run, the mean return of the final evaluation episodes with the **{mode}** policy "
        "(`scores.json` -> `final_eval.{mode}.mean`)"
    ),
    "train_last10pct": (
        "last 10% of training: per run, the mean return of the training episodes that ended in the last 10% of the "
        "agent steps (`scores.json` -> `train_return_last10pct`)"
    ),
}

TABLE1_NOTE = (
    "Feeding the paper's own per-game HIEROS scores (Appendix C, Table 2) through these metrics reproduces its "
    "Table 1 mean ({mean:.0f}) and median ({median:.0f}). IQM and optimality gap come out at {iqm:.0f} and {og:.0f} "
    "instead of the published 53 and 49: the paper pools the per-seed scores of its 3 runs per game, which it does "
    "not publish, while only the 25 per-game means are available here. The published IQM and optimality gap are "
    "therefore not reproducible from the paper's tables, and the recomputed values are shown next to them, not "
    "passed off as a match."
)


@dataclass
class ReportContent:
    """Everything ``report.md`` shows; built by :func:`hieros.report.build_report`."""

    sweep: Sweep
    score: str
    mode: str
    reps: int
    seed: int
    reference_kind: str
    normalisation: str
    per_seed: pd.DataFrame
    per_game: pd.DataFrame
    aggregates: pd.DataFrame
    comparison_aggregates: pd.DataFrame
    published: pd.DataFrame
    table1: pd.DataFrame
    improvement: pd.DataFrame
    variants: pd.DataFrame
    problems: Sequence[Problem]
    figures: Mapping[str, Sequence[Path]] = field(default_factory=dict)
    tables: Mapping[str, Path] = field(default_factory=dict)
    media: Mapping[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _figure(content: ReportContent, name: str, caption: str, out: Path) -> str:
    paths = content.figures.get(name)
    if not paths:
        return f"_{caption}: not produced (no data; see the missing-data section)._\n"
    png = Path(paths[0]).relative_to(out)
    svg = [Path(p).relative_to(out) for p in paths if str(p).endswith(".svg")]
    link = f" ([SVG]({svg[0].as_posix()}))" if svg else ""
    return f"![{caption}]({png.as_posix()})\n\n*{caption}*{link}\n"


def _problems_section(problems: Sequence[Problem]) -> list[str]:
    lines = ["## Missing or partial data", ""]
    if not problems:
        lines.append(
            "None: every job finished with the chosen score, every variant has every game and seed, and every game "
            "has human reference scores."
        )
        return lines
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    lines.append(
        "Nothing was dropped silently. Runs without the chosen score are listed here and left out of the "
        "statistics; their curves (if any) still appear in the figures."
    )
    lines.append("")
    lines.append("; ".join(f"**{kind}**: {count}" for kind, count in counts.items()))
    lines.append("")
    frame = pd.DataFrame(
        [
            {"kind": p.kind, "variant": p.variant, "game": p.game, "seed": p.seed, "run": p.run, "detail": p.detail}
            for p in problems
        ],
        dtype=object,
    )
    lines.append(markdown_table(frame))
    return lines


def _header(content: ReportContent, out: Path) -> list[str]:
    sweep = content.sweep
    finished = sum(record.status == "finished" for record in sweep.records)
    seeds = sorted({r.seed for r in sweep.records if r.seed is not None})
    source = (
        f"MLflow `{sweep.source}` ({sweep.tracking_uri}; parent run `{sweep.parent_run_id}`)"
        if sweep.kind == "mlflow"
        else f"sweep directory `{sweep.source}`"
    )
    description = SCORE_DESCRIPTIONS[content.score].format(mode=content.mode)
    normalisation = (
        f"human-normalised with the {content.reference_kind} random/human reference scores "
        "(`hieros/data/atari100k_reference.json`)"
        if content.normalisation == "human"
        else "min-max normalised per game over all runs of the sweep (some games have no human reference scores)"
    )
    lines = [
        "# HIEROS results report",
        "",
        f"- **Source:** {source}",
        f"- **Generated:** {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- **Score used:** {description}.",
        f"- **Runs:** {len(sweep.records)} loaded, {finished} finished; {len(sweep.variants)} variant(s), "
        f"{len(sweep.games)} game(s), seeds {', '.join(map(str, seeds)) or '–'}.",
        f"- **Statistics:** {normalisation}; mean, median, IQM and optimality gap (γ = 1) in percent with 95 % "
        f"stratified-bootstrap percentile intervals (rliable's scheme, {content.reps} replicates, seed {content.seed}).",
        "",
    ]
    for note in [*sweep.notes, *content.notes]:
        lines += [f"> {note}", ""]
    return lines


def _variants(content: ReportContent, out: Path) -> list[str]:
    sweep = content.sweep
    keys = ", ".join(f"`{k}`" for k in sweep.variant_keys) or "none (a single configuration)"
    return [
        "## Variants",
        "",
        f"Config keys that differ between runs of the same game: {keys}. Baseline for comparisons: "
        f"**{sweep.baseline}**.",
        "",
        markdown_table(content.variants),
        "",
    ]


def _scores(content: ReportContent, out: Path) -> list[str]:
    lines = [
        "## Per-game scores (cf. paper Table 2)",
        "",
        "Mean ± standard deviation over seeds (n = seeds with the chosen score), with the reference scores and the "
        "per-game scores published in the paper's Appendix C.",
        "",
    ]
    if content.per_game.empty:
        lines += ["_No run has the chosen score (see the missing-data section)._", ""]
    else:
        lines += [markdown_table(games_frame(content)), ""]
    lines += ["### Per seed", "", markdown_table(per_seed_frame(content)), "", "### Human-normalised scores (%)", ""]
    hns = hns_frame(content) if "hns_mean" in content.per_game.columns else pd.DataFrame()
    lines += [markdown_table(hns) if not hns.empty else "_No game with human reference scores has a score._", ""]
    return lines


def _aggregates(content: ReportContent, out: Path) -> list[str]:
    lines = ["## Aggregates (cf. paper Table 1)", ""]
    if content.aggregates.empty:
        lines += [
            "_No aggregate over human-normalised scores: no run of a game with reference scores has the chosen score._",
            "",
        ]
    lines += [
        "Estimates with 95 % CIs in brackets; published values from the paper's Table 1 (HIEROS: 25 games, 3 seeds "
        "each; the baselines' aggregates are quoted from their own papers; DreamerV3 published no IQM or optimality "
        "gap).",
        "",
        markdown_table(aggregate_frame(content)),
        "",
    ]
    if not content.aggregates.empty:
        games = int(content.aggregates["games"].max())
        if games < 25:
            lines += [
                f"> This sweep covers {games} game(s), the published aggregates 25 or more: the numbers are not "
                "comparable. For reference, the published per-game means of each method recomputed on this sweep's "
                "games (one value per game):",
                "",
            ]
            subset = subset_frame(content)
            if subset is not None:
                lines += [markdown_table(subset), ""]
    check = content.table1.set_index("row")
    recomputed = check.loc["recomputed (standard reference)"]
    renamed = content.table1.rename(columns={k: sc.METRIC_TITLES.get(k, k) for k in content.table1.columns})
    note = TABLE1_NOTE.format(
        mean=recomputed["mean"], median=recomputed["median"], iqm=recomputed["iqm"], og=recomputed["optimality_gap"]
    )
    return lines + [
        "### Check: the paper's Table 1 from its own per-game scores",
        "",
        markdown_table(renamed),
        "",
        "> " + note,
        "",
        "> The baselines' published aggregates cannot be recomputed from the shipped per-game scores either: their "
        "papers aggregate over their own game sets and seeds (see `published_comparison.csv`).",
        "",
    ]


def _ablations(content: ReportContent, out: Path) -> list[str]:
    sweep = content.sweep
    lines = [
        "## Ablations (cf. paper Figures 6-12)",
        "",
        _figure(
            content,
            "reward_curves",
            "Training episode score per agent step, one panel per game; line = mean over seeds, band = min-max",
            out,
        ),
        "",
    ]
    if "eval_curves" in content.figures:
        lines += [_figure(content, "eval_curves", "Periodic evaluation score per agent step", out), ""]
    if not content.comparison_aggregates.empty and content.normalisation != "human":
        columns = ["variant", "metric", "estimate", "ci_low", "ci_high", "games", "runs"]
        lines += [
            "Aggregates of the min-max normalised scores (for comparing variants only):",
            "",
            markdown_table(content.comparison_aggregates[columns]),
            "",
        ]
    lines += [
        _figure(content, "aggregate_intervals", "Aggregate metrics per variant with 95 % CIs", out),
        "",
        _figure(content, "performance_profiles", "Performance profiles (score distributions) with 95 % CIs", out),
        "",
    ]
    if not content.improvement.empty:
        caption = f"Probability of improvement over the baseline ({sweep.baseline}) with 95 % CIs"
        lines += [
            _figure(content, "probability_of_improvement", caption, out),
            "",
            markdown_table(content.improvement, 3),
            "",
        ]
    else:
        lines += ["_Probability of improvement: needs at least two variants with scores on a shared game._", ""]
    return lines


def _diagnostics(content: ReportContent, out: Path) -> list[str]:
    sweep = content.sweep
    lines = [
        "## Diagnostics",
        "",
        _figure(
            content,
            "partial_rewards",
            f"Imagined extrinsic, subgoal and novelty rewards per level (paper Figure 3; {sweep.baseline})",
            out,
        ),
        "",
        _figure(content, "world_model_losses", "World-model losses of level 0 per variant (paper Figure 4)", out),
        "",
        _figure(content, "etbs_counts", "Replay sampling counts per item age (paper Figure 13)", out),
        "",
    ]
    for kind, caption in (
        ("imagination", "Open-loop imagination video (paper Figure 2)"),
        ("subgoals", "Decoded subgoals (paper Figure 5)"),
    ):
        path = content.media.get(kind)
        if path is None:
            lines += [f"_{caption}: no video found in the runs._", ""]
            continue
        relative = Path(path).relative_to(out).as_posix()
        embed = f"![{caption}]({relative})" if relative.endswith(".gif") else f"[{caption}]({relative})"
        lines += [embed, "", f"*{caption}: `{Path(path).name}`*", ""]
        if f"{kind}_frames" in content.figures:
            lines += [_figure(content, f"{kind}_frames", f"{caption}, frames", out), ""]
    return lines


def _files(content: ReportContent, out: Path) -> list[str]:
    lines = ["", "## Files", ""]
    lines += [f"- `{Path(p).relative_to(out).as_posix()}`" for p in content.tables.values()]
    lines += [f"- `{Path(p).relative_to(out).as_posix()}`" for paths in content.figures.values() for p in paths]
    return lines


def write_report(content: ReportContent, out: str | Path) -> Path:
    """Write ``out``/report.md and return its path. A section that fails is replaced by a notice and listed as a
    problem; the rest of the report is still written."""
    out = Path(out)
    problems = list(content.problems)
    lines: list[str] = []
    for section in (_header, _variants, _scores, _aggregates, _ablations, _diagnostics):
        try:
            lines += section(content, out)
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the report
            name = section.__name__.strip("_")
            lines += [f"_Section {name!r} could not be written: {type(error).__name__}: {error}_", ""]
            problems.append(Problem("report step failed", f"section {name}: {type(error).__name__}: {error}"))
    lines += _problems_section(problems)
    lines += _files(content, out)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
