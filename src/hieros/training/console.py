"""What a training run prints: a start banner, then a rich progress bar on a terminal or plain log lines otherwise.

On a TTY the bar shows steps, steps per second, time left, the latest episode score and each level's world-model
loss, refreshed by rich's own thread (the loop only sets numbers). Without a TTY (SLURM output files, pipes) every
report is one line such as::

    [hieros] step 2000/100000 (2.0%) | 11.8 sps | eta 2:18:30 | score 3.00 | L0 model_loss 1.234 | L1 model_loss 0.456

The banner's rows for a training run are :func:`banner_rows`; :func:`dashboard_command` says how to open the run's
tracking store.

Every message, banner and report line also goes to the Python logger ``hieros`` (INFO; warnings as WARNING), in both
modes. Under Hydra, ``conf/hydra/job_logging/hieros.yaml`` sends that logger to the job's log file only
(``<run_dir>/__main__.log``), so the console shows each line once; outside Hydra the logger is silent unless the
application configures logging.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hieros.training.loop import Run
    from hieros.training.tracking import Tracker


def _format_eta(seconds: float) -> str:
    if not seconds or seconds != seconds or seconds == float("inf"):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def level_losses(report: Mapping[str, Any], levels: int) -> list[tuple[int, float]]:
    """(level, world-model loss) of the levels that trained since the last report."""
    return [
        (level, float(report[key]))
        for level in range(levels)
        if isinstance(report.get(key := f"train/level{level}/model_loss"), int | float)
    ]


def status_text(report: Mapping[str, Any], levels: int, score: float | None) -> str:
    parts = [f"score {score:.2f}" if score is not None else "score -"]
    parts += [f"L{level} model_loss {loss:.3f}" for level, loss in level_losses(report, levels)]
    return " | ".join(parts)


class Console:
    """``mode``: auto (rich on a TTY, plain otherwise) | rich | plain."""

    def __init__(self, total_steps: int, levels: int, mode: str = "auto", stream: TextIO | None = None) -> None:
        if mode not in ("auto", "rich", "plain"):
            raise ValueError(f"training.progress={mode!r} is invalid: allowed is auto | rich | plain")
        self.stream = stream or sys.stdout
        self.log = logging.getLogger("hieros")
        self.rich = mode == "rich" or (mode == "auto" and self.stream.isatty())
        self.total = int(total_steps)
        self.levels = levels
        self._progress = None
        self._task = None
        self._start_time = time.monotonic()
        self._start_step = 0
        if self.rich:
            from rich.console import Console as RichConsole

            self._console = RichConsole(file=self.stream, force_terminal=mode == "rich" or None)

    # ------------------------------------------------------------------ messages
    def info(self, message: str) -> None:
        self.log.info(message)
        if self.rich:
            self._console.print(message, markup=False, highlight=False)
        else:
            print(f"[hieros] {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        self.log.warning(message)
        if self.rich:
            self._console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)
        else:
            print(f"[hieros] WARNING: {message}", file=self.stream, flush=True)

    def banner(self, title: str, rows: Iterable[tuple[str, str]]) -> None:
        rows = list(rows)
        width = max((len(label) for label, _ in rows), default=0)
        lines = [title] + [f"  {label.ljust(width)}  {value}" for label, value in rows]
        self.log.info("\n".join(lines))
        if self.rich:
            from rich.panel import Panel
            from rich.table import Table

            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold cyan", no_wrap=True)
            table.add_column(overflow="fold")
            for label, value in rows:
                table.add_row(label, value)
            self._console.print(Panel(table, title=title, expand=False))
            return
        print("\n".join(f"[hieros] {line}" for line in lines), file=self.stream, flush=True)

    # ------------------------------------------------------------------ progress
    def start(self, step: int) -> None:
        self._start_step, self._start_time = int(step), time.monotonic()
        if not self.rich:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[sps]} sps"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self._console,
            refresh_per_second=2,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total, completed=step, sps="-", status="")

    def advance(self, step: int) -> None:
        """Every loop iteration: only moves the bar (cheap); nothing is printed in plain mode."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def report(self, step: int, report: Mapping[str, Any], score: float | None) -> None:
        sps = report.get("sps")
        status = status_text(report, self.levels, score)
        elapsed = time.monotonic() - self._start_time
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        percent = 100.0 * step / max(1, self.total)
        sps_text = f"{sps:.1f}" if isinstance(sps, float) else "-"
        line = f"step {step}/{self.total} ({percent:.1f}%) | {sps_text} sps | eta {_format_eta(eta)} | {status}"
        self.log.info(line)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, sps=sps_text, status=status)
            return
        print(f"[hieros] {line}", file=self.stream, flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# ------------------------------------------------------------------ a training run's banner
def banner_rows(run: Run, run_dir: Path, resumed: str, tracker: Tracker) -> list[tuple[str, str]]:
    """The rows of the start banner: where the run lives, how it starts, what it trains and where it logs."""
    config = run.config
    env = config["env"]
    game = env.get("game") or env.get("id") or ""
    model = config["model"]
    hierarchy = config["hierarchy"]
    training = config["training"]
    rows = [
        ("run directory", str(run_dir)),
        ("start", resumed),
        ("environment", f"{env['name']} {game} obs {run.obs_shapes} actions {run.envs.action_dim}"),
        ("sequence model", config["sequence_model"]["name"]),
        ("sampler", config["sampler"]["name"]),
        ("goal encoding", config["goal_encoding"]["name"]),
        ("model", f"deter {model['deter']}, stoch {model['stoch']}x{model['classes']}, units {model['units']}"),
        ("hierarchy", f"{hierarchy['layers']} level(s), k={hierarchy['k']}"),
        (
            "budget",
            f"{training['steps']} agent steps, train ratio {training['train_ratio']}, "
            f"batch {training['batch_size']}x{training['batch_length']}",
        ),
        ("device", f"{run.fabric.device} ({run.fabric.strategy.precision.precision})"),  # what Lightning runs
        ("tracking", tracker.describe()),
    ]
    if tracker.uri:
        rows.append(("dashboard", dashboard_command(tracker.uri)))
    return rows


def dashboard_command(uri: str) -> str:
    """How to look at the tracking store ``uri``."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)"
