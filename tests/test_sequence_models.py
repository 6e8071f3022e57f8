"""Sequence models of the world model (s5, rssm, gru): one interface, observe == stepping, resets, imagination.

Every model is built the way the hierarchy builds it: Hydra config ``sequence_model=<name>`` and ``model=tiny``,
then ``Registry.default().build("sequence_model", ...)``. Posterior and prior samples are made deterministic by
replacing the categorical sample with its mode, so the parallel and the recurrent paths see the same z.
"""

from __future__ import annotations

import pytest
import torch

from helpers import config_composer
from hieros.agent import world_model
from hieros.nets.distributions import OneHotCategorical, symlog
from hieros.registry import Registry
from hieros.sequence_models.base import LatentDynamics

MODELS = ("s5", "rssm", "gru")
EMBED_DIM, ACTION_DIM = 24, 5
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


pytestmark = pytest.mark.usefixtures("single_thread")  # fixtures registry, single_thread, mode_sampling: conftest.py

compose_config = config_composer(cache=True)


def build_dynamics(registry: Registry, name: str, *overrides: str, seed: int = 0) -> LatentDynamics:
    """The sequence model exactly as the hierarchy builds it (``build_dynamics``), at tiny size."""
    cfg = compose_config(f"sequence_model={name}", "model=tiny", *overrides)
    torch.manual_seed(seed)
    return world_model.build_dynamics(registry, cfg, EMBED_DIM, ACTION_DIM).eval()


def window(batch: int, length: int, seed: int = 0, resets: dict[int, int] | None = None):
    """Random embeddings, one-hot previous actions (zero at is_first) and is_first flags (B, T)."""
    generator = torch.Generator().manual_seed(seed)
    embed = torch.randn(batch, length, EMBED_DIM, generator=generator)
    index = torch.randint(0, ACTION_DIM, (batch, length), generator=generator)
    action = torch.nn.functional.one_hot(index, ACTION_DIM).float()
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    for row, step in (resets or {}).items():
        is_first[row, step] = True
    action = action * (~is_first).unsqueeze(-1).float()
    return embed, action, is_first


def step_through(dynamics: LatentDynamics, embed, action, is_first) -> dict[str, torch.Tensor]:
    """The recurrent path: obs_step over the window from the initial state, states stacked on dim 1."""
    state = dynamics.initial(embed.shape[0])
    states = []
    for t in range(embed.shape[1]):
        state = dynamics.obs_step(state, action[:, t], embed[:, t], is_first[:, t])
        states.append(state)
    return {key: torch.stack([s[key] for s in states], 1) for key in states[0]}


def assert_states_close(actual: dict, expected: dict, keys=("stoch", "deter", "logit", "prior_logit", "carry")):
    for key in keys:
        torch.testing.assert_close(actual[key], expected[key], **TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")


# ------------------------------------------------------------------------------------------- interface


def test_all_three_registered_behind_one_interface(registry):
    assert {"s5", "rssm", "gru"} <= set(registry.names("sequence_model"))
    for name in MODELS:
        dynamics = build_dynamics(registry, name)
        assert isinstance(dynamics, LatentDynamics)
        assert dynamics.feature_dim == dynamics.stoch * dynamics.classes + dynamics.deter_dim
        state = dynamics.initial(3)
        assert dynamics.features(state).shape == (3, dynamics.feature_dim)


def test_s5_posterior_is_parallel_rssm_posterior_sees_h(registry):
    # paper section 2.2: the S5WM posterior depends on o_t only; DreamerV3's RSSM posterior also on h_t
    s5, rssm, gru = (build_dynamics(registry, name) for name in MODELS)
    assert not s5.posterior_uses_deter and not gru.posterior_uses_deter and rssm.posterior_uses_deter
    assert s5.posterior_head[0].in_features == EMBED_DIM
    assert rssm.posterior_head[0].in_features == EMBED_DIM + rssm.deter_dim


def test_invalid_h_source_is_rejected(registry):
    with pytest.raises(ValueError, match="h_source"):
        build_dynamics(registry, "s5", "sequence_model.h_source=states")


# ------------------------------------------------------------------------------ observe == obs_step loop


@pytest.mark.parametrize("name", MODELS)
def test_observe_equals_obs_step_loop(registry, mode_sampling, name):
    dynamics = build_dynamics(registry, name)
    embed, action, is_first = window(3, 11, resets={1: 4, 2: 7})
    with torch.no_grad():
        post, prior = dynamics.observe(embed, action, is_first)
        stepped = step_through(dynamics, embed, action, is_first)
    assert post["deter"].shape == (3, 11, dynamics.deter_dim)
    assert post["stoch"].shape == (3, 11, dynamics.stoch, dynamics.classes)
    assert_states_close(post, stepped)
    torch.testing.assert_close(post["prior_ent"], stepped["prior_ent"], **TOLERANCE)
    torch.testing.assert_close(prior["logit"], stepped["prior_logit"], **TOLERANCE)
    torch.testing.assert_close(prior["deter"], stepped["deter"], **TOLERANCE)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_latent_observe_equals_obs_step_loop(registry, name):
    # stochastic=false: z is the raw logits, no sampling anywhere, so no monkeypatching is needed
    dynamics = build_dynamics(registry, name, "agent.world_model.stochastic=false")
    embed, action, is_first = window(2, 9, seed=3, resets={0: 5})
    with torch.no_grad():
        post, _ = dynamics.observe(embed, action, is_first)
        stepped = step_through(dynamics, embed, action, is_first)
    assert_states_close(post, stepped)
    torch.testing.assert_close(post["stoch"], post["logit"])  # z = logits
    assert torch.count_nonzero(post["prior_ent"]) == 0


@pytest.mark.parametrize("name", MODELS)
def test_observe_continues_from_a_given_state(registry, mode_sampling, name):
    # two halves with the state carried over == the whole window (the S5 scan starts from the carried states)
    dynamics = build_dynamics(registry, name)
    embed, action, is_first = window(2, 12, seed=5, resets={1: 9})
    with torch.no_grad():
        whole, _ = dynamics.observe(embed, action, is_first)
        first, _ = dynamics.observe(embed[:, :6], action[:, :6], is_first[:, :6])
        carried = {key: value[:, -1] for key, value in first.items() if key != "prior_logit"}
        second, _ = dynamics.observe(embed[:, 6:], action[:, 6:], is_first[:, 6:], state=carried)
    assert not is_first[:, 6].any()
    joined = {key: torch.cat([first[key], second[key]], 1) for key in whole}
    assert_states_close(joined, whole)


# ------------------------------------------------------------------------------------------------ resets


@pytest.mark.parametrize("name", MODELS)
def test_reset_makes_later_outputs_independent_of_earlier_inputs(registry, mode_sampling, name):
    dynamics = build_dynamics(registry, name)
    reset_at = 5
    embed, action, is_first = window(2, 10, seed=1, resets={0: reset_at, 1: reset_at})
    other_embed, other_action, _ = window(2, 10, seed=2)
    changed_embed = torch.cat([other_embed[:, :reset_at], embed[:, reset_at:]], 1)
    changed_action = torch.cat([other_action[:, :reset_at], action[:, reset_at:]], 1) * (~is_first)[..., None]
    with torch.no_grad():
        post, _ = dynamics.observe(embed, action, is_first)
        changed, _ = dynamics.observe(changed_embed, changed_action, is_first)
        fresh, _ = dynamics.observe(embed[:, reset_at:], action[:, reset_at:], is_first[:, reset_at:])
    # before the reset the perturbation shows (the check can fail), from the reset on it does not
    assert not torch.allclose(post["deter"][:, :reset_at], changed["deter"][:, :reset_at], atol=1e-3)
    after = {key: value[:, reset_at:] for key, value in post.items()}
    assert_states_close({key: value[:, reset_at:] for key, value in changed.items()}, after)
    # and the tail equals a window that starts at the reset
    assert_states_close(fresh, after)


@pytest.mark.parametrize("name", MODELS)
def test_obs_step_reset_restores_the_initial_state(registry, mode_sampling, name):
    dynamics = build_dynamics(registry, name)
    embed, action, _ = window(2, 4, seed=4)
    with torch.no_grad():
        state = dynamics.initial(2)
        for t in range(3):
            state = dynamics.obs_step(state, action[:, t], embed[:, t], torch.tensor([t == 0, t == 0]))
        reset = dynamics.obs_step(state, action[:, 3], embed[:, 3], torch.tensor([True, False]))
        fresh = dynamics.obs_step(
            dynamics.initial(2), torch.zeros_like(action[:, 3]), embed[:, 3], torch.ones(2, dtype=torch.bool)
        )
    for key in ("stoch", "deter", "logit", "carry"):
        torch.testing.assert_close(reset[key][0], fresh[key][0], **TOLERANCE)
    assert not torch.allclose(reset["deter"][1], fresh["deter"][1], atol=1e-4)


# ---------------------------------------------------------------------------------- img_step / imagine


@pytest.mark.parametrize("name", MODELS)
def test_img_step_shapes(registry, name):
    dynamics = build_dynamics(registry, name)
    start = dynamics.initial(7)
    action = torch.nn.functional.one_hot(torch.arange(7) % ACTION_DIM, ACTION_DIM).float()
    state = dynamics.img_step(start, action)
    assert state["stoch"].shape == (7, dynamics.stoch, dynamics.classes)
    assert state["logit"].shape == (7, dynamics.stoch, dynamics.classes)
    assert state["deter"].shape == (7, dynamics.deter_dim)
    assert state["prior_ent"].shape == (7,)
    assert state["carry"].shape == start["carry"].shape
    onehot = state["stoch"].detach()
    assert torch.equal(onehot.sum(-1), torch.ones(7, dynamics.stoch))  # one-hot samples
    assert ((onehot == 0) | (onehot == 1)).all()


@pytest.mark.parametrize("name", MODELS)
def test_imagine_returns_horizon_states_starting_at_start(registry, mode_sampling, name):
    dynamics = build_dynamics(registry, name)
    embed, action, is_first = window(3, 6, seed=6)
    with torch.no_grad():
        post, _ = dynamics.observe(embed, action, is_first)
    start = {key: value.flatten(0, 1) for key, value in post.items() if key != "prior_logit"}  # N = 18
    calls = []

    def policy(state, t):
        calls.append(t)
        index = state["deter"][:, :ACTION_DIM].argmax(-1)  # depends on the state it is given
        return torch.nn.functional.one_hot(index, ACTION_DIM).float()

    horizon = 5
    with torch.no_grad():
        states, actions = dynamics.imagine(start, policy, horizon)
    assert calls == list(range(horizon))
    assert actions.shape == (horizon, 18, ACTION_DIM)
    assert set(states) == set(start)
    for key, value in states.items():
        assert value.shape == (horizon, *start[key].shape), key
        torch.testing.assert_close(value[0], start[key])  # s_0 = start
    with torch.no_grad():
        state = start
        for t in range(horizon - 1):  # s_{t+1} = img_step(s_t, a_t), a_t chosen at s_t
            torch.testing.assert_close(actions[t], policy(state, t))
            state = dynamics.img_step(state, actions[t])
            for key in ("stoch", "deter", "logit", "carry"):
                torch.testing.assert_close(states[key][t + 1], state[key], **TOLERANCE)


# ------------------------------------------------------------------------------------- h_t of the S5WM


def _capture_m(dynamics):
    captured = []
    handle = dynamics.output_projection.register_forward_hook(lambda module, args, out: captured.append(out))
    return captured, handle


def test_s5_h_source_output_is_symlog_of_m_and_differs_from_state(registry, mode_sampling):
    embed, action, is_first = window(2, 8, seed=8, resets={0: 3})
    results = {}
    for source in ("state", "output"):
        dynamics = build_dynamics(registry, "s5", f"sequence_model.h_source={source}", seed=11)
        captured, handle = _capture_m(dynamics)
        with torch.no_grad():
            post, prior = dynamics.observe(embed, action, is_first)
            stepped = step_through(dynamics, embed, action, is_first)
        handle.remove()
        m = captured[0]  # (B, T, D) from the parallel observe
        # the prior always reads the pre-symlog m_t (spec 3.1), whatever h is
        expected_prior = OneHotCategorical(dynamics._logits(dynamics.prior_head(m)), dynamics.unimix).logits
        torch.testing.assert_close(prior["logit"], expected_prior, **TOLERANCE)
        assert_states_close(post, stepped)
        results[source] = (dynamics, post, m)
    _, post_output, m_output = results["output"]
    torch.testing.assert_close(post_output["deter"], symlog(m_output))
    dynamics_state, post_state, m_state = results["state"]
    assert hasattr(dynamics_state, "state_projection") and not hasattr(results["output"][0], "state_projection")
    # h from the internal states: symlog(Linear(Re[x^1_t .. x^2L_t])), not symlog(m_t)
    expected = symlog(dynamics_state.state_projection(post_state["carry"].real.flatten(-2)))
    torch.testing.assert_close(post_state["deter"], expected, **TOLERANCE)
    assert not torch.allclose(post_state["deter"], symlog(m_state), atol=1e-2)
    # same seed, same S5 stack: the outputs m_t agree, only h differs
    torch.testing.assert_close(m_state, m_output)


def test_s5_carry_holds_every_layer_state(registry, mode_sampling):
    dynamics = build_dynamics(registry, "s5", "model.seq_blocks=2")
    embed, action, is_first = window(2, 6, seed=9)
    with torch.no_grad():
        post, _ = dynamics.observe(embed, action, is_first)
    state_size = dynamics.blocks[0].state_size
    assert post["carry"].shape == (2, 6, 2, 2 * state_size)  # (B, T, L, 2P), L double blocks
    assert post["carry"].dtype == torch.complex64
    assert dynamics.state_projection.in_features == 2 * 2 * state_size


@pytest.mark.parametrize("name", MODELS)
def test_prior_entropy_is_that_of_the_unimixed_prior(registry, name):
    # the actor input H(s) of eq. 3: entropy of p(z | m) with its 1% unimix applied once, summed over the latents
    dynamics = build_dynamics(registry, name)
    embed, action, is_first = window(2, 5, seed=10)
    with torch.no_grad():
        post, prior = dynamics.observe(embed, action, is_first)
        imagined = dynamics.img_step({key: value[:, -1] for key, value in post.items()}, action[:, -1])
    for logit, entropy in ((post["prior_logit"], post["prior_ent"]), (imagined["logit"], imagined["prior_ent"])):
        probs = logit.exp()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        assert probs.min() >= dynamics.unimix / dynamics.classes * 0.999  # unimix floor
        expected = torch.distributions.Categorical(logits=logit).entropy().sum(-1)
        torch.testing.assert_close(entropy, expected, **TOLERANCE)
        torch.testing.assert_close(dynamics.entropy(logit), expected, **TOLERANCE)
    torch.testing.assert_close(prior["logit"], post["prior_logit"])


def test_s5_rollout_context_reuses_the_discretisation(registry, mode_sampling):
    dynamics = build_dynamics(registry, "s5", "model.seq_blocks=2")
    start = dynamics.initial(4)
    action = torch.nn.functional.one_hot(torch.arange(4) % ACTION_DIM, ACTION_DIM).float()
    context = dynamics.rollout_context()
    assert len(context) == 2
    with torch.no_grad():
        with_context = dynamics.img_step(start, action, context=context)
        without = dynamics.img_step(start, action)
    for key in ("stoch", "deter", "logit", "carry"):
        torch.testing.assert_close(with_context[key], without[key])
