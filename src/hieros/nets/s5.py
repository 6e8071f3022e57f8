"""Resettable S5 layer and HIEROS' double S5 block (spec §3.2, §3.3; paper §2.2, App. A.3).

S5 layer (Smith et al. 2023) with the reset of Lu et al. (2023), per layer with state size P and width H:

    Λ̄ = exp(ΛΔ),  B̄ = ((Λ̄ − 1) / Λ) ⊙ B̃                      (ZOH, Δ = exp(log_step) ∈ [dt_min, dt_max] at init)
    x_t = Λ̄ ⊙ x_{t−1} · (1 − reset_t) + B̄ u_t,   x_{−1} = 0
    y_t = Re(C̃ x_t) + D ⊙ u_t

Λ (P,), B̃ (P, H) and C̃ (H, P) are complex; each is stored as a real parameter with a trailing (real, imaginary)
axis — ``Lambda`` (P, 2), ``B`` (P, H, 2), ``C`` (H, P, 2) — so that the fused AdamW kernel, which takes no complex
tensors, can train them (issue 14; Adam on a complex tensor is Adam on its real view, so the update is the same).
Checkpoints written with complex64 ``Lambda``/``C`` load unchanged (converted on load). D (H,) and log_step (P,)
are real. All P eigenvalues are kept (no conjugate-pair halving, no factor 2). ``reset_t`` means "start from a
zero state before step t": x_t = B̄ u_t. The layer computes in float32/complex64 even under ``torch.autocast``.

The parallel form is a log-depth, work-efficient scan over time: 2·ceil(log2 T) vectorised levels, no recursion
and no per-timestep loop (:func:`linear_scan`, :func:`resettable_scan`).

Why one file of ~430 lines: the scans, the layer and the double block are one numerical unit that the equivalence
tests (parallel scan = recurrence, resets, gradients; ``tests/test_s5.py``) check together; about a third of it is
docstrings and input checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hieros.nets.float32 import Float32Module


class Discretization(tuple):
    """(Λ̄ (P,), B̄ (P, H)) complex64 of one S5 layer; unpacks like the 2-tuple it is.

    It also carries the real-GEMM forms the layer multiplies with, so a rollout that reuses one
    discretisation copies no weights per step: ``input_weight`` (2P, H) holds B̄ with the real and imaginary
    rows of each state interleaved, ``output_weight`` (H, 2P) holds [Re C̃, −Im C̃] interleaved per state.
    """

    input_weight: Tensor
    output_weight: Tensor

    def __new__(cls, lambda_bar: Tensor, b_bar: Tensor, output_weight: Tensor) -> Discretization:
        self = super().__new__(cls, (lambda_bar, b_bar))
        state_size, d_model = b_bar.shape
        self.input_weight = torch.view_as_real(b_bar).transpose(1, 2).reshape(2 * state_size, d_model)
        self.output_weight = output_weight
        return self

    def __getnewargs__(self) -> tuple[Tensor, Tensor, Tensor]:
        return self[0], self[1], self.output_weight


Discretized = tuple[Tensor, Tensor]
"""(Λ̄ (P,) complex, B̄ (P, H) complex) of one S5 layer, e.g. a :class:`Discretization`."""

_TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978


# ----------------------------------------------------------------------------- initialisation


def normal_hippo_matrix(block_size: int) -> Tensor:
    """S = A + p pᵀ (float64, N × N): the normal part of HiPPO-LegS.

    A_nk = −sqrt((2n+1)(2k+1)) for n > k, A_nn = −(n+1), 0 above the diagonal; p_n = sqrt(n + ½).
    S = −½ I + K with K skew-symmetric.
    """
    n = torch.arange(block_size, dtype=torch.float64)
    scale = torch.sqrt(2 * n + 1)
    hippo = -(torch.tril(scale[:, None] * scale[None, :]) - torch.diag(n))
    p = torch.sqrt(n + 0.5)
    return hippo + p[:, None] * p[None, :]


def hippo_n_init(block_size: int) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition S = V diag(Λ) Vᴴ used by S5's HiPPO-N init (complex128).

    Re Λ = mean(diag S) = −½; Im Λ and V are the eigenvalues/eigenvectors of the Hermitian matrix −i·K,
    K = S − diag(S) the skew-symmetric part.
    """
    if block_size < 1:
        raise ValueError(f"HiPPO block size must be >= 1, got {block_size}")
    s = normal_hippo_matrix(block_size)
    diag = torch.diagonal(s)
    skew = s - torch.diag(diag)
    imag, eigvecs = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    lambda_ = torch.complex(diag.mean().expand(block_size).clone(), imag)
    return lambda_, eigvecs


def _lecun_truncated_normal(shape: tuple[int, ...], variance: float, generator: torch.Generator | None) -> Tensor:
    """Truncated normal on ±2σ rescaled so the variance is exactly ``variance`` (JAX ``lecun_normal``)."""
    std = math.sqrt(variance) / _TRUNCATED_NORMAL_STD_CORRECTION
    out = torch.empty(shape, dtype=torch.float64)
    return nn.init.trunc_normal_(out, 0.0, std, -2.0 * std, 2.0 * std, generator=generator)


# ----------------------------------------------------------------------------- scans


def _append_zero_step(x: Tensor) -> Tensor:
    """Pad dim 1 by one zero element (makes an odd level even; the pad is dropped again)."""
    return torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)


def linear_scan(a: Tensor, b: Tensor, dim: int = 1) -> Tensor:
    """All x_t of x_t = a_t ⊙ x_{t−1} + b_t with x_{−1} = 0 along ``dim``.

    ``a`` broadcasts against ``b`` (e.g. a (P,) against b (B, T, P)); a_t = 0 restarts the recurrence at t.
    Work-efficient parallel scan (odd-even reduction, Blelloch 1990) with the associative combine
    (a_i, b_i) ∘ (a_j, b_j) = (a_j a_i, a_j b_i + b_j): ceil(log2 T) vectorised up-sweep levels halve the
    sequence, as many down-sweep levels fill in the even positions. O(T) work, no recursion, no time loop.
    """
    a = torch.broadcast_to(a, torch.broadcast_shapes(a.shape, b.shape))
    b = torch.broadcast_to(b, a.shape)
    a, b = a.movedim(dim, 0), b.movedim(dim, 0)  # time first
    levels = []
    while b.shape[0] > 1:
        length = b.shape[0]
        if length % 2:
            a, b = (torch.cat([v, v.new_zeros(1, *v.shape[1:])]) for v in (a, b))
        levels.append((a, b, length))
        a_odd = a[1::2]
        b = torch.addcmul(b[1::2], a_odd, b[0::2])  # pair (2i, 2i+1) combined
        a = a_odd * a[0::2]
    x = b
    for a, b, length in reversed(levels):
        # x holds the results at odd positions 1, 3, ...; even position 2i follows from 2i − 1
        x_even = torch.cat([b[:1], torch.addcmul(b[2::2], a[2::2], x[:-1])])
        x = torch.stack([x_even, x], 1).reshape(b.shape)[:length]
    return x.movedim(0, dim)


def resettable_scan(lambda_bar: Tensor, bu: Tensor, reset: Tensor, initial_state: Tensor | None = None) -> Tensor:
    """States x (B, T, P) of x_t = Λ̄ ⊙ x_{t−1} · (1 − reset_t) + bu_t, x_{−1} = ``initial_state`` or 0.

    Shapes: lambda_bar (P,), bu (B, T, P), reset (B, T) bool, initial_state (B, P).
    :func:`linear_scan` specialised to a time-invariant Λ̄: at reduction level k an element spans 2^k steps,
    so its coefficient is Λ̄^(2^k) · keep (keep = "no reset inside the span"); only a (B, T) mask and one
    (P,) power are reduced instead of a (B, T, P) coefficient tensor.
    """
    if bu.ndim != 3 or reset.shape != bu.shape[:2] or lambda_bar.shape != bu.shape[2:]:
        raise ValueError(
            f"resettable_scan expects lambda_bar (P,), bu (B, T, P), reset (B, T); got {tuple(lambda_bar.shape)}, "
            f"{tuple(bu.shape)}, {tuple(reset.shape)}"
        )
    keep = (~reset.to(torch.bool)).to(bu.real.dtype)
    x = bu
    if initial_state is not None:
        x = torch.cat([x[:, :1] + keep[:, :1, None] * (lambda_bar * initial_state)[:, None], x[:, 1:]], 1)
    power = lambda_bar
    levels = []
    while x.shape[1] > 1:
        length = x.shape[1]
        if length % 2:
            x, keep = _append_zero_step(x), _append_zero_step(keep)
        levels.append((x, keep, power, length))
        keep_odd = keep[:, 1::2]
        x = torch.addcmul(x[:, 1::2], keep_odd[..., None] * power, x[:, 0::2])
        keep = keep[:, 0::2] * keep_odd
        power = power * power
    for b, keep, power, length in reversed(levels):
        x_even = torch.cat([b[:, :1], torch.addcmul(b[:, 2::2], keep[:, 2::2, None] * power, x[:, :-1])], 1)
        x = torch.stack([x_even, x], 2).reshape(b.shape)[:, :length]
    return x


# ----------------------------------------------------------------------------- S5 layer


def _real_view(value: Tensor) -> Tensor:
    """A complex tensor (...) as a contiguous float32 tensor (..., 2) of (real, imaginary) parts."""
    return torch.view_as_real(value.to(torch.complex64)).contiguous()


class S5Layer(Float32Module):
    """Resettable S5 SSM with J HiPPO-N blocks (spec §3.3). u (B, T, H) real → y (B, T, H), x (B, T, P).

    Under every precision the layer's parameters stay float32 (a :class:`Float32Module`: converting the agent to
    bf16 for ``bf16-true`` leaves Λ, B̃, C̃, D and log Δ alone: bf16 has no complex type, and rounding Λ to 8 bits
    would move the eigenvalues whose powers Λ̄^(2^k) the scan multiplies) and its computation runs in
    float32/complex64 (inputs upcast, autocast off); y comes out float32.
    """

    def __init__(
        self,
        d_model: int,
        state_size: int,
        blocks: int = 4,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if d_model < 1 or state_size < 1 or blocks < 1 or state_size % blocks:
            raise ValueError(
                f"S5Layer needs d_model >= 1 and state_size divisible by blocks; got {d_model=}, {state_size=}, "
                f"{blocks=} (e.g. state_size=128, blocks=4)"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S5Layer step sizes must satisfy 0 < dt_min <= dt_max, got {dt_min=}, {dt_max=}")
        self.d_model, self.state_size, self.blocks = d_model, state_size, blocks
        self.dt_min, self.dt_max = dt_min, dt_max
        block_size = state_size // blocks
        lambda_block, eigvecs = hippo_n_init(block_size)
        eigvecs_big = torch.block_diag(*([eigvecs] * blocks))  # V (P, P)
        eigvecs_inv_big = torch.block_diag(*([eigvecs.conj().T] * blocks))  # V⁻¹ = Vᴴ (P, P)

        b0 = _lecun_truncated_normal((state_size, d_model), 1.0 / state_size, generator)
        c0_re = _lecun_truncated_normal((d_model, state_size), 1.0 / (d_model * state_size), generator)
        c0_im = _lecun_truncated_normal((d_model, state_size), 1.0 / (d_model * state_size), generator)
        b_tilde = eigvecs_inv_big @ b0.to(torch.complex128)  # B̃ = V⁻¹ B₀ (P, H)
        c_tilde = torch.complex(c0_re, c0_im) @ eigvecs_big  # C̃ = C₀ V (H, P)

        self.Lambda = nn.Parameter(_real_view(lambda_block.repeat(blocks)))
        self.B = nn.Parameter(_real_view(b_tilde))
        self.C = nn.Parameter(_real_view(c_tilde))
        self.D = nn.Parameter(torch.rand(d_model, generator=generator))
        log_low, log_high = math.log(dt_min), math.log(dt_max)
        self.log_step = nn.Parameter(log_low + (log_high - log_low) * torch.rand(state_size, generator=generator))

    @property
    def eigenvalues(self) -> Tensor:
        """Λ as a complex (P,) view of the real (P, 2) parameter ``Lambda``."""
        return torch.view_as_complex(self.Lambda)

    @property
    def B_tilde(self) -> Tensor:  # noqa: N802 (the paper's symbol)
        """B̃ as a complex (P, H) view of the real (P, H, 2) parameter."""
        return torch.view_as_complex(self.B)

    @property
    def C_tilde(self) -> Tensor:  # noqa: N802 (the paper's symbol)
        """C̃ as a complex (H, P) view of the real (H, P, 2) parameter."""
        return torch.view_as_complex(self.C)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints from before issue 14 hold Λ and C̃ as complex64 tensors: take their real views.
        for name in ("Lambda", "C"):
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.is_complex():
                state_dict[prefix + name] = torch.view_as_real(value).contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, state_size={self.state_size}, blocks={self.blocks}"

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(batch_size, self.state_size, dtype=torch.complex64, device=device or self.C.device)

    def discretize(self) -> Discretization:
        """ZOH: (Λ̄ (P,), B̄ (P, H)) complex64. Compute once and pass to :meth:`step` for a whole rollout."""
        with torch.autocast(self.C.device.type, enabled=False):
            step = torch.exp(self.log_step.float())
            eigenvalues = self.eigenvalues
            lambda_bar = torch.exp(eigenvalues * step)
            b_bar = ((lambda_bar - 1.0) / eigenvalues)[:, None] * self.B_tilde
            # Re(C̃ x) = C_re·x_re − C_im·x_im: interleaved (H, 2P) weights for [x_re, x_im] pairs
            output_weight = (self.C * self.C.new_tensor([1.0, -1.0])).reshape(self.d_model, 2 * self.state_size)
            return Discretization(lambda_bar, b_bar, output_weight)

    def _prepare(self, discretized: Discretized | None) -> Discretization:
        if discretized is None:
            return self.discretize()
        lambda_bar, b_bar = discretized
        if lambda_bar.shape != (self.state_size,) or b_bar.shape != (self.state_size, self.d_model):
            raise ValueError(
                f"discretized must be (Λ̄ ({self.state_size},), B̄ ({self.state_size}, {self.d_model})) from "
                f"this layer's discretize(); got {tuple(lambda_bar.shape)} and {tuple(b_bar.shape)}"
            )
        if isinstance(discretized, Discretization):
            return discretized
        return Discretization(lambda_bar, b_bar, self.discretize().output_weight)

    def _project_input(self, u: Tensor, discretization: Discretization) -> Tensor:
        """B̄ u as one real GEMM: u (..., H) @ input_weightᵀ (H, 2P) → complex (..., P)."""
        projected = F.linear(u, discretization.input_weight)
        return torch.view_as_complex(projected.reshape(*u.shape[:-1], self.state_size, 2))

    def _project_output(self, x: Tensor, u: Tensor, discretization: Discretization) -> Tensor:
        """Re(C̃ x) + D ⊙ u as one real GEMM: [Re x, Im x] interleaved (..., 2P) @ output_weightᵀ."""
        x_pairs = torch.view_as_real(x).reshape(*x.shape[:-1], 2 * self.state_size)
        return torch.addcmul(F.linear(x_pairs, discretization.output_weight), self.D, u)

    def forward(
        self,
        u: Tensor,
        reset: Tensor | None = None,
        initial_state: Tensor | None = None,
        discretized: Discretized | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Parallel form. u (B, T, H), reset (B, T) bool → y (B, T, H) float32, x (B, T, P) complex64.

        ``initial_state`` (B, P) continues a previous window (default: zero state, as in training).
        """
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"S5Layer.forward expects u (B, T, {self.d_model}), got shape {tuple(u.shape)}")
        if reset is None:
            reset = torch.zeros(u.shape[:2], dtype=torch.bool, device=u.device)
        elif reset.shape != u.shape[:2]:
            raise ValueError(
                f"S5Layer.forward expects reset (B, T) = {tuple(u.shape[:2])}, got shape {tuple(reset.shape)}"
            )
        if initial_state is not None and initial_state.shape != (u.shape[0], self.state_size):
            raise ValueError(
                f"initial_state must be (B, P) = ({u.shape[0]}, {self.state_size}), got {tuple(initial_state.shape)}"
            )
        with torch.autocast(u.device.type, enabled=False):
            u = u.float()
            discretization = self._prepare(discretized)
            bu = self._project_input(u, discretization)
            if initial_state is not None:
                initial_state = initial_state.to(torch.complex64)
            x = resettable_scan(discretization[0], bu, reset, initial_state)
            return self._project_output(x, u, discretization), x

    def step(
        self,
        u_t: Tensor,
        x_prev: Tensor,
        reset_t: Tensor | None = None,
        discretized: Discretized | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Recurrent form. u_t (B, H), x_prev (B, P) complex, reset_t (B,) bool → y_t (B, H), x_t (B, P).

        B̄ (P, H) is shared by the batch; pass ``discretized=self.discretize()`` to reuse it across steps.
        """
        if u_t.ndim != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(f"S5Layer.step expects u_t (B, {self.d_model}), got shape {tuple(u_t.shape)}")
        if x_prev.shape != (u_t.shape[0], self.state_size) or not x_prev.is_complex():
            raise ValueError(
                f"S5Layer.step expects a complex state x_prev (B, P) = ({u_t.shape[0]}, {self.state_size}), got "
                f"{tuple(x_prev.shape)} {x_prev.dtype}; start from layer.initial_state(batch_size)"
            )
        with torch.autocast(u_t.device.type, enabled=False):
            u_t = u_t.float()
            discretization = self._prepare(discretized)
            decayed = discretization[0] * x_prev.to(torch.complex64)
            if reset_t is not None:
                if reset_t.shape != u_t.shape[:1]:
                    raise ValueError(f"S5Layer.step expects reset_t (B,), got shape {tuple(reset_t.shape)}")
                decayed = decayed * (~reset_t.to(torch.bool))[:, None]
            x_t = decayed + self._project_input(u_t, discretization)
            return self._project_output(x_t, u_t, discretization), x_t


# ----------------------------------------------------------------------------- double block


class S5Block(nn.Module):
    """HIEROS' ``ReworkedDoubleS5Block`` (spec §3.2), x (B, T, H) → (B, T, H) and states (B, T, 2P):

        r ← x; x ← dropout(GELU(W₁ S5₁(LN₁ x))) + r
        r ← x; x ← dropout(GELU(W₂ S5₂(LN₂ x))) + r
        out = x + LN₃(x)

    W bias-free H × H Linears (PyTorch default init, as the original), LayerNorm eps 1e-5.
    The block state at t is concat(x¹_t, x²_t) ∈ C^{2P}.
    """

    def __init__(
        self,
        d_model: int,
        state_size: int,
        blocks: int = 4,
        dropout: float = 0.0,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        self.d_model, self.state_size = d_model, state_size
        self.state_size_total = 2 * state_size
        self.s5_1 = S5Layer(d_model, state_size, blocks, dt_min, dt_max)
        self.s5_2 = S5Layer(d_model, state_size, blocks, dt_min, dt_max)
        self.norm_1 = nn.LayerNorm(d_model)
        self.norm_2 = nn.LayerNorm(d_model)
        self.norm_3 = nn.LayerNorm(d_model)
        self.linear_1 = nn.Linear(d_model, d_model, bias=False)
        self.linear_2 = nn.Linear(d_model, d_model, bias=False)
        self.dropout_1 = nn.Dropout(dropout)
        self.dropout_2 = nn.Dropout(dropout)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(
            batch_size, self.state_size_total, dtype=torch.complex64, device=device or self.s5_1.C.device
        )

    def discretize(self) -> tuple[Discretized, Discretized]:
        """Both layers' (Λ̄, B̄); compute once per rollout and pass to :meth:`step`."""
        return self.s5_1.discretize(), self.s5_2.discretize()

    def _split_state(self, state: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        if state is None:
            return None, None
        if state.shape[-1] != self.state_size_total:
            raise ValueError(
                f"S5Block state must have last dim 2P = {self.state_size_total}, got shape {tuple(state.shape)}"
            )
        return state[..., : self.state_size], state[..., self.state_size :]

    def forward(
        self,
        x: Tensor,
        reset: Tensor | None = None,
        initial_state: Tensor | None = None,
        discretized: tuple[Discretized, Discretized] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x (B, T, H), reset (B, T) → (B, T, H), states (B, T, 2P) complex64."""
        init_1, init_2 = self._split_state(initial_state)
        disc_1, disc_2 = discretized if discretized is not None else (None, None)
        y, states_1 = self.s5_1(self.norm_1(x), reset, init_1, disc_1)
        x = self.dropout_1(F.gelu(self.linear_1(y))) + x
        y, states_2 = self.s5_2(self.norm_2(x), reset, init_2, disc_2)
        x = self.dropout_2(F.gelu(self.linear_2(y))) + x
        return x + self.norm_3(x), torch.cat([states_1, states_2], -1)

    def step(
        self,
        x_t: Tensor,
        state_prev: Tensor,
        reset_t: Tensor | None = None,
        discretized: tuple[Discretized, Discretized] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x_t (B, H), state_prev (B, 2P) complex, reset_t (B,) → (B, H), state (B, 2P)."""
        state_1, state_2 = self._split_state(state_prev)
        disc_1, disc_2 = discretized if discretized is not None else (None, None)
        y, state_1 = self.s5_1.step(self.norm_1(x_t), state_1, reset_t, disc_1)
        x_t = self.dropout_1(F.gelu(self.linear_1(y))) + x_t
        y, state_2 = self.s5_2.step(self.norm_2(x_t), state_2, reset_t, disc_2)
        x_t = self.dropout_2(F.gelu(self.linear_2(y))) + x_t
        return x_t + self.norm_3(x_t), torch.cat([state_1, state_2], -1)


__all__ = [
    "Discretization",
    "Discretized",
    "S5Block",
    "S5Layer",
    "hippo_n_init",
    "linear_scan",
    "normal_hippo_matrix",
    "resettable_scan",
]
