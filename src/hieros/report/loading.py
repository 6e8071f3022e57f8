"""Loading a report's SOURCE: a Hydra sweep directory or an MLflow experiment / parent run -> one
:class:`~hieros.report.records.RunRecord` per training job, grouped into variants.

Both sources give the same records: the flattened config (dotted keys), game, seed, the content of ``scores.json``,
metric curves on the agent-step axis (named as in ``metrics.jsonl``), and the run's media (imagination and subgoal
videos). Anything missing or unreadable becomes a :class:`~hieros.report.records.Problem` on the
:class:`~hieros.report.records.Sweep`; a loader never drops a run silently and never raises for bad run data (only
for a SOURCE that does not exist). The two loaders are :mod:`hieros.report.loading_dirs` (directory layout there)
and :mod:`hieros.report.loading_mlflow` (the MLflow mirror there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hieros.report.flat_config import package_defaults
from hieros.report.loading_dirs import load_sweep_dir
from hieros.report.loading_mlflow import load_mlflow
from hieros.report.records import DEFAULT_METRICS, Sweep
from hieros.report.variants import assign_variants


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
    if not sweep.records:
        raise ValueError(
            f"no runs found in {source}: pass a sweep directory (job folders with scores.json or metrics.jsonl), a run "
            f"directory, an MLflow experiment name or a parent run id"
        )
    experiments = {record.config.get("experiment_name") for record in sweep.records if record.config}
    experiment = next(iter(experiments)) if len(experiments) == 1 else None
    defaults = sweep.master_config or (lambda: package_defaults(experiment))
    assign_variants(sweep, baseline=baseline, defaults=defaults)
    return sweep
