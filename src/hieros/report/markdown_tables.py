"""The tables of ``report.md``: the DataFrames it shows (per-game scores with the reference and published ones,
human-normalised scores, per-seed scores, our aggregates next to the published ones), built from a
:class:`~hieros.report.markdown.ReportContent`, and their rendering as GitHub-flavoured Markdown."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from hieros.report import scores as sc

if TYPE_CHECKING:
    from hieros.report.markdown import ReportContent


def cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    if frame.empty:
        return "_(empty)_"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def interval_text(estimate: float, low: float, high: float) -> str:
    return f"{estimate:.1f} [{low:.1f}, {high:.1f}]"


def games_frame(content: ReportContent) -> pd.DataFrame:
    """Rows = games; per variant the mean score over seeds (n); then the reference and published scores."""
    per_game = content.per_game
    if per_game.empty:
        return per_game
    variants = [v for v in content.sweep.variants if (per_game["variant"] == v).any()]
    rows = []
    for game in sorted(per_game["game"].unique()):
        row: dict[str, Any] = {"game": game}
        block = per_game[per_game["game"] == game].set_index("variant")
        for variant in variants:
            if variant in block.index:
                entry = block.loc[variant]
                spread = f" ± {entry['std']:,.1f}" if not math.isnan(entry["std"]) else ""
                row[variant] = f"{entry['mean']:,.1f}{spread} (n={entry['seeds']})"
            else:
                row[variant] = "–"
        first = block.iloc[0]
        seeds = content.per_seed[content.per_seed["game"] == game]
        row["random"] = seeds["random"].iloc[0] if len(seeds) else math.nan
        row["human"] = seeds["human"].iloc[0] if len(seeds) else math.nan
        for method in reversed(sc.PUBLISHED_METHODS):
            row[f"{method} (paper)"] = first.get(f"published:{method}", math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    empty = [c for c in table.columns[1 + len(variants) :] if table[c].isna().all()]  # no reference/published value
    return table.drop(columns=empty)


def hns_frame(content: ReportContent) -> pd.DataFrame:
    per_game = content.per_game[content.per_game["hns_mean"].notna()]
    if per_game.empty:
        return per_game
    table = per_game.pivot_table(index="game", columns="variant", values="hns_mean", aggfunc="first") * 100.0
    ordered = [v for v in content.sweep.variants if v in table.columns]
    return table[ordered].reset_index()


def per_seed_frame(content: ReportContent) -> pd.DataFrame:
    frame = content.per_seed
    if frame.empty:
        return frame
    columns = ["variant", "game", "seed", "run", "status", "score", "hns"]
    shown = frame[columns].copy()
    shown["hns"] = shown["hns"] * 100.0
    return shown.rename(columns={"hns": "HNS %"})


def aggregate_frame(content: ReportContent) -> pd.DataFrame:
    """Our variants (estimate [95 % CI]) and the published methods side by side, in percent."""
    rows = []
    aggregates = content.aggregates
    for variant in dict.fromkeys(aggregates["variant"]) if not aggregates.empty else []:
        block = aggregates[aggregates["variant"] == variant].set_index("metric")
        row = {
            "method": f"this sweep: {variant}",
            "games": int(block["games"].iloc[0]),
            "runs": int(block["runs"].iloc[0]),
        }
        for metric in sc.METRICS:
            entry = block.loc[metric]
            row[sc.METRIC_TITLES[metric]] = interval_text(entry["estimate"], entry["ci_low"], entry["ci_high"])
        rows.append(row)
    published = content.published
    for method in reversed(sc.PUBLISHED_METHODS):
        block = published[published["method"] == method].set_index("metric")
        own = method == "HIEROS"  # the paper states 25 games x 3 seeds for itself; baselines are quoted
        row = {
            "method": f"{method} (published)",
            "games": 25 if own else "own set",
            "runs": "3 seeds/game" if own else "–",
        }
        for metric in sc.METRICS:
            row[sc.METRIC_TITLES[metric]] = cell(block.loc[metric, "published"], 0)
        rows.append(row)
    return pd.DataFrame(rows)


def subset_frame(content: ReportContent) -> pd.DataFrame | None:
    published = content.published
    if "recomputed_on_sweep_games" not in published.columns:
        return None
    rows = []
    for method in reversed(sc.PUBLISHED_METHODS):
        block = published[published["method"] == method].set_index("metric")
        row = {"method": method, "games": block["sweep_games"].iloc[0]}
        for metric in sc.METRICS:
            row[sc.METRIC_TITLES[metric]] = block.loc[metric, "recomputed_on_sweep_games"]
        rows.append(row)
    return pd.DataFrame(rows)
