"""``training.compile``: every level's update computations trace as whole graphs (no graph break) and give the same
update as eager mode (issue 14)."""

from __future__ import annotations

import copy

import pytest
import torch

from hieros.bench import agent as bench


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo compiles a method once per instance and caps recompiles of one code object (8): each test starts
    from an empty cache so that the hierarchies of earlier tests do not count against this one's."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _three_levels(return_norm: str):
    setup = dict(bench._QUICK)
    torch.manual_seed(0)
    hierarchy = bench._hierarchy("s5", setup)
    for level in hierarchy.levels:
        level.actor_critic.config["return_norm"] = return_norm
    batches = [bench._batch(hierarchy, index, setup) for index in range(len(hierarchy.levels))]
    return hierarchy, batches


def _two_updates(hierarchy, batches) -> list[dict[str, torch.Tensor]]:
    fabric, metrics = bench._fabric(), []
    for index, level in enumerate(hierarchy.levels):
        optimizers = level.make_optimizers()
        for _ in range(2):  # the second update runs with optimizer state and initialised normalisers
            torch.manual_seed(index)
            metrics.append(level.train_step(batches[index], optimizers, fabric)[0])
    return metrics


@pytest.mark.parametrize("return_norm", ["percentile", "none"])
def test_compiled_updates_trace_whole_and_match_eager(return_norm: str, single_thread) -> None:
    eager, batches = _three_levels(return_norm)
    compiled = copy.deepcopy(eager)
    compiled.compile_updates(backend="eager")  # fullgraph=True: any graph break raises here
    expected, got = _two_updates(eager, batches), _two_updates(compiled, batches)
    for level_expected, level_got in zip(expected, got):
        assert level_expected.keys() == level_got.keys()
        for key in level_expected:
            torch.testing.assert_close(level_got[key], level_expected[key], msg=key)
    for level_eager, level_compiled in zip(eager.levels, compiled.levels):
        for (name, p_eager), p_compiled in zip(level_eager.named_parameters(), level_compiled.parameters()):
            torch.testing.assert_close(p_compiled, p_eager, msg=name)


def test_compile_through_aot_autograd_runs(single_thread) -> None:
    """aot_eager also traces the backward passes (what inductor compiles), without generating kernels."""
    hierarchy, batches = _three_levels("percentile")
    hierarchy.compile_updates(backend="aot_eager")
    for metrics in _two_updates(hierarchy, batches):
        assert all(torch.isfinite(value).all() for value in metrics.values())
