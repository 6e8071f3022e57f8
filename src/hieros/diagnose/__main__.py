"""``hieros-diagnose RUN_DIR`` / ``python -m hieros.diagnose RUN_DIR``: world-model diagnostics of a training run.

Loads the run's newest checkpoint, opens each level's replay read-only and prints, per level with its own world model:
open-loop prediction error against the horizon (next to copying the last frame), the share of steps under the free
bits, how much one prior step depends on the action, and (level 0) how far the state acting reads drifts from the
state training sees, by position in the episode. Writes every number to
``RUN_DIR/diagnostics/diagnostics_step<N>.json`` (``--out``) and logs the figures as metrics ``diagnose/level<i>/...``
at the checkpoint's step, plus the JSON as an artifact, into the run's MLflow run (``--no-mlflow`` skips it; an
unreachable store is a warning). Exit code 2 when the run directory, its checkpoints or its replay are missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hieros.arguments import ArgumentParser
from hieros.files import write_json_atomic

PROG = "hieros-diagnose"
PLAIN_WIDTH = 160  # console width when stdout is not a terminal (pipes, CI logs)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog=PROG,
        description="World-model diagnostics of a training run: open-loop error, free bits, action sensitivity, "
        "acting-vs-window state gap. Reads RUN_DIR/checkpoints and RUN_DIR/replay; writes a JSON report.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (hydra.run.dir of the training run)")
    parser.add_argument("--windows", type=int, default=32, help="replay windows per level (default 32)")
    parser.add_argument("--context", type=int, default=8, help="posterior steps before the open loop (default 8)")
    parser.add_argument("--horizon", type=int, default=16, help="open-loop steps, at most batch_length - context")
    parser.add_argument("--episodes", type=int, default=5, help="longest complete episodes for the state gap")
    parser.add_argument("--states", type=int, default=256, help="start states of the action sensitivity")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window choice and the subgoal codes")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default RUN_DIR/diagnostics/...)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to the run's MLflow run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="default cpu")
    args = parser.parse_args(argv)
    for name in ("windows", "context", "horizon", "episodes", "states"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    return args


# ----------------------------------------------------------------------------------------------- tables
def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def open_loop_table(name: str, loop: Mapping[str, Any]) -> Table:
    keys = list(loop["obs"])
    table = Table(
        title=f"{name}: open-loop prediction, {loop['windows']} windows, {loop['context']} context steps "
        f"(h=0: posterior reconstruction; 'windows': those without an episode start up to h)",
    )
    table.add_column("h", justify="right")
    table.add_column("windows", justify="right")
    for key in keys:
        table.add_column(f"{key} mse", justify="right")
        table.add_column(f"{key} copy-last mse", justify="right")
    table.add_column("reward |err|", justify="right")
    table.add_column("cont |err|", justify="right")
    posterior = loop["posterior"]
    row = ["0", str(loop["windows"])]
    for key in keys:
        row += [_num(posterior[f"{key}_mse"]), "-"]
    table.add_row(*row, _num(posterior["reward_abs_err"]), _num(posterior["cont_abs_err"]), style="dim")
    for position, h in enumerate(loop["horizon"]):
        row = [str(h), str(loop["count"][position])]
        for key in keys:
            row += [_num(loop["obs"][key]["model_mse"][position]), _num(loop["obs"][key]["copy_last_mse"][position])]
        table.add_row(*row, _num(loop["reward_abs_err"][position]), _num(loop["cont_abs_err"][position]))
    return table


def free_bits_table(name: str, bits: Mapping[str, Any]) -> Table:
    table = Table(title=f"{name}: free bits (dynamics KL of each (b, t) step, summed over the latents)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("kl_free", _num(bits["kl_free"]))
    table.add_row("steps (b, t)", str(bits["steps"]))
    table.add_row("share with KL < kl_free (no prior gradient)", _num(bits["kl_under_free_share"]))
    table.add_row("mean KL", _num(bits["kl_mean"]))
    table.add_row("median KL", _num(bits["kl_median"]))
    table.add_row("90th percentile KL", _num(bits["kl_p90"]))
    return table


def sensitivity_table(name: str, sensitivity: Mapping[str, Any]) -> Table:
    table = Table(
        title=f"{name}: prior's action sensitivity, one prior step from {sensitivity['states']} posterior states "
        f"with each of {sensitivity['actions']} {sensitivity.get('kind', 'actions')}",
    )
    table.add_column("prediction")
    table.add_column("spread between actions (RMS)", justify="right")
    table.add_column("data one-step change (RMS)", justify="right")
    table.add_column("ratio", justify="right")
    for key, figures in [*sensitivity.get("obs", {}).items(), ("reward", sensitivity.get("reward", {}))]:
        if figures:
            table.add_row(key, _num(figures["spread"]), _num(figures["data_step"]), _num(figures["ratio"]))
    return table


def state_gap_table(name: str, gap: Mapping[str, Any]) -> Table:
    lengths = ", ".join(str(length) for length in gap["episode_lengths"])
    table = Table(
        title=f"{name}: acting state (acting_context={gap['acting_context']}) vs the training window of "
        f"{gap['batch_length']} steps ending at the same step; {gap['episodes']} episode(s) of length {lengths or '-'}",
    )
    keys = list(gap["buckets"][0]["obs_mse"]) if gap["buckets"] else []
    table.add_column("position")
    table.add_column("steps", justify="right")
    table.add_column("|h_ep - h_win| / |h_win|", justify="right")
    for key in keys:
        table.add_column(f"{key} mse (episode h)", justify="right")
        table.add_column(f"{key} mse (window h)", justify="right")
    table.add_column("acting gap", justify="right")
    for bucket in gap["buckets"]:
        high = "end" if bucket["high"] is None else str(bucket["high"])
        row = [f"[{bucket['low']}, {high})", str(bucket["steps"]), _num(bucket["rel_gap"])]
        for key in keys:
            row += [_num(bucket["obs_mse"][key]["episode"]), _num(bucket["obs_mse"][key]["window"])]
        table.add_row(*row, _num(bucket["acting_gap"]))
    return table


def _print_table(console: Console, table: Table) -> None:
    """The title as a line of its own (a rich title wraps at the table's width), then the table."""
    title, table.title = table.title, None
    console.print(f"[bold]{escape(str(title))}[/bold]", highlight=False)
    console.print(table)


def print_report(console: Console, result: Mapping[str, Any]) -> None:
    settings = result["settings"]
    console.print(
        f"[bold]{PROG}[/bold] {escape(result['checkpoint'])} (step {result['step']}): sequence model "
        f"{settings['sequence_model']}, observations {escape(str(settings['obs_shapes']))}, {settings['num_actions']} "
        f"actions, batch_length {settings['batch_length']}, acting_context {settings['acting_context']}",
        highlight=False,
    )
    for name, level in result["levels"].items():
        console.rule(name)
        if "skipped" in level:
            console.print(f"{name} skipped: {escape(level['skipped'])}", highlight=False)
            continue
        loop = level["open_loop"]
        if "skipped" in loop:
            console.print(f"open loop skipped: {escape(loop['skipped'])}", highlight=False)
        else:
            _print_table(console, open_loop_table(name, loop))
        _print_table(console, free_bits_table(name, level["free_bits"]))
        _print_table(console, sensitivity_table(name, level["action_sensitivity"]))
        if "state_gap" in level:
            gap = level["state_gap"]
            if "note" in gap:
                console.print(f"note: {escape(gap['note'])}", highlight=False)
            _print_table(console, state_gap_table(name, gap))


# ----------------------------------------------------------------------------------------------- mlflow
def log_to_mlflow(payload: Mapping[str, Any], step: int, metrics: Mapping[str, float], report: Path) -> str:
    """Log ``metrics`` (at ``step``) and the JSON ``report`` into the checkpoint's MLflow run; returns where they
    went or why not (an unreachable store or a missing run is a warning, never an error)."""
    import time

    from hieros.training.mlflow_store import METRICS_PER_BATCH, probe, resolve_tracking_uri, sqlite_path

    config = payload["config"]
    recorded = payload.get("mlflow", {}) or {}
    logger = config.get("logger", {}) or {}
    run_id = recorded.get("run_id") or None
    if run_id is None:
        return "not logged: the checkpoint names no MLflow run (trained with logger=none)"
    uri = recorded.get("tracking_uri") or resolve_tracking_uri(
        logger.get("tracking_uri"), config.get("paths", {}).get("root", "hieros-runs")
    )
    database = sqlite_path(uri)
    problem = f"no database file {database}" if database is not None and not database.is_file() else probe(uri)
    if problem is not None:
        return f"WARNING: not logged: MLflow store {uri} unreachable ({problem}); the report is in {report}"
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        if client.get_run(run_id).info.lifecycle_stage == "deleted":
            return f"WARNING: not logged: MLflow run {run_id} in {uri} was deleted; the report is in {report}"
    except Exception:  # noqa: BLE001 - not in this store
        return f"WARNING: not logged: MLflow run {run_id} is not in {uri}; the report is in {report}"
    stamp = int(time.time() * 1000)
    entries = [Metric(key, value, stamp, step) for key, value in metrics.items()]
    try:
        for start in range(0, len(entries), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=entries[start : start + METRICS_PER_BATCH])
        client.log_artifact(run_id, str(report), "diagnostics")
    except Exception as error:  # noqa: BLE001 - a store that fails mid-way is a warning too
        return f"WARNING: logging to MLflow run {run_id} at {uri} failed ({type(error).__name__}: {error})"
    return f"logged {len(entries)} metrics and {report.name} to MLflow run {run_id} at {uri}"


# ------------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from hieros.diagnose import DiagnoseError, diagnose_run, load_run, scalars
    from hieros.training.threads import torch_threads

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PLAIN_WIDTH)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"{PROG}: --device cuda, but torch sees no CUDA device here; use --device cpu (the default)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    try:
        with torch_threads(args.threads), torch.no_grad():
            run = load_run(args.run_dir, device)
            for warning in run.warnings:
                print(f"{PROG}: WARNING: {warning}", file=sys.stderr)
            result = diagnose_run(
                run,
                windows=args.windows,
                context=args.context,
                horizon=args.horizon,
                episodes=args.episodes,
                seed=args.seed,
                states=args.states,
            )
    except DiagnoseError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    out = args.out or run.run_dir / "diagnostics" / f"diagnostics_step{run.step:09d}.json"
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics = scalars(result)
    result["metrics"] = metrics
    write_json_atomic(out, result)
    print_report(console, result)
    if args.no_mlflow:
        result["mlflow"] = "not logged (--no-mlflow)"
    else:
        result["mlflow"] = log_to_mlflow(run.payload, run.step, metrics, out)
    write_json_atomic(out, result)  # with where the figures went
    stream = sys.stderr if result["mlflow"].startswith("WARNING") else sys.stdout
    print(f"{PROG}: {result['mlflow']}", file=stream)
    print(f"{PROG}: wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
