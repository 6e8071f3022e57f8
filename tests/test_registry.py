"""The component registry and third-party plugins (entry points + Hydra search path)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from hieros.registry import GROUPS, Registry, RegistryError, UnknownComponentError, register

BUILTIN = {
    "sequence_model": ["gru", "rssm", "s5"],
    "sampler": ["etbs", "etbs_original", "tbs", "uniform"],
    "goal_encoding": ["decoded", "encoded"],
    "env": ["atari100k", "chain", "gym", "minatar"],
}
COMPONENT_PACKAGES = ("hieros.samplers", "hieros.sequence_models", "hieros.goal_encodings", "hieros.envs")


@pytest.fixture(scope="module")
def builtin() -> Registry:
    return Registry.default(plugins=False)


def _module_with(name: str, **objects: object) -> types.ModuleType:
    """A module called ``name`` that defines ``objects`` (their ``__module__`` set to it, as a real module's are)."""
    module = types.ModuleType(name)
    for attribute, obj in objects.items():
        obj.__module__ = name
        setattr(module, attribute, obj)
    return module


def _component(group: str, name: str) -> type:
    class Component:
        """A test component; keeps its keyword arguments."""

        def __init__(self, temperature: float, size: int = 1) -> None:
            self.temperature = temperature
            self.size = size

    return register(group, name)(Component)


# ----------------------------------------------------------------------------------------------- built-in registry
def test_builtin_modules_register_every_group(builtin: Registry) -> None:
    assert {group: builtin.names(group) for group in GROUPS} == BUILTIN
    for info in builtin.items():
        assert info.description, f"{info.group} {info.name!r} has no docstring"
        assert info.module.startswith("hieros."), info.module


def test_unknown_name_lists_registered_names_and_closest_match(builtin: Registry) -> None:
    with pytest.raises(UnknownComponentError) as caught:
        builtin.get("sampler", "etbz")
    message = str(caught.value)
    assert "\n" not in message
    assert "'etbz'" in message
    for name in BUILTIN["sampler"]:
        assert name in message
    assert "Did you mean 'etbs'?" in message
    with pytest.raises(UnknownComponentError, match=r"Registered env names: atari100k, chain, gym, minatar\.$"):
        builtin.get("env", "zzzzzz")  # nothing close: no suggestion


def test_unknown_group_is_refused(builtin: Registry) -> None:
    with pytest.raises(RegistryError, match="unknown registry group 'samplers'.*sampler"):
        builtin.names("samplers")
    with pytest.raises(RegistryError, match="unknown registry group 'policy'"):
        register("policy", "x")


def test_build_passes_node_keys_and_extra_kwargs() -> None:
    registry = Registry()
    registry.load_module(_module_with("fake_plugin_build", Component=_component("sampler", "fake")))
    node = OmegaConf.create({"fake": {"name": "fake", "temperature": "${scale}"}, "scale": 0.25})
    built = registry.build("sampler", node.fake, size=7)  # DictConfig, interpolation resolved, extra kwarg added
    assert (built.temperature, built.size) == (0.25, 7)
    built = registry.build("sampler", {"name": "fake", "temperature": 0.5, "size": 2}, size=3)  # extra wins
    assert (built.temperature, built.size) == (0.5, 3)


def test_build_of_a_builtin_from_its_config_file(builtin: Registry, conf_dir: Path) -> None:
    node = yaml.safe_load((conf_dir / "sampler" / "etbs_original.yaml").read_text())
    sampler = builtin.build("sampler", node)
    assert type(sampler).__name__ == "EfficientTimeBalancedOriginal"
    assert sampler.temperature == node["temperature"]


def test_bad_kwargs_error_lists_accepted_parameters() -> None:
    registry = Registry()
    registry.load_module(_module_with("fake_plugin_kwargs", Component=_component("sampler", "fake")))
    with pytest.raises(RegistryError) as caught:
        registry.build("sampler", {"name": "fake", "temprature": 0.3})
    message = str(caught.value)
    assert "cannot build sampler 'fake'" in message
    assert "temprature" in message
    assert "It accepts: temperature, size" in message
    with pytest.raises(RegistryError, match="no 'name' key; set it to one of: fake"):
        registry.build("sampler", {"temperature": 0.3})


def test_duplicate_registration_names_both_modules() -> None:
    registry = Registry()
    registry.load_module(_module_with("first_plugin", A=_component("sampler", "twice")))
    with pytest.raises(
        RegistryError, match="sampler 'twice' is registered twice: by first_plugin and by second_plugin"
    ):
        registry.load_module(_module_with("second_plugin", B=_component("sampler", "twice")))


def test_same_module_loaded_twice_is_not_a_duplicate() -> None:
    registry = Registry()
    module = _module_with("reloaded_plugin", A=_component("sampler", "once"))
    registry.load_module(module)
    registry.load_module(module)
    assert registry.names("sampler") == ["once"]


def test_module_without_components_is_refused() -> None:
    empty = _module_with("empty_plugin", helper=type("Helper", (), {}))
    with pytest.raises(RegistryError, match="module 'empty_plugin' registers no component"):
        Registry().load_module(empty)


def test_imported_marked_class_does_not_count_for_the_importing_module() -> None:
    marked = _component("sampler", "elsewhere")  # defined in module "elsewhere" ...
    marked.__module__ = "elsewhere"
    importer = types.ModuleType("importer_plugin")
    importer.Marked = marked  # ... and only imported here
    with pytest.raises(RegistryError, match="registers no component"):
        Registry().load_module(importer)


def test_subclass_does_not_inherit_the_mark() -> None:
    parent = _component("sampler", "parent")
    child = type("Child", (parent,), {"__doc__": "Unmarked subclass."})
    with pytest.raises(RegistryError, match="registers no component"):
        Registry().load_module(_module_with("child_plugin", Child=child))


def test_import_hieros_registers_nothing() -> None:
    """No registration by import side effects: importing the package (or its CLI) loads no component module."""
    script = textwrap.dedent(
        f"""
        import gc, json, sys
        import hieros, hieros.registry, hieros.config, hieros.components, hieros.__main__
        from hieros.registry import Registry
        loaded = sorted(m for m in sys.modules if m.startswith({COMPONENT_PACKAGES!r}))
        registries = sum(isinstance(o, Registry) for o in gc.get_objects())
        print(json.dumps({{"loaded": loaded, "registries": registries}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": [], "registries": 0}


# ------------------------------------------------------------------------------------------- third-party plugins
@pytest.fixture(scope="module")
def plugin_site(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/plugin_pkg built into a wheel and installed into a fresh folder (entry point included), offline."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(
        repo_root / "tests" / "plugin_pkg",
        work / "src",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    site = work / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    wheel = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wheel.returncode == 0, wheel.stdout + wheel.stderr
    (wheel_file,) = (work / "dist").glob("hieros_example_plugin-*.whl")
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (site / "hieros_example_plugin" / "conf" / "sampler" / "newest_only.yaml").is_file()
    return site


def _row(table: str, name: str) -> list[str]:
    """The cells of the rich table row whose name column is ``name``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if len(cells) == 5 and cells[1] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{table}")


def test_components_cli_lists_builtins_with_their_config_files(builtin: Registry, capsys) -> None:
    from hieros.components.__main__ import main

    main([])
    table = capsys.readouterr().out
    for group, names in BUILTIN.items():
        for name in names:
            row = _row(table, name)
            assert row[0] == group
            assert row[2] == f"conf/{group}/{name}.yaml"
            assert row[3] == f"{builtin.info(group, name).module}.{builtin.get(group, name).__qualname__}"
            assert row[4] == builtin.info(group, name).description
    assert _row(table, "rssm")[4].startswith("RSSM: h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])")  # not read as rich markup
    main(["env"])
    assert [line for line in capsys.readouterr().out.splitlines() if "sampler" in line] == []


@pytest.mark.slow
def test_plugin_component_and_config_file_are_found(plugin_site: Path, python_runner, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, runpy, sys
        import numpy as np
        from hydra import compose, initialize_config_module
        from hieros.config import validate
        from hieros.registry import Registry

        sys.argv = ["hieros-components", "sampler"]
        runpy.run_module("hieros.components", run_name="__main__", alter_sys=True)  # python -m hieros.components

        registry = Registry.default()
        with initialize_config_module(config_module="hieros.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["sampler=newest_only"])
        validate(cfg, registry)
        sampler = registry.build("sampler", cfg.sampler)
        draws = sampler.indices(100, 1000, np.random.default_rng(0))
        print(json.dumps({"names": registry.names("sampler"), "recent": sampler.recent,
                          "lo": int(draws.min()), "hi": int(draws.max())}))
        """
    )
    done = python_runner("-c", script, cwd=tmp_path, pythonpath=plugin_site)
    assert done.returncode == 0, done.stderr
    table, result = done.stdout.strip().rsplit("\n", 1)
    assert _row(table, "newest_only") == [
        "sampler",
        "newest_only",
        "pkg://hieros_example_plugin.conf/sampler/newest_only.yaml",
        "hieros_example_plugin.NewestOnly",
        "Uniform over the ``recent`` newest stored items only.",
    ]
    assert _row(table, "etbs")[2] == "conf/sampler/etbs.yaml"
    assert json.loads(result) == {
        "names": ["etbs", "etbs_original", "newest_only", "tbs", "uniform"],
        "recent": 4,
        "lo": 96,
        "hi": 99,
    }

    composed = python_runner(
        "-m", "hieros", "sampler=newest_only", "--cfg", "job", cwd=tmp_path, pythonpath=plugin_site
    )
    assert composed.returncode == 0, composed.stderr
    assert yaml.safe_load(composed.stdout)["sampler"] == {"name": "newest_only", "recent": 4}


def test_without_the_plugin_its_option_is_unknown(python_runner, tmp_path: Path) -> None:
    done = python_runner("-m", "hieros", "sampler=newest_only", "--cfg", "job", cwd=tmp_path)
    assert done.returncode != 0
    assert "newest_only" in done.stderr and "etbs" in done.stderr  # Hydra lists the available options


def _fake_distribution(site: Path, module_source: str) -> None:
    """An installed distribution 'broken-plugin' whose entry point names the module ``broken_plugin``."""
    info = site / "broken_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hieros.plugins]\nbroken = broken_plugin\n")
    (site / "broken_plugin.py").write_text(module_source)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise ImportError('needs libfoo')\n", "failed to import: ImportError: needs libfoo"),
        (
            "HIEROS_CONFIG_PATH = 'broken_plugin/conf'\n",
            "broken_plugin.HIEROS_CONFIG_PATH='broken_plugin/conf' is invalid",
        ),
    ],
    ids=["import-error", "bad-config-path"],
)
def test_a_broken_plugin_is_named_in_the_error(source: str, expected: str, python_runner, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, source)
    composed = python_runner("-m", "hieros", "--cfg", "job", cwd=tmp_path, pythonpath=site)  # the search-path plugin
    assert composed.returncode != 0
    last_line = composed.stderr.strip().splitlines()[-1]
    assert "hieros plugin entry point 'broken' = 'broken_plugin'" in last_line
    assert expected in last_line


def test_the_registry_and_the_components_cli_name_a_broken_plugin(
    builtin: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    from hieros.components.__main__ import main

    _fake_distribution(tmp_path, "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # entry points are read from sys.path when asked for
    expected = "plugin entry point 'broken' = 'broken_plugin' failed to import: needs libfoo"
    with pytest.raises(RegistryError, match=re.escape(expected)):
        Registry.default()
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"hieros-components: {expected}"]
