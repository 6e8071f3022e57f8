"""The report's figures, drawn with matplotlib's object API (no pyplot, no GUI backend; PNG and SVG via Agg).

- :func:`reward_curves`: reward per step, one panel per game, one line per variant (mean over seeds, min-max band),
  in the style of the paper's ablation Figures 6-12 (default variant red, ablation blue).
- :func:`aggregate_intervals`, :func:`performance_profiles`, :func:`improvement_intervals`: rliable-style plots.
- :func:`partial_rewards` (Fig. 3), :func:`world_model_losses` (Fig. 4), :func:`etbs_counts` (Fig. 13),
  :func:`video_frames` (stills of the imagination / subgoal videos, Figs. 2 and 5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hieros.report import scores as sc
from hieros.report.curves import curve_matrix
from hieros.report.records import RunRecord, Sweep

WORLD_MODEL_LOSSES: tuple[str, ...] = ("model_loss", "image_loss", "vector_loss", "reward_loss", "dyn_loss")
"""Loss terms drawn when logged (image_loss for pixels, vector_loss for vector observations; ``cont_loss`` and
``rep_loss`` can be asked for, rep_loss equals dyn_loss in value)."""
REWARD_TERMS: tuple[str, ...] = ("extrinsic", "subgoal", "novelty")
_TERM_COLOURS = {"extrinsic": "tab:green", "subgoal": "tab:orange", "novelty": "tab:purple"}


def variant_colours(variants: Sequence[str]) -> dict[str, str]:
    """The paper's scheme: default (first) variant red, the ablation blue; more variants get the tab10 cycle."""
    if len(variants) <= 2:
        return dict(zip(variants, ("tab:red", "tab:blue")))
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]
    return {
        variant: palette[i % len(palette)] if i < len(palette) else f"C{i % 10}" for i, variant in enumerate(variants)
    }


def save(figure: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``name``.<format> into ``out_dir`` for each format (PNG at 120 dpi)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        path = out_dir / f"{name}.{extension}"
        figure.savefig(path, dpi=120 if extension == "png" else "figure")
        paths.append(path)
    return paths


def to_png(figure: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of ``figure`` (for ``IPython.display.Image`` in notebooks, whatever the matplotlib backend)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _grid(count: int, columns: int = 4, width: float = 4.0, height: float = 3.0) -> tuple[Figure, np.ndarray]:
    columns = max(1, min(columns, count))
    rows = int(np.ceil(count / columns))
    figure = Figure(figsize=(max(width * columns, 5.5), height * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, axes


def _band(axis, records: Sequence[RunRecord], metric: str, colour: str, label: str, grid=None) -> bool:
    """Mean over runs with a min-max band; False when no run has the metric."""
    grid, values = curve_matrix(records, metric, grid)
    if values.size == 0 or np.all(np.isnan(values)):
        return False
    seen = ~np.all(np.isnan(values), axis=0)
    mean = np.full(grid.size, np.nan)
    low, high = mean.copy(), mean.copy()
    mean[seen] = np.nanmean(values[:, seen], axis=0)
    low[seen], high[seen] = np.nanmin(values[:, seen], axis=0), np.nanmax(values[:, seen], axis=0)
    runs = values.shape[0]
    marker = "o" if seen.sum() <= 2 else None  # a run cut short after one or two reports is still visible
    name = f"{label} ({runs} run{'s' if runs != 1 else ''})"
    axis.plot(grid, mean, color=colour, label=name, linewidth=1.5, marker=marker, markersize=4)
    axis.fill_between(grid, low, high, color=colour, alpha=0.2, linewidth=0)
    return True


def _legend(axes: np.ndarray, empty_note: str = "no data") -> None:
    """One legend of every labelled line of ``axes`` (on the first panel), and ``empty_note`` on panels with none:
    a panel without data (e.g. a game where no episode ended) must not hide the legend or look like a zero line."""
    handles: dict[str, object] = {}
    for axis in np.ravel(axes):
        lines, labels = axis.get_legend_handles_labels()
        if not lines and axis.get_visible():
            axis.text(0.5, 0.5, empty_note, transform=axis.transAxes, ha="center", va="center", color="grey")
        for line, label in zip(lines, labels):
            handles.setdefault(label, line)  # the first panel's line of each label
    if handles:
        np.ravel(axes)[0].legend(list(handles.values()), list(handles), fontsize=7)


def _step_label(sweep: Sweep) -> str:
    repeats = {record.config.get("env.action_repeat") for record in sweep.records if record.config}
    repeats.discard(None)
    if len(repeats) == 1:
        return f"agent steps (x{repeats.pop()} = environment frames)"
    return "agent steps"


def reward_curves(
    sweep: Sweep,
    metric: str = "episode/score",
    variants: Sequence[str] | None = None,
    games: Sequence[str] | None = None,
) -> Figure | None:
    """Paper Figs. 6-12: ``metric`` per agent step, one panel per game, a line (mean over seeds) and a shaded min-max
    band per variant. None when no run logged ``metric``."""
    variants = list(variants or sweep.variants)
    games = list(games or sweep.games)
    if not games:
        return None
    colours = variant_colours(variants)
    figure, axes = _grid(len(games))
    drawn = False
    for axis, game in zip(axes, games):
        for variant in variants:
            drawn |= _band(axis, sweep.select(variant, game), metric, colours[variant], variant)
        axis.set_title(game)
        axis.set_xlabel(_step_label(sweep))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    if not drawn:
        return None
    _legend(axes[: len(games)], empty_note=f"no {metric} logged")
    figure.suptitle(f"{metric} (line: mean over seeds; band: min-max)", fontsize=10)
    return figure


def aggregate_intervals(aggregates: pd.DataFrame, normalisation: str = "human") -> Figure | None:
    """Point estimates and 95 % CIs of mean, median, IQM and optimality gap per variant (rliable style)."""
    if aggregates.empty:
        return None
    variants = list(dict.fromkeys(aggregates["variant"]))
    colours = variant_colours(variants)
    figure = Figure(figsize=(12, 0.6 * len(variants) + 1.6), layout="constrained")
    axes = figure.subplots(1, len(sc.METRICS), sharey=True)
    for axis, metric in zip(np.atleast_1d(axes), sc.METRICS):
        rows = aggregates[aggregates["metric"] == metric].set_index("variant")
        for position, variant in enumerate(variants):
            if variant not in rows.index:
                continue
            row = rows.loc[variant]
            axis.barh(
                position,
                row["ci_high"] - row["ci_low"],
                left=row["ci_low"],
                height=0.6,
                color=colours[variant],
                alpha=0.6,
            )
            axis.vlines(row["estimate"], position - 0.3, position + 0.3, color="black", linewidth=1.5)
        axis.set_title(sc.METRIC_TITLES[metric])
        axis.set_yticks(range(len(variants)), variants, fontsize=8)
        axis.set_ylim(len(variants) - 0.5, -0.5)  # first variant (the baseline) on top
        axis.grid(axis="x", alpha=0.3)
    unit = "human-normalised score (%)" if normalisation == "human" else "min-max normalised score (%)"
    figure.supxlabel(unit)
    return figure


def performance_profiles(
    normalised: pd.DataFrame, variants: Sequence[str], reps: int = 2_000, seed: int = 0, normalisation: str = "human"
) -> Figure | None:
    """Score distributions: fraction of runs with normalised score > tau, with 95 % CIs, per variant."""
    from hieros.report.tables import per_game_by_variant

    variants = [v for v in variants if (normalised["variant"] == v).any()]
    if not variants:
        return None
    top = float(np.nanmax(normalised["norm"])) if len(normalised) else 1.0
    taus = np.linspace(0.0, max(1.0, top) * 1.05, 101)
    colours = variant_colours(variants)
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for variant in variants:
        per_game = per_game_by_variant(normalised, variant)
        profile, low, high = sc.performance_profile(list(per_game.values()), taus, reps=reps, seed=seed)
        axis.plot(taus, profile, color=colours[variant], label=variant, linewidth=1.5)
        axis.fill_between(taus, low, high, color=colours[variant], alpha=0.2, linewidth=0)
    name = "human-normalised score" if normalisation == "human" else "min-max normalised score"
    axis.set_xlabel(f"{name} (tau)")
    axis.set_ylabel("fraction of runs with score > tau")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return figure


def improvement_intervals(improvement: pd.DataFrame) -> Figure | None:
    """P(variant > baseline) with 95 % CIs."""
    if improvement.empty:
        return None
    figure = Figure(figsize=(6, 0.6 * len(improvement) + 1.4), layout="constrained")
    axis = figure.subplots()
    axis.set_ylim(len(improvement) - 0.5, -0.5)
    for position, row in enumerate(improvement.itertuples()):
        axis.barh(position, row.ci_high - row.ci_low, left=row.ci_low, height=0.6, color="tab:blue", alpha=0.5)
        axis.vlines(row.probability_of_improvement, position - 0.3, position + 0.3, color="black", linewidth=1.5)
    axis.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    axis.set_yticks(
        range(len(improvement)),
        [f"P({v} > {b})" for v, b in zip(improvement.variant, improvement.baseline)],
        fontsize=8,
    )
    axis.set_xlim(0, 1)
    axis.set_xlabel("probability of improvement")
    axis.grid(axis="x", alpha=0.3)
    return figure


def _levels(records: Sequence[RunRecord], suffix: str) -> list[int]:
    pattern = re.compile(rf"train/level(\d+)/{suffix}$")
    return sorted({int(m.group(1)) for r in records for name in r.curves if (m := pattern.match(name))})


def partial_rewards(sweep: Sweep, variant: str | None = None, games: Sequence[str] | None = None) -> Figure | None:
    """Paper Fig. 3: mean imagined extrinsic, subgoal and novelty rewards per level (columns) and game (rows)."""
    variant = variant or sweep.baseline
    games = list(games or sweep.games)
    records = sweep.select(variant)
    levels = _levels(records, r"imag_\w+_reward")
    if not games or not levels:
        return None
    figure = Figure(figsize=(4.2 * len(levels), 2.8 * len(games)), layout="constrained")
    axes = figure.subplots(len(games), len(levels), squeeze=False)
    drawn = False
    for row, game in enumerate(games):
        runs = sweep.select(variant, game)
        for column, level in enumerate(levels):
            axis = axes[row, column]
            for term in REWARD_TERMS:
                drawn |= _band(axis, runs, f"train/level{level}/imag_{term}_reward", _TERM_COLOURS[term], term)
            axis.set_title(f"{game}, level {level}", fontsize=9)
            axis.grid(alpha=0.3)
            if column == 0:
                axis.set_ylabel("mean reward per imagined step")
    if not drawn:
        return None
    _legend(axes)
    figure.supxlabel(_step_label(sweep))
    figure.suptitle(f"Partial rewards per level ({variant})")
    return figure


def world_model_losses(
    sweep: Sweep, level: int = 0, games: Sequence[str] | None = None, losses: Sequence[str] = WORLD_MODEL_LOSSES
) -> Figure | None:
    """Paper Fig. 4: world-model losses of level ``level`` per game (rows) and term (columns), one line per variant."""
    games = list(games or sweep.games)
    present = [loss for loss in losses if any(f"train/level{level}/{loss}" in r.curves for r in sweep.records)]
    if not games or not present:
        return None
    colours = variant_colours(sweep.variants)
    figure = Figure(figsize=(3.6 * len(present), 2.8 * len(games)), layout="constrained")
    axes = figure.subplots(len(games), len(present), squeeze=False)
    for row, game in enumerate(games):
        for column, loss in enumerate(present):
            axis = axes[row, column]
            for variant in sweep.variants:
                _band(axis, sweep.select(variant, game), f"train/level{level}/{loss}", colours[variant], variant)
            axis.set_title(f"{game}: {loss}", fontsize=9)
            axis.grid(alpha=0.3)
    _legend(axes)
    figure.supxlabel(_step_label(sweep))
    figure.suptitle(f"World-model losses, level {level}")
    return figure


def etbs_counts(counts: Mapping[str, np.ndarray], title: str = "", radius: int = 100) -> Figure | None:
    """Paper Fig. 13: how often each replay item was drawn (oldest first), ±``radius`` moving average."""
    if not counts:
        return None
    from hieros.report.figure13 import smooth

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axis = figure.subplots()
    etbs = [name for name in counts if name != "uniform"]
    for index, name in enumerate(etbs):
        style = "--" if "original" in name else "-"
        axis.plot(smooth(np.asarray(counts[name]), radius), style, color=f"C{index % 10}", label=name, linewidth=1.2)
    if "uniform" in counts:
        axis.plot(smooth(np.asarray(counts["uniform"]), radius), color="black", label="uniform", linewidth=1.5)
    axis.set_xlabel("item index (0 = oldest)")
    axis.set_ylabel(f"times sampled (±{radius}-item moving average)")
    axis.set_title(title or "Replay sampling counts: add one item, draw one (Figure 13)", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return figure


def video_frames(path: str | Path, frames: int = 8, title: str = "") -> Figure | None:
    """Evenly spaced frames of a GIF/MP4 side by side (stills of Figs. 2 and 5); None if it cannot be read."""
    try:
        import imageio.v3 as iio

        video = np.asarray(iio.imread(path, index=None))
    except Exception:  # noqa: BLE001 - unreadable media only loses this still
        return None
    if video.ndim == 3:  # one frame, or grey frames (n, h, w)
        video = video[None] if video.shape[-1] in (3, 4) else video[..., None]
    chosen = np.unique(np.linspace(0, len(video) - 1, min(frames, len(video))).round().astype(int))
    height, width = video.shape[1:3]
    figure = Figure(figsize=(1.8 * len(chosen), 1.8 * height / max(width, 1) + 0.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(chosen)))
    for axis, index in zip(axes, chosen):
        frame = video[index]
        axis.imshow(frame.squeeze(-1) if frame.shape[-1] == 1 else frame, cmap="gray" if frame.shape[-1] == 1 else None)
        axis.set_title(f"frame {index}", fontsize=7)
        axis.axis("off")
    figure.suptitle(title or Path(path).name, fontsize=9)
    return figure
