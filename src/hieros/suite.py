"""``python -m hieros.suite TARGET... [options] [overrides]`` (also ``hieros-suite``): launch the paper's suites.

    python -m hieros.suite atari100k                  # the main result: 26 games x 3 seeds = 78 jobs on SLURM
    python -m hieros.suite ablations                  # every Appendix G ablation (conf/experiment/ablation_*.yaml)
    python -m hieros.suite ablations --smoke --launcher local         # the same sweeps at smoke size, one seed
    python -m hieros.suite ablation_depth hierarchy.layers=1,2 --dry-run  # any experiment; overrides pass through

A TARGET is ``atari100k``, ``ablations`` or the name of any experiment file in ``conf/experiment/``. For each
experiment the suite composes the sweep as ``python -m hieros -m`` will (Hydra's config loader in multirun mode,
then the basic sweeper's own expansion of the file's ``hydra.sweeper.params`` and the command-line overrides, where
a command-line sweep replaces the file's grid for the same key), validates every job's config, prints each
experiment's job count and the total, and then runs, without asking anything,

    python -m hieros -m +experiment=NAME hydra/launcher=LAUNCHER OVERRIDES

for each (``--smoke``: ``+experiment=[NAME,smoke]``). A submitting process stays until its jobs end
(hydra-submitit-launcher), so the experiments are started side by side, ``--stagger`` seconds apart (their MLflow
parent runs are then not created at the same moment), their output prefixed by the experiment's name; run the suite
under tmux/screen or in a login-node job. ``--dry-run`` prints the counts and commands only. The exit code is 2 for
a bad target, override or config, otherwise the first non-zero exit code of the launched sweeps.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

from omegaconf import OmegaConf

from hieros.arguments import ArgumentParser

CONFIG_PACKAGE = "hieros.conf"
DEFAULT_LAUNCHER = "slurm_a100"
SMOKE = "smoke"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class SuiteError(ValueError):
    """A bad target, override or config; the message is one line and says what is allowed."""


def experiment_names() -> list[str]:
    """Every experiment overlay shipped in ``conf/experiment/``."""
    folder = resources.files(CONFIG_PACKAGE) / "experiment"
    return sorted(item.name.removesuffix(".yaml") for item in folder.iterdir() if item.name.endswith(".yaml"))


def suites() -> dict[str, list[str]]:
    """The named suites: the main result and every Appendix G ablation."""
    return {"atari100k": ["atari100k"], "ablations": [n for n in experiment_names() if n.startswith("ablation_")]}


def resolve_targets(targets: Sequence[str]) -> list[str]:
    """Suite names and experiment names -> the experiments, in order, without repeats."""
    known, named = experiment_names(), suites()
    experiments: list[str] = []
    for target in targets:
        if target not in named and target not in known:
            raise SuiteError(
                f"unknown target {target!r}: allowed is {' | '.join(named)} or an experiment ({', '.join(known)})"
            )
        experiments += [name for name in named.get(target, [target]) if name not in experiments]
    return experiments


def experiment_override(name: str, smoke: bool = False) -> str:
    return f"+experiment=[{name},{SMOKE}]" if smoke else f"+experiment={name}"


@dataclass(frozen=True)
class Sweep:
    """One experiment's multirun: its command-line overrides and the jobs Hydra's basic sweeper makes of them."""

    name: str
    overrides: list[str]  # what follows ``python -m hieros -m``
    jobs: list[list[str]]  # the overrides of each job, in Hydra's job order
    axes: dict[str, int]  # swept key -> number of values (keys with one value left out)

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "hieros", "-m", *self.overrides]


@contextmanager
def _hydra() -> Iterator[object]:
    """The Hydra instance ``python -m hieros`` builds (the installed ``hieros.conf`` and its search path)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        yield GlobalHydra.instance().hydra


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _expand(hydra: object, name: str, overrides: list[str]) -> Sweep:
    """The master config of ``python -m hieros -m OVERRIDES``, then the basic sweeper's expansion (as in
    ``BasicSweeper.sweep``: the file's ``hydra.sweeper.params`` first, the task overrides after them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    cfg = hydra.compose_config(config_name="config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    sweeper_cfg = cfg.hydra.sweeper
    if sweeper_cfg.get("_target_") != BASIC_SWEEPER:
        raise SuiteError(
            f"hydra/sweeper={cfg.hydra.runtime.choices.get('hydra/sweeper')} is not supported: the suite "
            f"counts jobs as Hydra's basic sweeper makes them; allowed is the default hydra/sweeper=basic"
        )
    params = OmegaConf.to_container(sweeper_cfg.params, resolve=False) if sweeper_cfg.params else {}
    sweeper = BasicSweeper(max_batch_size=sweeper_cfg.max_batch_size, params=params)
    arguments = [*sweeper._parse_config(), *OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)]
    parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, sweeper_cfg.max_batch_size)
    axes: dict[str, int] = {}
    for override in parsed:  # the same key rule as split_arguments: a later override of a key replaces it
        key = override.get_key_element()
        axes.pop(key, None)
        axes[key] = len(list(override.sweep_string_iterator())) if override.is_discrete_sweep() else 1
    return Sweep(name, overrides, [job for batch in batches for job in batch], {k: n for k, n in axes.items() if n > 1})


def plan(
    experiments: Sequence[str],
    extra: Sequence[str] = (),
    launcher: str = DEFAULT_LAUNCHER,
    smoke: bool = False,
    validate_jobs: bool = True,
) -> list[Sweep]:
    """The sweep of every experiment, each job's config composed and validated (``validate_jobs``)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hieros.config import ConfigError, validate
    from hieros.registry import Registry, RegistryError

    registry = Registry.default() if validate_jobs else None
    sweeps = []
    with _hydra() as hydra:
        launchers = hydra.config_loader.get_group_options("hydra/launcher", config_name="config")  # + its searchpath
        if launcher not in launchers:
            raise SuiteError(f"hydra/launcher={launcher} is not a launcher preset: allowed is {' | '.join(launchers)}")
        for name in experiments:
            overrides = [experiment_override(name, smoke), f"hydra/launcher={launcher}", *extra]
            try:
                sweep = _expand(hydra, name, overrides)
            except (HydraException, OmegaConfBaseException) as error:
                raise SuiteError(f"{name}: {_one_line(error)}") from None
            for number, job in enumerate(sweep.jobs if validate_jobs else []):
                try:
                    validate(compose(config_name="config", overrides=job), registry)
                except (HydraException, OmegaConfBaseException, ConfigError, RegistryError) as error:
                    raise SuiteError(f"{name} job {number} ({' '.join(job)}): {_one_line(error)}") from None
            sweeps.append(sweep)
    return sweeps


def summary(sweeps: Sequence[Sweep], launcher: str) -> list[str]:
    width = max(len(sweep.name) for sweep in sweeps)
    lines = [f"hieros.suite: {len(sweeps)} experiment(s) on hydra/launcher={launcher}"]
    for sweep in sweeps:
        grid = " x ".join(f"{key} {count}" for key, count in sweep.axes.items()) or "one job"
        lines.append(f"  {sweep.name:<{width}}  {len(sweep.jobs):>5} jobs  ({grid})")
    lines.append(f"  {'total':<{width}}  {sum(len(sweep.jobs) for sweep in sweeps):>5} jobs")
    return lines


def _pipe(prefix: str, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[{prefix}] {line}")
        sys.stdout.flush()


def launch(sweeps: Sequence[Sweep], stagger: float = 10.0, sequential: bool = False) -> int:
    """Run every sweep's ``python -m hieros -m`` (side by side, or one after the other); the first non-zero code."""
    running: list[tuple[subprocess.Popen, threading.Thread]] = []
    codes: list[int] = []
    for index, sweep in enumerate(sweeps):
        if index and not sequential:
            time.sleep(stagger)
        print(f"hieros.suite: starting {shlex.join(['python', *sweep.command()[1:]])}", flush=True)
        process = subprocess.Popen(
            sweep.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        reader = threading.Thread(target=_pipe, args=(sweep.name, process.stdout), daemon=True)
        reader.start()
        running.append((process, reader))
        if sequential:
            codes.append(process.wait())
            reader.join()
    for process, reader in running if not sequential else []:
        codes.append(process.wait())
        reader.join()
    for sweep, code in zip(sweeps, codes):
        print(f"hieros.suite: {sweep.name} exited with code {code}", flush=True)
    return next((code for code in codes if code), 0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="hieros-suite",
        description="Launch the Atari100k suite or every Appendix G ablation as Hydra multiruns.",
        epilog="Example: python -m hieros.suite ablations --smoke --launcher local --dry-run",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET_OR_OVERRIDE",
        help="atari100k | ablations | an experiment name, then Hydra overrides (key=value) passed to every sweep",
    )
    parser.add_argument(
        "--launcher", default=DEFAULT_LAUNCHER, help=f"hydra/launcher preset (default {DEFAULT_LAUNCHER})"
    )
    parser.add_argument("--smoke", action="store_true", help="add the smoke overlay: one seed, tiny model, minutes")
    parser.add_argument("--dry-run", action="store_true", help="print the job counts and commands, launch nothing")
    parser.add_argument("--no-validate", action="store_true", help="skip composing and validating every job")
    parser.add_argument("--stagger", type=float, default=10.0, help="seconds between starting two sweeps (default 10)")
    parser.add_argument("--sequential", action="store_true", help="start a sweep only after the previous one ended")
    args = parser.parse_intermixed_args(argv)
    targets = [item for item in args.targets if "=" not in item]
    extra = [item for item in args.targets if "=" in item]
    try:
        if not targets:
            raise SuiteError("no target given: allowed is atari100k | ablations | an experiment name")
        sweeps = plan(resolve_targets(targets), extra, args.launcher, args.smoke, not args.no_validate)
    except SuiteError as error:
        print(f"hieros.suite: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(summary(sweeps, args.launcher)))
    if args.dry_run:
        for sweep in sweeps:
            print(shlex.join(["python", *sweep.command()[1:]]))
        print("hieros.suite: dry run, nothing launched")
        return
    sys.stdout.flush()
    raise SystemExit(launch(sweeps, args.stagger, args.sequential))


if __name__ == "__main__":
    main()
