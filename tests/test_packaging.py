"""Packaging: the package list is complete, a non-editable wheel carries the configs, the CLIs work."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")

PLANNED_MODULES = {"hieros.eval", "hieros.report"}  # console scripts whose modules are not written yet


@pytest.fixture(scope="module")
def pyproject(repo_root: Path) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def _source_dir(package: str, package_dir: dict[str, str], repo_root: Path) -> Path:
    """Where setuptools takes ``package`` from: the longest matching ``package-dir`` entry."""
    parts = package.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return repo_root.joinpath(package_dir[prefix], *parts[cut:])
    return repo_root.joinpath(*parts)


def test_package_list_covers_every_package(pyproject: dict, repo_root: Path) -> None:
    setuptools = pyproject["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(repo_root / "src").parts)
        for init in (repo_root / "src").rglob("__init__.py")
        if not any(part.endswith(".egg-info") or part == "__pycache__" for part in init.parts)
    }
    assert on_disk - listed == set(), "packages under src/ missing from [tool.setuptools] packages"
    assert {"hieros.conf", "hieros.launchers"} <= listed
    for package in listed:
        source = _source_dir(package, setuptools.get("package-dir", {}), repo_root)
        assert (source / "__init__.py").is_file(), f"{package} is listed but {source}/__init__.py does not exist"


def test_package_data_ships_every_config_file(pyproject: dict) -> None:
    data = pyproject["tool"]["setuptools"]["package-data"]
    assert "**/*.yaml" in data["hieros.conf"] and "**/*.yaml" in data["hieros.launchers"]


def test_console_scripts_point_at_callables(pyproject: dict) -> None:
    scripts = pyproject["project"]["scripts"]
    assert {"hieros", "hieros-components"} <= set(scripts)
    for script, target in scripts.items():
        module_name, _, function = target.partition(":")
        if module_name in PLANNED_MODULES and importlib.util.find_spec(module_name) is None:
            continue
        target_function = getattr(importlib.import_module(module_name), function, None)
        if module_name in PLANNED_MODULES and target_function is None:
            continue  # being written
        assert callable(target_function), f"{script} = {target}"


def test_torch_is_a_range_in_the_metadata_and_pinned_where_make_installs(pyproject: dict, repo_root: Path) -> None:
    """The package accepts any torch >= 2.4 (a GPU machine keeps its CUDA build); `make install` pins the local CPU
    wheel through constraints.txt (an unpinned torch pulls gigabytes of CUDA wheels)."""
    (torch,) = [dep for dep in pyproject["project"]["dependencies"] if dep.replace(" ", "").startswith("torch")]
    assert torch.replace(" ", "").startswith("torch>=")
    pins = [line for line in (repo_root / "constraints.txt").read_text().splitlines() if line.startswith("torch")]
    assert pins == ["torch==2.13.0"]
    makefile = (repo_root / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "$(STAMP): pyproject.toml constraints.txt" in makefile


def test_the_package_is_typed(repo_root: Path, pyproject: dict) -> None:
    assert (repo_root / "src" / "hieros" / "py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["hieros"]


# ------------------------------------------------------------------------------------------- non-editable wheel
@pytest.fixture(scope="module")
def wheel(repo_root: Path, pyproject: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built into a wheel from a copy of its tracked layout (offline, no build isolation).

    Building from a copy keeps build/ and *.egg-info out of the working tree.
    """
    work = tmp_path_factory.mktemp("wheel")
    source = work / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".*")
    roots = {Path(path).parts[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()}
    for name in sorted(roots | {"src", "pyproject.toml", "README.md"}):
        if (repo_root / name).is_dir():
            shutil.copytree(repo_root / name, source / name, ignore=ignore)  # symlinked folders are copied as folders
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(repo_root / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel_file,) = (work / "dist").glob("hieros-*.whl")
    return wheel_file


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel installed with ``pip install --no-deps --target`` (a plain, non-editable install)."""
    target = wheel.parent.parent / "target"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.mark.slow
def test_wheel_contains_configs_and_plugins(wheel: Path, conf_dir: Path, launchers_dir: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"hieros/conf/{path.relative_to(conf_dir).as_posix()}" for path in conf_dir.glob("**/*.yaml")}
    launchers = {
        f"hieros/launchers/{path.relative_to(launchers_dir).as_posix()}" for path in launchers_dir.glob("**/*.yaml")
    }
    assert "hieros/conf/config.yaml" in names
    assert {
        "hieros/conf/sampler/etbs.yaml",
        "hieros/conf/sequence_model/s5.yaml",
        "hieros/conf/env/atari100k.yaml",
    } <= names
    assert configs - names == set(), "config files missing from the wheel"
    assert launchers - names == set(), "launcher configs missing from the wheel"
    assert "hydra_plugins/hieros_searchpath/__init__.py" in names
    assert "hieros/components/__main__.py" in names and "hieros/bench/__main__.py" in names
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hieros = hieros.__main__:main" in scripts
    assert "hieros-components = hieros.components.__main__:main" in scripts


@pytest.mark.slow
def test_non_editable_install_finds_its_configs_from_any_directory(
    installed: Path, python_runner, tmp_path: Path
) -> None:
    script = (
        "import sys, runpy, importlib.resources, hieros; "
        "print('FILE', hieros.__file__, file=sys.stderr); "
        "print('CONF', importlib.resources.files('hieros.conf'), file=sys.stderr); "
        "sys.argv = ['hieros', '--cfg', 'job', 'sampler=tbs', 'env=gym']; "
        "runpy.run_module('hieros', run_name='__main__', alter_sys=True)"
    )
    done = python_runner("-c", script, cwd=tmp_path, pythonpath=installed)
    assert done.returncode == 0, done.stderr
    where = dict(line.split(" ", 1) for line in done.stderr.splitlines() if line.startswith(("FILE ", "CONF ")))
    assert Path(where["FILE"]).resolve() == (installed / "hieros" / "__init__.py").resolve()
    assert Path(where["CONF"]).resolve() == (installed / "hieros" / "conf").resolve()
    printed = yaml.safe_load(done.stdout)
    assert printed["sampler"] == {"name": "tbs", "temperature": 20.0}
    assert printed["env"]["id"] == "CartPole-v1"
    assert printed["hierarchy"]["layers"] == 3


@pytest.mark.slow
def test_non_editable_install_discovers_its_hydra_searchpath_plugin(
    installed: Path, python_runner, tmp_path: Path
) -> None:
    script = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.search_path_plugin import SearchPathPlugin; "
        "print([f'{p.__module__}.{p.__name__}' for p in Plugins.instance().discover(SearchPathPlugin)])"
    )
    done = python_runner("-c", script, cwd=tmp_path, pythonpath=installed)
    assert done.returncode == 0, done.stderr
    assert "hydra_plugins.hieros_searchpath.HierosSearchPathPlugin" in done.stdout


def test_the_working_environment_discovers_the_hydra_searchpath_plugin(python_runner, tmp_path: Path) -> None:
    """Hydra finds plugins by scanning the hydra_plugins namespace; that must work for the dev install too."""
    script = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.search_path_plugin import SearchPathPlugin; "
        "print([f'{p.__module__}.{p.__name__}' for p in Plugins.instance().discover(SearchPathPlugin)])"
    )
    done = python_runner("-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hydra_plugins.hieros_searchpath.HierosSearchPathPlugin" in done.stdout, (
        "Hydra does not see hydra_plugins.hieros_searchpath: setuptools' editable install exposes it through an "
        "import hook that pkgutil cannot list (hydra issue #2359); the project layout must let setuptools use a "
        "plain .pth path (package-dir {'': 'src'} with conf/ and launchers/ reachable under src/hieros/)"
    )


# ------------------------------------------------------------------------------------------------ benchmarks CLI
def test_bench_cli_reports_results_and_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    from hieros.bench import __main__ as bench

    good = types.ModuleType("hieros.bench.fake_good")
    good.run = lambda quick=False: {"quick": quick, "figure": 1.5}
    bad = types.ModuleType("hieros.bench.fake_bad")
    bad.run = lambda quick=False: 1 / 0
    helper = types.ModuleType("hieros.bench.fake_helper")  # no run(): not a benchmark
    for module in (good, bad, helper):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(bench, "discover", lambda: ["fake_bad", "fake_good", "fake_helper"])

    out = tmp_path / "nested" / "bench.json"
    assert bench.main(["--quick", "--only", "fake_good", "fake_helper", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert list(report["benchmarks"]) == ["fake_good"]
    assert report["benchmarks"]["fake_good"]["result"] == {"quick": True, "figure": 1.5}

    assert bench.main([]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["quick"] is False
    assert report["benchmarks"]["fake_bad"]["error"] == "ZeroDivisionError: division by zero"
    assert "fake_good" in report["benchmarks"]
    assert "hieros.bench: failed: fake_bad" in captured.err

    with pytest.raises(SystemExit) as caught:
        bench.main(["--only", "nope"])
    assert caught.value.code == 2


def test_bench_discovers_every_benchmark_module(repo_root: Path) -> None:
    from hieros.bench import __main__ as bench

    on_disk = {
        path.stem for path in (repo_root / "src" / "hieros" / "bench").glob("*.py") if not path.stem.startswith("_")
    }
    assert set(bench.discover()) == on_disk
