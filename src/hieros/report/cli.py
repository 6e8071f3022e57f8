"""``hieros-report`` / ``python -m hieros.report``: the command line of :func:`hieros.report.builder.build_report`.

Usage::

    python -m hieros.report SOURCE [--out DIR] [--score final_eval|train_last10pct] [--mode sampled|greedy] [--reps N]
    hieros-report SOURCE ...

See :mod:`hieros.report` for what SOURCE can be and what the output folder holds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hieros.arguments import ArgumentParser
from hieros.report import scores as sc
from hieros.report.builder import FIGURES, build_report
from hieros.report.loading_mlflow import default_tracking_uri
from hieros.report.records import EVAL_MODES, SCORE_KINDS


def main(argv: Sequence[str] | None = None) -> int:
    """``hieros-report`` / ``python -m hieros.report``."""
    parser = ArgumentParser(
        prog="hieros-report",
        description="Tables, figures and report.md (with rliable-style statistics) from a sweep directory or MLflow.",
    )
    parser.add_argument("source", help="sweep directory, MLflow experiment name, or MLflow (parent) run id")
    parser.add_argument("--out", help="output folder (default: <sweep>/report, or $HIEROS_HOME/reports/<source>)")
    parser.add_argument("--score", choices=SCORE_KINDS, default="final_eval", help="which score of scores.json")
    parser.add_argument("--mode", choices=EVAL_MODES, default="sampled", help="policy of the final evaluation")
    parser.add_argument("--reps", type=int, default=50_000, help="bootstrap replicates for the CIs (default 50000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--baseline", help="baseline variant: its label or key=value[,key=value]")
    parser.add_argument("--tracking-uri", help=f"MLflow tracking URI (default {default_tracking_uri()})")
    parser.add_argument("--counts", help="counts.json of `python -m hieros.report.figure13` for Figure 13")
    parser.add_argument("--reference", choices=sc.REFERENCE_KINDS, default="standard", help="random/human table")
    parser.add_argument("--all-sweeps", action="store_true", help="MLflow experiment: pool all its sweeps")
    parser.add_argument("--no-mlflow-log", action="store_true", help="do not log the report to the parent run")
    parser.add_argument("--formats", default="png,svg", help="figure formats, comma-separated (png,svg,pdf)")
    parser.add_argument("--figures", help=f"only these figures, comma-separated (default: all of {', '.join(FIGURES)})")
    parser.add_argument("--etbs-size", type=int, default=4000, help="replay size of the Figure-13 simulation")
    parser.add_argument("--etbs-seeds", type=int, default=20, help="seeds of the Figure-13 simulation")
    args = parser.parse_args(argv)
    try:
        report = build_report(
            args.source,
            out=args.out,
            score=args.score,
            mode=args.mode,
            reps=args.reps,
            seed=args.seed,
            tracking_uri=args.tracking_uri,
            baseline=args.baseline,
            counts=args.counts,
            etbs_size=args.etbs_size,
            etbs_seeds=args.etbs_seeds,
            reference_kind=args.reference,
            log_to_mlflow=not args.no_mlflow_log,
            all_sweeps=args.all_sweeps,
            formats=[f.strip() for f in args.formats.split(",") if f.strip()],
            only=[f.strip() for f in args.figures.split(",") if f.strip()] if args.figures else None,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"hieros-report: {error}", file=sys.stderr)
        return 2
    print(f"wrote {report.report} ({len(report.figures)} figures, {len(report.tables)} tables)")
    if report.problems:
        print(f"{len(report.problems)} missing/partial-data item(s) listed in the report")
    if report.logged_to:
        print(f"logged to MLflow run {report.logged_to} (artifacts: report/)")
    return 0
