"""Metric curves on the agent-step axis: which metrics are loaded (fnmatch patterns), reading ``metrics.jsonl``, and
putting the curves of several runs on one step grid (:func:`curve_matrix`, for the figures)."""

from __future__ import annotations

import fnmatch
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hieros.report.records import DEFAULT_METRICS, Curve, RunRecord

RESERVED_METRIC_KEYS: tuple[str, ...] = ("step", "time")
"""Keys of a metrics.jsonl line that are not metrics (agent step, wall-clock time)."""


def wanted_metric(name: str, patterns: Sequence[str]) -> bool:
    """Whether the metric ``name`` matches one of the fnmatch ``patterns``."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


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
                if name not in RESERVED_METRIC_KEYS and numeric and wanted_metric(name, patterns):
                    points[name].append((step, float(value)))
    return {name: curve_from_points(values) for name, values in points.items()}, problems


def curve_from_points(points: Sequence[tuple[float, float]]) -> Curve:
    """(step, value) pairs -> :class:`Curve` sorted by step (stable: equal steps keep their logged order)."""
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    order = np.argsort(array[:, 0], kind="stable")
    return Curve(array[order, 0], array[order, 1])


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
