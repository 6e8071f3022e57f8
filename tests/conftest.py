"""Shared test setup: the ``slurm`` marker (skipped unless a SLURM cluster answers), small helpers and the fixtures
several modules use (``registry``, ``single_thread``, ``mode_sampling``). Plain helper functions that test modules
import are in ``helpers.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hieros.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[1]


def _slurm_problem() -> str | None:
    """None when a SLURM cluster answers, else why the ``slurm`` tests skip (one line)."""
    missing = [tool for tool in ("sbatch", "sinfo", "scontrol") if shutil.which(tool) is None]
    if missing:
        return (
            f"no SLURM here: {', '.join(missing)} not on PATH (start one with ../shared/slurm/start-local-slurm.sh, "
            "as .ci/run does)"
        )
    try:
        # `scontrol ping` fails in ms when slurmctld is down; `sinfo` would retry ~9 s.
        if subprocess.run(["scontrol", "ping"], capture_output=True, timeout=5).returncode != 0:
            return "SLURM installed but slurmctld does not answer `scontrol ping` (cluster stopped?)"
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"SLURM does not answer ({type(error).__name__})"
    if out.returncode != 0 or not any(s.strip("*~#") in {"idle", "mixed", "allocated"} for s in out.stdout.split()):
        return f"SLURM answers but sinfo shows no usable node ({out.stdout.split() or out.returncode})"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a reachable SLURM cluster (shared/slurm/start-local-slurm.sh)")
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("COLUMNS") == "80":
        # pytest-xdist's workers start with COLUMNS=80 / LINES=24 (execnet's default terminal); the CLIs keep their
        # output rows whole when stdout is no terminal and COLUMNS is unset, as in a single-process run
        os.environ.pop("COLUMNS", None)
        os.environ.pop("LINES", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slurm_items = [item for item in items if "slurm" in item.keywords]
    problem = _slurm_problem() if slurm_items else None
    if problem is None:
        return
    skip = pytest.mark.skip(reason=problem)
    for item in slurm_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    """The folder of the ``hieros.conf`` package (``conf/`` in the repository), wherever the layout puts it."""
    return Path(str(resources.files("hieros.conf")))


@pytest.fixture(scope="session")
def launchers_dir() -> Path:
    """The folder of the ``hieros.launchers`` package (launcher presets on the config search path)."""
    return Path(str(resources.files("hieros.launchers")))


def run_python(
    *args: str, cwd: Path, pythonpath: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``sys.executable *args`` in ``cwd`` (output captured as text); ``pythonpath`` is put first on sys.path.

    ``HIEROS_HOME`` points into ``cwd`` so that nothing a run might write lands in the repository.
    """
    full_env = {**os.environ, "HIEROS_HOME": str(cwd / "hieros-home"), "COLUMNS": "400", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if pythonpath is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def python_runner():
    """:func:`run_python` as a fixture, for tests that run ``python -m ...`` in a subprocess."""
    return run_python


# ------------------------------------------------------------------------------ fixtures of the model tests
@pytest.fixture(scope="module")
def registry() -> Registry:
    """The default registry (built-in components and plugins); modules that need another one define their own."""
    from hieros.registry import Registry

    return Registry.default()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run many small ops: one intra-op thread avoids OpenMP barrier stalls on a loaded machine.

    Modules turn it on for all their tests with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mode_sampling(monkeypatch):
    """z = mode instead of a sample in every code path (parallel observe, obs_step, img_step), so two computations
    of the same window see the same z."""
    from hieros.nets.distributions import OneHotCategorical

    monkeypatch.setattr(OneHotCategorical, "sample", lambda self, generator=None: self.mode())
