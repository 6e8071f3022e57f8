"""Fabric precisions (``fabric.precision``): each allowed one trains a real tiny agent with the dtypes it promises (the
S5 scan in float32/complex64 under all), checkpoints round-trip under each (old checkpoints too), 16-mixed's loss
scaler makes one scaler iteration per backward pass, refused values fail in one line, the numerics switches apply and
restore, and 32-true through Fabric's wrappers is bit for bit the plain path.

``16-mixed`` is refused on a CPU (Lightning would run bf16-mixed); its machinery runs here with the CPU's fp16 autocast
and a real ``GradScaler`` (Fabric's ``MixedPrecision("16-mixed", "cpu")`` plugin), which is what a GPU run uses.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins.precision import MixedPrecision
from omegaconf import OmegaConf
from torch import nn

from helpers import config_composer, random_batch
from hieros.agent.hierarchy import Hierarchy
from hieros.agent.learner import Learner
from hieros.agent.subactor import Subactor
from hieros.config import ConfigError, validate
from hieros.nets.s5 import S5Layer
from hieros.training.checkpoint import CheckpointDir, load_file
from hieros.training.loop import Run
from hieros.training.numerics import torch_numerics
from hieros.training.precision import fabric_arguments
from hieros.training.tracking import Tracker

pytestmark = pytest.mark.usefixtures("single_thread")

PRECISIONS = ["32-true", "bf16-mixed", "bf16-true", "16-mixed"]
COMPUTE_DTYPE = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16}
COMPUTE_DTYPE["16-mixed"] = torch.float16
compose_config = config_composer(
    "model=tiny",
    "env=gym",
    "fabric=cpu",
    "logger=none",
    "hierarchy.layers=2",
    "hierarchy.k=2",
    "agent.actor_critic.imag_starts=8",
    "agent.actor_critic.imag_horizon=4",
    "training.batch_size=4",
    "training.batch_length=8",
    "training.min_windows=4",
    "training.replay_capacity=64",
)


def cpu_fabric(precision: str) -> Fabric:
    if precision == "16-mixed":
        return Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu")])
    return Fabric(accelerator="cpu", devices=1, **fabric_arguments(precision, "cpu"))


def make_run(precision: str, run_dir: Path, registry) -> Run:
    torch.manual_seed(0)
    return Run(compose_config(f"fabric.precision={precision}"), registry, run_dir, cpu_fabric(precision))


def _sampler(agent, rng: np.random.Generator):
    return lambda index: random_batch(agent, index, rng, batch=4)


def train(run: Run, updates: int, seed: int = 0) -> list[dict[str, dict[str, torch.Tensor]]]:
    sample = _sampler(run.agent, np.random.default_rng(seed))
    return [run.learner.train_step(sample, run.fabric) for _ in range(updates)]


def is_float32_island(name: str, run: Run) -> bool:
    """Parameters of S5 layers and buffers of return normalisers: float32 under every precision."""
    owner = run.agent.module.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(owner, S5Layer) or ".normalizers." in name


# ------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_trains_with_the_dtypes_it_promises(precision, registry, tmp_path):
    run = make_run(precision, tmp_path / "run", registry)
    weights = torch.bfloat16 if precision == "bf16-true" else torch.float32
    tensors = {**dict(run.agent.module.named_parameters()), **dict(run.agent.module.named_buffers())}
    floating = {name: t for name, t in tensors.items() if t.is_floating_point()}
    islands = {name for name in floating if is_float32_island(name, run)}
    assert sum(".Lambda" in name for name in islands) == 4  # 2 levels x 1 tiny block x 2 S5 layers
    assert {floating[name].dtype for name in islands} == {torch.float32}
    assert {t.dtype for name, t in floating.items() if name not in islands} == {weights}

    # what the networks compute in (inside the training step's autocast): a Linear layer, and the S5 scan
    actor = run.agent.levels[0].actor_critic.actor
    layer = run.agent.levels[0].world_model.dynamics.blocks[0].s5_1
    with run.fabric.autocast():
        logits = actor(torch.randn(2, actor.in_dim))
        y, x = layer(torch.randn(2, 5, layer.d_model, dtype=logits.dtype))
    assert logits.dtype == COMPUTE_DTYPE[precision]
    assert (y.dtype, x.dtype) == (torch.float32, torch.complex64)

    before = {name: t.detach().clone() for name, t in run.agent.module.named_parameters()}
    metrics = train(run, 3)
    losses = {f"{prefix}{key}": float(v) for m in metrics for prefix, ms in m.items() for key, v in ms.items()}
    losses = {key: value for key, value in losses.items() if key.endswith("_loss")}
    assert "train/level1/model_loss" in losses and "train/level0/actor_loss" in losses
    assert all(math.isfinite(value) for value in losses.values()), losses
    after = dict(run.agent.module.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(".s5_1.Lambda" in name for name in changed) and len(changed) > len(before) // 2
    assert all(after[name].dtype == before[name].dtype for name in before)  # the optimizers kept the dtypes

    obs = {"vector": np.zeros((1, 4), np.float32), "reward": np.zeros(1, np.float32)}
    obs |= {"is_first": np.ones(1, bool), "is_last": np.zeros(1, bool), "is_terminal": np.zeros(1, bool)}
    acting = run.agent.initial_acting_state(1, run.device)
    for _ in range(3):  # acting runs outside autocast: bf16-true's layers cast their inputs themselves
        actions, rows, acting = run.agent.act(obs, acting, "sampled")
        obs["is_first"][:] = False
    assert actions.shape == (1,) and rows[0]["vector"].dtype == np.float32
    float32_copy = copy.deepcopy(run.agent.module).float()  # what the MLflow logged model holds
    assert {t.dtype for t in float32_copy.parameters()} == {torch.float32}
    float32_copy.act(obs, float32_copy.initial_acting_state(1, run.device), "greedy")


def test_32_true_through_fabric_is_bit_for_bit_the_plain_path(registry):
    """setup_module / setup_optimizers at 32-true change nothing: same losses and weights as a plain module with its
    plain optimizers (what the loop did before Fabric set them up)."""
    cfg = OmegaConf.to_container(compose_config(), resolve=True)
    fabric = cpu_fabric("32-true")
    results = []
    for through_fabric in (False, True):
        torch.manual_seed(0)
        agent = Hierarchy(cfg, registry, {"vector": (4,)}, 2)
        if through_fabric:
            agent = fabric.setup_module(agent)
        learner = Learner(agent, 4, fabric if through_fabric else None)
        sample = _sampler(agent, np.random.default_rng(0))
        metrics = [learner.train_step(sample, fabric) for _ in range(3)]
        flat = [{key: float(v) for ms in m.values() for key, v in ms.items()} for m in metrics]
        results.append((flat, agent.state_dict()))
    (plain_metrics, plain_state), (fabric_metrics, fabric_state) = results
    assert fabric_metrics == plain_metrics
    assert plain_state.keys() == fabric_state.keys()
    assert all(torch.equal(plain_state[key], fabric_state[key]) for key in plain_state)


# ------------------------------------------------------------------------------------------ checkpoints
def _save(run: Run, directory: Path, step: int) -> dict:
    path = CheckpointDir(directory).save(run.fabric, run.state(Tracker()), step)
    return load_file(path)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_checkpoint_round_trips_under_each_precision(precision, registry, tmp_path):
    run = make_run(precision, tmp_path / "a", registry)
    train(run, 2)
    scaler = getattr(run.fabric.strategy.precision, "scaler", None)
    if scaler is not None:
        scaler.update(new_scale=512.0)  # a scale other than the fresh scaler's
    payload = _save(run, tmp_path / "checkpoints", 2)
    plain = run.agent.module.state_dict()
    assert payload["agent"].keys() == plain.keys()  # no Fabric wrapper prefix: old and new checkpoints agree
    assert ("grad_scaler" in payload) == (precision == "16-mixed")

    resumed = make_run(precision, tmp_path / "a", registry)  # a resume reopens the run directory's replay
    resumed.restore(payload)
    state = resumed.agent.module.state_dict()
    assert all(state[key].dtype == plain[key].dtype and torch.equal(state[key], plain[key]) for key in plain)
    for name, optimizer in run.learner.stateful().items():
        saved = optimizer.state_dict()
        loaded = resumed.learner.stateful()[name].state_dict()
        if name.startswith("scheduler/"):
            assert saved["last_epoch"] == loaded["last_epoch"] > 0
            continue
        assert saved["param_groups"] == loaded["param_groups"], name
        assert all(
            torch.equal(saved["state"][i][key], loaded["state"][i][key])
            for i in saved["state"]
            for key in saved["state"][i]
        ), name
    if scaler is not None:
        assert resumed.fabric.strategy.precision.scaler.get_scale() == 512.0
    metrics = train(resumed, 1, seed=1)
    assert all(math.isfinite(float(v)) for key, v in metrics[0]["train/level0/"].items() if key.endswith("_loss"))


@pytest.mark.parametrize("precision", ["32-true", "bf16-true", "16-mixed"])
def test_a_checkpoint_written_without_fabric_wrappers_loads(precision, registry, tmp_path):
    """A checkpoint of the loop before Fabric set the agent up (plain Hierarchy, plain optimizers, no scaler entry)."""
    old = make_run("32-true", tmp_path / "old", registry)
    old.agent = old.agent.module
    old.learner = Learner(old.agent, 4)
    train(old, 2)
    payload = _save(old, tmp_path / "checkpoints", 2)
    assert "grad_scaler" not in payload

    run = make_run(precision, tmp_path / "old", registry)
    run.restore(payload)
    saved = payload["agent"]
    for name, tensor in run.agent.module.state_dict().items():
        expected = saved[name] if is_float32_island(name, run) else saved[name].to(tensor.dtype)
        assert torch.equal(tensor, expected), name  # float32 islands exactly, bf16 weights rounded once
    assert train(run, 1)[0]["train/level0/"]


# --------------------------------------------------------------------------------------------- 16-mixed
def _two_linears() -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(3, 2), nn.Linear(3, 2)]


def _joint_step(modules: list[nn.Linear], fabric: Fabric, scale_b: float = 1.0) -> list[torch.Tensor]:
    optimizers = [torch.optim.AdamW(module.parameters(), lr=0.1, fused=True) for module in modules]
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    loss = modules[0](x).square().sum() + (modules[1](x) * scale_b).square().sum()
    return Subactor._step_jointly(loss, [(opt, m, 0.5) for opt, m in zip(optimizers, modules)], fabric)


def _scaled_fabric() -> Fabric:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    return Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])


def test_the_loss_scaler_unscales_each_optimizer_before_clipping_and_updates_once_per_backward():
    plain, scaled = _two_linears(), _two_linears()
    fabric = _scaled_fabric()
    plain_norms = _joint_step(plain, cpu_fabric("32-true"))
    scaled_norms = _joint_step(scaled, fabric)
    # a power-of-two scale is exact: same (unscaled) norms before clipping, same clipped steps
    assert [float(n) for n in scaled_norms] == [float(n) for n in plain_norms] and min(plain_norms) > 0.5
    assert all(torch.equal(a, b) for p, s in zip(plain, scaled) for a, b in zip(p.parameters(), s.parameters()))
    assert fabric.strategy.precision.scaler.get_scale() == 2.0**11  # two optimizers, one backward: grown once


def test_an_overflow_skips_only_that_optimizers_step_and_backs_the_scale_off_once():
    modules, fabric = _two_linears(), _scaled_fabric()
    before = [copy.deepcopy(module.state_dict()) for module in modules]
    norms = _joint_step(modules, fabric, scale_b=1e36)  # module 1's scaled gradients overflow float32
    assert math.isfinite(float(norms[0])) and not math.isfinite(float(norms[1]))
    assert not torch.equal(modules[0].weight, before[0]["weight"])  # stepped
    assert all(torch.equal(modules[1].state_dict()[key], before[1][key]) for key in before[1])  # skipped
    assert fabric.strategy.precision.scaler.get_scale() == 2.0**9


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["fabric.precision=64-true"], "fabric.precision='64-true' is invalid: allowed is 32-true | 32 | bf16-mixed"),
        (["fabric.precision=16-true"], "fabric.precision='16-true' is invalid: allowed is 32-true | 32 | bf16-mixed"),
        (["fabric.precision=fp8"], "fabric.precision='fp8' is invalid: allowed is 32-true | 32 | bf16-mixed"),
        (["fabric.precision=16-mixed"], "fabric.accelerator='cpu' is invalid with fabric.precision='16-mixed'"),
        (["fabric.devices=2"], "fabric.devices=2 is invalid: allowed is 1 (one device per run"),
        (["fabric.float32_matmul_precision=low"], "fabric.float32_matmul_precision='low' is invalid"),
        (["fabric.deterministic=true", "fabric.cudnn_benchmark=true"], "fabric.cudnn_benchmark=true is invalid"),
    ],
)
def test_refused_values_fail_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        validate(compose_config(*overrides))
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="16-mixed runs on a CUDA machine")
def test_16_mixed_with_auto_on_a_machine_without_gpu_exits_2_before_training(python_runner, tmp_path):
    run_dir = tmp_path / "run"
    done = python_runner(
        "-m", "hieros", "+experiment=smoke", "fabric.accelerator=auto", "fabric.precision=16-mixed", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("hieros:")]
    assert len(lines) == 1 and "fabric.precision='16-mixed' on this machine (no GPU)" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------- numerics
def test_the_numerics_switches_apply_inside_the_block_and_restore_after():
    cudnn = torch.backends.cudnn
    before = (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(), cudnn.benchmark)
    with torch_numerics("medium", "warn", False):
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert cudnn.deterministic
    with torch_numerics("high", False, True):
        assert torch.get_float32_matmul_precision() == "high" and cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
    assert (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(), cudnn.benchmark) == (
        before
    )
