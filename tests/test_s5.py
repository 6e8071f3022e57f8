"""Resettable S5: parallel scan == recurrence (values and gradients), resets, HiPPO-N init, block step == forward."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from hieros.nets.s5 import S5Block, S5Layer, hippo_n_init, linear_scan, resettable_scan


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def sequential_linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference x_t = a_t x_{t-1} + b_t over dim 1, one step at a time."""
    x = torch.zeros_like(b[:, 0])
    states = []
    for t in range(b.shape[1]):
        x = a[:, t] * x + b[:, t]
        states.append(x)
    return torch.stack(states, 1)


def reference_s5(layer: S5Layer, u: torch.Tensor, reset: torch.Tensor, dtype=torch.complex64):
    """x_t = Λ̄ ⊙ x_{t−1} (zeroed where reset) + B̄ u_t; y_t = Re(C x_t) + D ⊙ u_t, from the public API only."""
    lambda_bar, b_bar = layer.discretize()
    lambda_bar, b_bar, c = lambda_bar.to(dtype), b_bar.to(dtype), layer.C_tilde.to(dtype)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    u_c = u.to(real).to(dtype)
    x = torch.zeros(u.shape[0], layer.state_size, dtype=dtype)
    ys, xs = [], []
    for t in range(u.shape[1]):
        x = torch.where(reset[:, t, None], torch.zeros_like(x), lambda_bar * x) + u_c[:, t] @ b_bar.T
        ys.append((x @ c.T).real + layer.D.to(real) * u[:, t].to(real))
        xs.append(x)
    return torch.stack(ys, 1), torch.stack(xs, 1)


def random_resets(batch: int, length: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    reset = torch.rand(batch, length, generator=generator) < probability
    reset[:, 0] = True  # as the replay forces is_first[:, 0]
    return reset


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ----------------------------------------------------------------------------- scans


@pytest.mark.parametrize("length", [1, 2, 5, 8, 37, 64])
def test_linear_scan_matches_sequential_recurrence(length: int, gen: torch.Generator) -> None:
    a = torch.randn(3, length, 6, generator=gen, dtype=torch.float64)
    a[torch.rand(3, length, 1, generator=gen).expand_as(a) < 0.15] = 0.0  # restarts
    b = torch.randn(3, length, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b), sequential_linear(a, b), rtol=1e-12, atol=1e-12)


def test_linear_scan_complex_broadcast_and_dim(gen: torch.Generator) -> None:
    a = torch.randn(5, generator=gen, dtype=torch.complex128) * 0.9
    b = torch.randn(2, 19, 5, generator=gen, dtype=torch.complex128)
    expected = sequential_linear(a.expand_as(b), b)
    torch.testing.assert_close(linear_scan(a, b), expected)
    # time on the last axis, and a single unbatched sequence
    torch.testing.assert_close(linear_scan(a[:, None], b.transpose(1, 2), dim=-1), expected.transpose(1, 2))
    torch.testing.assert_close(linear_scan(a[0], b[0, :, 0], dim=0), expected[0, :, 0])


def test_resettable_scan_matches_recurrence_with_initial_state(gen: torch.Generator) -> None:
    lambda_bar = torch.polar(torch.rand(7, generator=gen, dtype=torch.float64), torch.randn(7, dtype=torch.float64))
    bu = torch.randn(4, 37, 7, generator=gen, dtype=torch.complex128)
    reset = torch.rand(4, 37, generator=gen) < 0.1
    x0 = torch.randn(4, 7, generator=gen, dtype=torch.complex128)
    a = lambda_bar * (~reset)[..., None]
    b = bu.clone()
    b[:, 0] += a[:, 0] * x0
    torch.testing.assert_close(resettable_scan(lambda_bar, bu, reset, x0), sequential_linear(a, b))


# ----------------------------------------------------------------------------- S5 layer


@pytest.mark.parametrize("length", [1, 16, 37])
def test_layer_parallel_matches_recurrence(length: int, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    layer = S5Layer(32, 16, blocks=4)
    u = torch.randn(4, length, 32, generator=gen)
    reset = random_resets(4, length, 0.1, gen)
    with torch.no_grad():
        y, x = layer(u, reset)
        y_ref, x_ref = reference_s5(layer, u, reset, dtype=torch.complex128)
    assert y.dtype == torch.float32 and x.dtype == torch.complex64
    assert y.shape == (4, length, 32) and x.shape == (4, length, 16)
    assert relative_error(x.to(torch.complex128), x_ref) < 1e-5
    assert relative_error(y.double(), y_ref) < 1e-5


def test_layer_paper_size_parallel_matches_recurrence(gen: torch.Generator) -> None:
    torch.manual_seed(1)
    layer = S5Layer(256, 128, blocks=4)
    u = torch.randn(2, 64, 256, generator=gen)
    reset = random_resets(2, 64, 0.05, gen)
    with torch.no_grad():
        y, x = layer(u, reset)
        y_ref, x_ref = reference_s5(layer, u, reset, dtype=torch.complex128)
    assert relative_error(x.to(torch.complex128), x_ref) < 1e-5
    assert relative_error(y.double(), y_ref) < 1e-5


def test_layer_gradients_parallel_match_sequential(gen: torch.Generator) -> None:
    torch.manual_seed(2)
    layer = S5Layer(24, 16, blocks=2)
    u = torch.randn(3, 37, 24, generator=gen, requires_grad=True)
    reset = random_resets(3, 37, 0.1, gen)
    weights_y = torch.randn(3, 37, 24, generator=gen)
    weights_x = torch.randn(3, 37, 16, generator=gen, dtype=torch.complex64)

    def loss_and_grads(run):
        y, x = run()
        loss = (y * weights_y).sum() + (x * weights_x).real.sum()
        names = [name for name, _ in layer.named_parameters()]
        grads = torch.autograd.grad(loss, [p for _, p in layer.named_parameters()] + [u])
        return dict(zip(names + ["u"], grads))

    parallel = loss_and_grads(lambda: layer(u, reset))
    sequential = loss_and_grads(lambda: reference_s5(layer, u, reset))
    assert set(parallel) == {"Lambda", "B", "C", "D", "log_step", "u"}
    for name, grad in parallel.items():
        assert grad.abs().max() > 0, name
        assert relative_error(grad, sequential[name]) < 1e-4, name


def test_layer_step_matches_forward_and_reuses_discretization(gen: torch.Generator) -> None:
    torch.manual_seed(3)
    layer = S5Layer(16, 8, blocks=2)
    u = torch.randn(5, 21, 16, generator=gen)
    reset = random_resets(5, 21, 0.15, gen)
    with torch.no_grad():
        y, x = layer(u, reset)
        discretized = layer.discretize()
        state = layer.initial_state(5)
        for t in range(21):
            y_t, state = layer.step(u[:, t], state, reset[:, t], discretized=discretized)
            previous = x[:, t - 1] if t else layer.initial_state(5)
            y_fresh, _ = layer.step(u[:, t], previous, reset[:, t])  # discretises itself
            y_plain, _ = layer.step(u[:, t], previous, reset[:, t], discretized=tuple(discretized))
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(state, x[:, t], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(y_fresh, y[:, t], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(y_plain, y[:, t], rtol=1e-5, atol=1e-5)
        lambda_bar, b_bar = copy.deepcopy(discretized)  # behaves as the 2-tuple (Λ̄, B̄)
        assert lambda_bar.shape == (8,) and b_bar.shape == (8, 16) and b_bar.dtype == torch.complex64


def test_reset_cuts_all_dependence_on_the_past(gen: torch.Generator) -> None:
    torch.manual_seed(4)
    layer = S5Layer(16, 8, blocks=2)
    u = torch.randn(2, 37, 16, generator=gen)
    reset = torch.zeros(2, 37, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, 20] = True  # only row 0 restarts at t=20
    perturbed = u.clone()
    perturbed[:, :20] += torch.randn(2, 20, 16, generator=gen)
    with torch.no_grad():
        y, x = layer(u, reset)
        y_p, x_p = layer(perturbed, reset)
    assert torch.equal(y[0, 20:], y_p[0, 20:]) and torch.equal(x[0, 20:], x_p[0, 20:])
    assert not torch.allclose(y[0, :20], y_p[0, :20])
    assert not torch.allclose(y[1, 20:], y_p[1, 20:])  # without a reset the perturbation carries over


def test_reset_equals_fresh_sequence(gen: torch.Generator) -> None:
    torch.manual_seed(5)
    layer = S5Layer(16, 8, blocks=2)
    u = torch.randn(1, 30, 16, generator=gen)
    reset = torch.zeros(1, 30, dtype=torch.bool)
    reset[0, 11] = True
    with torch.no_grad():
        y, _ = layer(u, reset)
        y_fresh, _ = layer(u[:, 11:])
    torch.testing.assert_close(y[:, 11:], y_fresh, rtol=1e-5, atol=1e-6)


def test_initial_state_continues_a_window(gen: torch.Generator) -> None:
    torch.manual_seed(6)
    layer = S5Layer(16, 8, blocks=2)
    u = torch.randn(3, 40, 16, generator=gen)
    reset = random_resets(3, 40, 0.05, gen)
    reset[1, 25] = True
    with torch.no_grad():
        y, x = layer(u, reset)
        y_a, x_a = layer(u[:, :25], reset[:, :25])
        y_b, x_b = layer(u[:, 25:], reset[:, 25:], initial_state=x_a[:, -1])
    torch.testing.assert_close(torch.cat([y_a, y_b], 1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([x_a, x_b], 1), x, rtol=1e-5, atol=1e-5)


def test_zoh_discretization_matches_matrix_exponential() -> None:
    torch.manual_seed(7)
    layer = S5Layer(8, 8, blocks=2)
    lambda_bar, b_bar = layer.discretize()
    delta = torch.exp(layer.log_step.detach()).double()
    lam = layer.eigenvalues.detach().to(torch.complex128)
    # d/dt [x; 1] = [[λ, 1], [0, 0]] [x; 1]  ⇒  exp(Δ·M) = [[e^{λΔ}, (e^{λΔ} − 1)/λ], [0, 1]]
    m = torch.zeros(8, 2, 2, dtype=torch.complex128)
    m[:, 0, 0], m[:, 0, 1] = lam * delta, delta.to(torch.complex128)
    expm = torch.linalg.matrix_exp(m)
    torch.testing.assert_close(lambda_bar.to(torch.complex128), expm[:, 0, 0], rtol=1e-6, atol=1e-7)
    expected_b = expm[:, 0, 1, None] * layer.B_tilde.detach().to(torch.complex128)
    torch.testing.assert_close(b_bar.detach().to(torch.complex128), expected_b, rtol=1e-5, atol=1e-7)


def test_hippo_n_initialisation_facts() -> None:
    torch.manual_seed(8)
    hidden, state, blocks = 64, 128, 4
    layer = S5Layer(hidden, state, blocks=blocks)
    n = state // blocks
    # independent construction of S = A + p pᵀ from the HiPPO-LegS definition
    s = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            a_ik = -math.sqrt((2 * i + 1) * (2 * k + 1)) if i > k else (-(i + 1) if i == k else 0.0)
            s[i, k] = a_ik + math.sqrt(i + 0.5) * math.sqrt(k + 0.5)
    eig = np.linalg.eigvals(s)
    lam = layer.eigenvalues.detach()
    # complex parameters are stored as real (..., 2) views (fused AdamW takes no complex tensors)
    assert all(not p.is_complex() and p.dtype == torch.float32 for p in layer.parameters())
    assert (
        layer.Lambda.shape == (state, 2) and layer.B.shape == (state, hidden, 2) and layer.C.shape == (hidden, state, 2)
    )
    assert layer.eigenvalues.dtype == torch.complex64 and layer.C_tilde.shape == (hidden, state)
    assert layer.D.shape == (hidden,) and layer.log_step.shape == (state,)
    torch.testing.assert_close(lam.real, torch.full((state,), -0.5))
    np.testing.assert_allclose(np.sort(lam.imag[:n].numpy()), np.sort(eig.imag), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(eig.real, -0.5, atol=1e-8)
    for j in range(1, blocks):  # J identical blocks tile the spectrum
        assert torch.equal(lam[j * n : (j + 1) * n], lam[:n])
    lam_block, eigvecs = hippo_n_init(n)
    torch.testing.assert_close(eigvecs.conj().T @ eigvecs, torch.eye(n, dtype=torch.complex128))
    torch.testing.assert_close(eigvecs @ torch.diag(lam_block) @ eigvecs.conj().T, torch.from_numpy(s).to(eigvecs))
    step = torch.exp(layer.log_step.detach())
    assert step.min() >= 0.001 * (1 - 1e-6) and step.max() <= 0.1 * (1 + 1e-6)
    assert step.min() < 0.003 and step.max() > 0.03  # log-uniform spread, one Δ per state
    assert torch.all((layer.D >= 0) & (layer.D < 1))
    # V unitary ⇒ the variances of B₀ (1/P) and C₀ (2/(H·P), complex) survive the basis change
    assert abs(layer.B_tilde.detach().abs().pow(2).mean().item() * state - 1.0) < 0.05
    assert abs(layer.C_tilde.detach().abs().pow(2).mean().item() * hidden * state / 2 - 1.0) < 0.05


def test_layer_runs_in_float32_under_autocast(gen: torch.Generator) -> None:
    torch.manual_seed(9)
    layer = S5Layer(16, 8, blocks=2)
    u = torch.randn(2, 9, 16, generator=gen)
    reset = random_resets(2, 9, 0.2, gen)
    with torch.no_grad():
        y, x = layer(u, reset)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ac, x_ac = layer(u.bfloat16(), reset)
            y_step, x_step = layer.step(u[:, 0].bfloat16(), layer.initial_state(2), reset[:, 0])
    assert y_ac.dtype == torch.float32 and x_ac.dtype == torch.complex64 and y_step.dtype == torch.float32
    y_bf, _ = layer(u.bfloat16().float(), reset)
    torch.testing.assert_close(y_ac, y_bf)


def test_layer_rejects_bad_inputs() -> None:
    layer = S5Layer(16, 8, blocks=2)
    with pytest.raises(ValueError, match="divisible by blocks"):
        S5Layer(16, 10, blocks=4)
    with pytest.raises(ValueError, match=r"u \(B, T, 16\)"):
        layer(torch.zeros(2, 5, 15), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="reset"):
        layer(torch.zeros(2, 5, 16), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="complex state"):
        layer.step(torch.zeros(2, 16), torch.zeros(2, 8), torch.zeros(2, dtype=torch.bool))


# ----------------------------------------------------------------------------- double block


def test_block_step_matches_forward(gen: torch.Generator) -> None:
    torch.manual_seed(10)
    block = S5Block(32, 16, blocks=4, dropout=0.1).eval()
    x = torch.randn(3, 23, 32, generator=gen)
    reset = random_resets(3, 23, 0.15, gen)
    with torch.no_grad():
        out, states = block(x, reset)
        assert out.shape == (3, 23, 32) and states.shape == (3, 23, block.state_size_total) == (3, 23, 32)
        discretized = block.discretize()
        state = block.initial_state(3)
        for t in range(23):
            out_t, state = block.step(x[:, t], state, reset[:, t], discretized=discretized)
            torch.testing.assert_close(out_t, out[:, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(state, states[:, t], rtol=1e-4, atol=1e-5)


def test_block_structure_matches_spec(gen: torch.Generator) -> None:
    torch.manual_seed(11)
    block = S5Block(16, 8, blocks=2).eval()
    x = torch.randn(2, 11, 16, generator=gen)
    reset = random_resets(2, 11, 0.2, gen)
    gelu = torch.nn.functional.gelu
    with torch.no_grad():
        out, states = block(x, reset)
        y1, x1 = block.s5_1(block.norm_1(x), reset)
        h = gelu(block.linear_1(y1)) + x
        y2, x2 = block.s5_2(block.norm_2(h), reset)
        h = gelu(block.linear_2(y2)) + h
        expected = h + block.norm_3(h)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(states, torch.cat([x1, x2], -1))
    assert block.linear_1.bias is None and block.norm_1.eps == 1e-5


def test_block_gradients_flow_to_all_parameters(gen: torch.Generator) -> None:
    torch.manual_seed(12)
    block = S5Block(16, 8, blocks=2)
    x = torch.randn(2, 13, 16, generator=gen, requires_grad=True)
    out, states = block(x, random_resets(2, 13, 0.2, gen))
    (out.square().sum() + states.abs().sum()).backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_checkpoint_with_complex_parameters_and_adam_moments_loads(gen: torch.Generator) -> None:
    """Before issue 14, Λ and C̃ were complex64 parameters trained by a foreach AdamW; a checkpoint of that layout
    (module and optimizer state) must load into the real-view layout and continue exactly as the old one would."""
    from hieros.agent.subactor import _adamw

    layer = S5Layer(6, 8, blocks=2, generator=gen)
    u, reset = torch.randn(2, 5, 6, generator=gen), torch.zeros(2, 5, dtype=torch.bool)
    # the old layout: complex parameters, trained two steps with the complex-capable foreach AdamW
    old = S5Layer(6, 8, blocks=2)
    old.Lambda = torch.nn.Parameter(layer.eigenvalues.detach().clone())
    old.C = torch.nn.Parameter(layer.C_tilde.detach().clone())
    old.B = torch.nn.Parameter(layer.B.detach().clone())
    old.D, old.log_step = (
        torch.nn.Parameter(layer.D.detach().clone()),
        torch.nn.Parameter(layer.log_step.detach().clone()),
    )

    def old_output(module: S5Layer) -> torch.Tensor:  # the layer's output, written for either layout
        step = torch.exp(module.log_step)
        lam = module.Lambda if module.Lambda.is_complex() else module.eigenvalues
        c = module.C if module.C.is_complex() else module.C_tilde
        lambda_bar = torch.exp(lam * step)
        b_bar = ((lambda_bar - 1) / lam)[:, None] * module.B_tilde
        x = resettable_scan(lambda_bar, torch.einsum("ph,bth->btp", b_bar, u.to(torch.complex64)), reset)
        return (x @ c.T).real + module.D * u

    old_opt = torch.optim.AdamW(old.parameters(), lr=1e-2, eps=1e-8, weight_decay=0.0, foreach=True)
    for _ in range(2):
        old_opt.zero_grad()
        old_output(old).pow(2).mean().backward()
        old_opt.step()
    assert old.Lambda.is_complex() and old_opt.state_dict()["state"][0]["exp_avg"].is_complex()

    saved = io.BytesIO()  # through a file, as a checkpoint is (no tensor shared with the old optimizer)
    torch.save({"module": old.state_dict(), "optimizer": old_opt.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved)
    new = S5Layer(6, 8, blocks=2)
    new.load_state_dict(checkpoint["module"])
    new_opt = _adamw(new.parameters(), {"eps": 1e-8}, 1e-2)
    new_opt.load_state_dict(checkpoint["optimizer"])
    assert new_opt.param_groups[0]["fused"] and all(not p.is_complex() for p in new.parameters())
    torch.testing.assert_close(new.eigenvalues, old.Lambda.detach())
    torch.testing.assert_close(new.C_tilde, old.C.detach())
    for model, opt in ((old, old_opt), (new, new_opt)):  # one more step each: the same update
        opt.zero_grad()
        old_output(model).pow(2).mean().backward()
        opt.step()
    torch.testing.assert_close(new.eigenvalues, old.Lambda.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new.C_tilde, old.C.detach(), rtol=1e-5, atol=1e-6)
