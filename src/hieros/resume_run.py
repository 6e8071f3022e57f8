"""``hieros-resume RUN [OVERRIDES...]``: continue the training run an MLflow run recorded.

RUN is ``runs:/RUN_ID`` or the bare run id. The run directory comes from the run's tag ``run_dir`` (it must be on
this machine: the checkpoints and replay live there) and the command is the run's own, read from that directory's
``.hydra/overrides.yaml``: ``python -m hieros <its overrides> <OVERRIDES> hydra.run.dir=<run_dir>``. Extra
OVERRIDES replace the run's value of the same key, e.g. ``training.steps=200000`` to extend the budget (keys a
resume may change are listed by the incompatible-checkpoint message). The resumed process re-attaches to the same
MLflow run. Errors are one line with exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hieros.arguments import ArgumentParser

PROG = "hieros-resume"


class ResumeRunError(ValueError):
    """The MLflow run cannot be resumed here; the message says why and what to do."""


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_command(run: str, extra: Sequence[str], tracking_uri: str | None) -> tuple[list[str], str]:
    """(the ``python -m hieros`` command line, the store's URI) that resumes MLflow run ``run``."""
    from omegaconf import OmegaConf

    from hieros.eval import RUN_ID, EvalError, store_uri, training_run

    match = RUN_ID.match(run)
    if match is None:
        raise ResumeRunError(f"{run!r} is not an MLflow run: pass runs:/<32-digit run id> or the bare id")
    uri = store_uri(tracking_uri)
    try:
        run_dir = Path(training_run(match.group(1), uri).data.tags["run_dir"])
    except EvalError as error:
        raise ResumeRunError(str(error)) from None
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ResumeRunError(
            f"the run directory {run_dir} of MLflow run {match.group(1)} is not on this machine (or has no "
            f".hydra/overrides.yaml): resume on the machine that holds it, with python -m hieros <overrides> "
            f"hydra.run.dir={run_dir}"
        )
    replaced = {_key(item) for item in extra} | {"hydra.run.dir"}
    own = [str(item) for item in OmegaConf.load(overrides_file) if _key(str(item)) not in replaced]
    return [sys.executable, "-m", "hieros", *own, *extra, f"hydra.run.dir={run_dir}"], uri


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("run", help="runs:/RUN_ID or the bare MLflow run id of a hieros training run")
    parser.add_argument("overrides", nargs="*", help="overrides after the run's own (e.g. training.steps=200000)")
    parser.add_argument("--tracking-uri", help="the MLflow store (default: MLFLOW_TRACKING_URI, else $HIEROS_HOME's)")
    args = parser.parse_args(argv)
    try:
        command, uri = resume_command(args.run, args.overrides, args.tracking_uri)
    except ResumeRunError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{PROG}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    os.execve(sys.executable, command, {**os.environ, "MLFLOW_TRACKING_URI": uri})


if __name__ == "__main__":
    main()
