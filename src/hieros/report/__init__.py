"""Results report: per-game tables, human-normalised aggregates with stratified-bootstrap CIs next to the paper's
published numbers, ablation and diagnostic figures, and a missing-data list, from a sweep directory or MLflow.

Usage::

    python -m hieros.report SOURCE [--out DIR] [--score final_eval|train_last10pct] [--mode sampled|greedy] [--reps N]
    hieros-report SOURCE ...

SOURCE is a Hydra sweep directory (no MLflow needed), an MLflow experiment name, or a parent run id (tracking URI:
``MLFLOW_TRACKING_URI`` or ``sqlite:///<HIEROS_HOME or ./hieros-runs>/mlflow.db``). The output folder holds PNG and
SVG figures, CSV tables and ``report.md``; it is also logged as artifacts (``report/``) of the sweep's MLflow parent
run: the SOURCE's parent run, or for a sweep directory the one its ``mlflow_parent.json`` names (``--no-mlflow-log``
skips this).

Modules, by job: :mod:`.cli` (the command line), :mod:`.builder` (:func:`build_report`), :mod:`.loading` with
:mod:`.loading_dirs` and :mod:`.loading_mlflow` (SOURCE -> records), :mod:`.records` (runs, sweep, problems),
:mod:`.flat_config` (configs as dotted-key dicts), :mod:`.variants` (variant labels, baseline), :mod:`.curves` (metric
curves), :mod:`.checks` (missing or partial data), :mod:`.scores` (statistics, reference scores), :mod:`.tables`,
:mod:`.figures`, :mod:`.figure13` (the replay sampling study of paper Figure 13), :mod:`.markdown` with
:mod:`.markdown_tables` (``report.md``).
"""

from __future__ import annotations

from hieros.report.builder import FIGURES, Report, build_report, etbs_counts
from hieros.report.loading import load
from hieros.report.loading_dirs import latest_sweep
from hieros.report.scores import Interval, interval_estimates, load_reference, point_estimates

__all__ = [
    "FIGURES",
    "Interval",
    "Report",
    "build_report",
    "etbs_counts",
    "interval_estimates",
    "latest_sweep",
    "load",
    "load_reference",
    "point_estimates",
]
