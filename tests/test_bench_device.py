"""The benchmarks' device, precision and compile options (issue 14): ``python -m hieros.bench --device ...``.

The ``cuda`` tests run where torch sees a GPU (``pytest -m cuda``; ``scripts/gpu-check.sh`` runs them on a lent GPU
machine) and skip elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from hieros.bench import __main__ as cli
from hieros.bench import agent as agent_bench
from hieros.bench._device import CPU, BenchOptions, DeviceError, resolve_device

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _report(capsys: pytest.CaptureFixture[str], out: Path) -> dict:
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    return report


# ------------------------------------------------------------------------------------------------------ CPU


def test_options_reach_the_benchmarks_that_take_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    seen: dict[str, BenchOptions] = {}

    def run(quick: bool = False, options: BenchOptions | None = None) -> dict:
        seen["options"] = options
        return {"ok": 1}

    with_options = types.ModuleType("hieros.bench.fake_options")
    with_options.run = run
    plain = types.ModuleType("hieros.bench.fake_plain")
    plain.run = lambda quick=False: {"quick": quick}
    for module in (with_options, plain):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "discover", lambda: ["fake_options", "fake_plain"])

    out = tmp_path / "bench.json"
    argv = ["--quick", "--device", "cpu", "--precision", "bf16-mixed", "--compile", "aot_eager", "--out", str(out)]
    assert cli.main(argv) == 0
    report = _report(capsys, out)
    assert seen["options"] == BenchOptions("cpu", "bf16-mixed", compile=True, compile_backend="aot_eager")
    assert report["benchmarks"]["fake_options"]["device"] == "cpu"
    assert report["benchmarks"]["fake_plain"]["device"] == "cpu"  # it takes no options: it ran on the CPU
    assert report["benchmarks"]["fake_plain"]["result"] == {"quick": True}
    assert (report["device"], report["precision"], report["compile"]) == ("cpu", "bf16-mixed", "aot_eager")
    assert report["torch"] == torch.__version__ and report["device_name"]

    assert cli.main(["--device", "cpu", "--compile", "--out", str(out)]) == 0
    assert seen["options"].compile_backend == "inductor" and seen["options"].compile  # --compile alone: inductor
    assert _report(capsys, out)["compile"] == "inductor"


def test_device_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if CUDA else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="precision"):
        BenchOptions("cpu", "16-mixed")


@pytest.mark.skipif(CUDA, reason="checks the error where there is no CUDA device")
def test_device_cuda_without_cuda_is_a_one_line_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hieros.bench", "--device", "cuda", "--only", "sampler", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert "--device cuda" in done.stderr and "CUDA" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()


def test_quick_cpu_run_keeps_the_figures(tmp_path: Path, capsys, single_thread) -> None:
    out = tmp_path / "bench.json"
    assert cli.main(["--device", "cpu", "--quick", "--only", "s5", "world_model", "--out", str(out)]) == 0
    report = _report(capsys, out)
    assert (report["device"], report["precision"], report["compile"]) == ("cpu", "32-true", False)
    s5, world_model = (report["benchmarks"][name] for name in ("s5", "world_model"))
    assert s5["device"] == world_model["device"] == "cpu"
    s5, world_model = s5["result"], world_model["result"]
    assert s5["config"]["device"] == world_model["config"]["device"] == "cpu"
    figures = s5["sequence"]["T16"]
    for key in ("scan_forward_ms", "loop_forward_ms", "scan_train_ms", "loop_train_ms", "scan_saved_for_backward_mib"):
        assert figures[key] > 0, key
    assert s5["imagination"]["rollout_ms"] > 0
    for name in ("s5", "rssm", "gru"):
        assert world_model["update"][name]["s"] > 0 and world_model["update"][name]["gflop"] > 0
        assert world_model["imagination"][name]["forward_s"] > 0
        assert world_model["imagination"][name]["forward_backward_s"] > 0
    assert set(world_model["targets_met"]) == {"update_s5", "update_rssm", "s5_imagination_forward"}


def test_level0_update_phases_split_one_update(single_thread) -> None:
    """The two phases are measured inside real updates (the wrapped imagination runs) and add up to about one."""
    setup = {**agent_bench._QUICK, "iterations": 4}
    figures = agent_bench._level0_update("s5", setup, None, CPU)
    phases = figures["phases"]
    assert phases["iterations"] == 2
    assert phases["world_model_s"] > 0 and phases["imagination_actor_critic_s"] > 0
    # generous: the machine is shared; the phases are medians of other runs than ``s``
    assert (
        0.2 * figures["min_s"] < phases["world_model_s"] + phases["imagination_actor_critic_s"] < 5 * figures["max_s"]
    )
    assert figures["host_syncs"] == 0


# ----------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@needs_cuda
def test_sync_counter_on_cuda() -> None:
    from hieros.bench._syncs import CudaSyncWarnings

    x = torch.arange(4.0, device="cuda")
    with CudaSyncWarnings() as syncs:
        x * 2
    assert syncs.total == 0
    with CudaSyncWarnings() as syncs:
        x.sum().item()
        x.cpu()
    assert syncs.total >= 2, dict(syncs.by_site)  # .item() and the copy to the host
    assert all(site.startswith("test_bench_device.py:") for site in syncs.by_site), dict(syncs.by_site)
    assert torch.cuda.get_sync_debug_mode() == 0


@pytest.mark.cuda
@needs_cuda
def test_timing_waits_for_the_gpu() -> None:
    from hieros.bench._timing import timed

    a = torch.randn(4096, 4096, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ a
    end.record()
    torch.cuda.synchronize()
    kernel_s = start.elapsed_time(end) / 1e3 / 20
    assert timed(lambda: a @ a, iterations=5, warmup=2, device="cuda")["min_s"] >= 0.8 * kernel_s


@pytest.mark.cuda
@needs_cuda
def test_quick_agent_bench_on_cuda(single_thread) -> None:
    figures = agent_bench.run(quick=True, options=BenchOptions("cuda"))
    assert figures["config"]["device"] == "cuda" and figures["config"]["device_name"]
    level0 = figures["level0_update"]["s5"]
    assert level0["s"] > 0 and level0["host_syncs"] == 0
    assert sum(level0["host_syncs_cuda"].values()) == 0, level0["host_syncs_cuda"]
    assert level0["phases"]["world_model_s"] > 0
    assert figures["three_level"]["per_env_step_s"] > 0
    assert figures["policy_step"]["ms"] > 0 and "host_syncs_all_levels_act_cuda" in figures["policy_step"]
    assert figures["memory"]["measure"] == "cuda_allocated" and figures["memory"]["peak_mib"] > 0
    assert figures["loop"]["agent_steps"] >= 48


@pytest.mark.cuda
@needs_cuda
def test_quick_bf16_cli_on_cuda(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cuda", "--precision", "bf16-mixed", "--quick", "--only", "s5", "world_model"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    report = _report(capsys, out)
    assert report["device"] == "cuda" and report["device_name"] == torch.cuda.get_device_name()
    assert report["benchmarks"]["world_model"]["result"]["config"]["precision"] == "bf16-mixed"
    assert report["benchmarks"]["world_model"]["result"]["update"]["s5"]["s"] > 0
