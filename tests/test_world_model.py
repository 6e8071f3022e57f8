"""World model of one level (paper section 2.2, eq. 6-9): sizes, loss, action alignment, training, open-loop video.

World models are built as ``Subactor`` builds them (``WorldModel(obs_shapes, action_dim, make_dynamics, cfg.model,
cfg.agent.world_model)`` with the sequence model from ``Registry.default()``), from Hydra-composed configs.
The training test uses a real replay of MinAtar Breakout frames collected with random actions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import config_composer
from hieros.agent.world_model import WorldModel, build_world_model
from hieros.nets.distributions import twohot_encode
from hieros.nets.s5 import S5Layer
from hieros.registry import Registry

MODELS = ("s5", "rssm", "gru")
ATARI_ACTIONS = 18
REPLAY_STEPS, IMAGE_SIZE = 400, 32


pytestmark = pytest.mark.usefixtures("single_thread")  # fixtures registry, single_thread, mode_sampling: conftest.py

compose_config = config_composer(cache=True)


def make_world_model(
    registry: Registry, name: str, obs_shapes: dict, action_dim: int, *overrides: str, size: str = "tiny", seed: int = 0
) -> WorldModel:
    """A level's world model as the hierarchy builds it (:func:`hieros.agent.world_model.build_world_model`)."""
    cfg = compose_config(f"sequence_model={name}", f"model={size}", *overrides)
    torch.manual_seed(seed)
    return build_world_model(registry, cfg, obs_shapes, action_dim)


def count(module: torch.nn.Module) -> int:
    """Parameters as spec section 2 counts them: the original's complex Λ and C̃ count once per complex entry (here
    they are stored as real (..., 2) views for the fused optimizer); B̃ was a real (P, H, 2) tensor there too."""
    total = sum(p.numel() for p in module.parameters())
    layers = [m for m in module.modules() if isinstance(m, S5Layer)]
    return total - sum((layer.Lambda.numel() + layer.C.numel()) // 2 for layer in layers)


def breakdown(world_model: WorldModel) -> str:
    parts = {name: count(child) for name, child in world_model.named_children()}
    parts.update({f"dynamics.{name}": count(child) for name, child in world_model.dynamics.named_children()})
    return ", ".join(f"{name}={value}" for name, value in parts.items())


def random_batch(batch: int, length: int, action_dim: int, image_size: int = 16, seed: int = 0, resets=()) -> dict:
    generator = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    for row, step in resets:
        is_first[row, step] = True
    is_terminal = torch.zeros(batch, length, dtype=torch.bool)
    for row, step in resets:
        is_terminal[row, step - 1] = True
    return {
        "image": torch.randint(
            0, 256, (batch, length, image_size, image_size, 3), dtype=torch.uint8, generator=generator
        ),
        "action": F.one_hot(torch.randint(0, action_dim, (batch, length), generator=generator), action_dim).float(),
        "reward": torch.randn(batch, length, generator=generator),
        "is_first": is_first,
        "is_terminal": is_terminal,
    }


# ------------------------------------------------------------------------------------ parameter counts


@pytest.fixture
def skip_weight_init(monkeypatch):
    """Counting parameters needs no initial values; truncated-normal init of 9 M weights takes seconds on CPU."""
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda tensor, *args, **kwargs: tensor)


def test_paper_size_parameter_counts_match_spec(registry, skip_weight_init):
    # spec section 2: level-0 world model 8.86 M (64x64x3 images, A = 18); level-1 world model 9.94 M
    # (vector_units 512; observation = k = 4 stacked level-0 latents of 1024 + 256 = 5120, action = 8x8 code).
    level0 = make_world_model(registry, "s5", {"image": (64, 64, 3)}, ATARI_ACTIONS, size="paper")
    feature_dim = level0.dynamics.feature_dim
    assert feature_dim == 1024 + 256
    level1 = make_world_model(registry, "s5", {"vector": (4 * feature_dim,)}, 8 * 8, size="paper")
    for world_model, expected in ((level0, 8.86e6), (level1, 9.94e6)):
        assert count(world_model) == pytest.approx(expected, rel=0.03), breakdown(world_model)
    # the figures of the original, exactly: the S5 stack is 4 double blocks (8 S5 layers) of H 256, P 128
    assert len(level0.dynamics.blocks) == 4 and level0.dynamics.state_projection.in_features == 4 * 2 * 128
    assert level0.encoders["image"].out_dim == 3072


def test_small_size_drops_two_double_blocks(registry, skip_weight_init):
    # ablation G.6: 2 double blocks; everything else as paper, so the difference is 2 blocks + the narrower _state_out
    paper = make_world_model(registry, "s5", {"image": (64, 64, 3)}, ATARI_ACTIONS, size="paper")
    small = make_world_model(registry, "s5", {"image": (64, 64, 3)}, ATARI_ACTIONS, size="small")
    assert len(small.dynamics.blocks) == 2
    block = count(paper.dynamics.blocks[0])
    assert count(paper) - count(small) == 2 * block + (4 - 2) * 2 * 128 * 256


def test_tiny_size_builds_for_every_sequence_model_and_image_size(registry):
    for name in MODELS:
        for image_size in (16, 32, 64):
            world_model = make_world_model(registry, name, {"image": (image_size, image_size, 3)}, 4)
            assert count(world_model) < 1_000_000, (name, image_size)


# ------------------------------------------------------------------------------------------------ loss


def test_loss_is_eq_6_to_9(registry, mode_sampling):
    world_model = make_world_model(registry, "s5", {"image": (16, 16, 3)}, 4)
    batch = random_batch(3, 7, 4, resets=[(1, 4)])
    batch["reward"][0, 2] = 7.0  # a reward away from zero, so the two-hot target spans two bins
    with torch.no_grad():
        total, post, metrics = world_model.loss(batch)
        # recompute from the public pieces: a_{t-1} with zeros at is_first, posterior from the frames
        prev_action = torch.cat([torch.zeros_like(batch["action"][:, :1]), batch["action"][:, :-1]], 1)
        prev_action[batch["is_first"]] = 0.0
        again, _ = world_model.dynamics.observe(world_model.encode(batch), prev_action, batch["is_first"])
        features = world_model.features(again)
        image = world_model.decoders["image"](features)
        image_loss = (image - (batch["image"].float() / 255 - 0.5)).pow(2).sum((-3, -2, -1))  # sum over H, W, C
        reward_logits = world_model.reward_head(features)
        target = twohot_encode(
            torch.sign(batch["reward"]) * torch.log1p(batch["reward"].abs()), torch.linspace(-20, 20, 255)
        )
        reward_loss = -(target * torch.log_softmax(reward_logits, -1)).sum(-1)
        cont_loss = F.binary_cross_entropy_with_logits(
            world_model.cont_head(features).squeeze(-1), 1.0 - batch["is_terminal"].float(), reduction="none"
        )
        # KL of the unimixed categoricals, summed over the latents
        post_dist = torch.distributions.Categorical(logits=again["logit"])
        prior_dist = torch.distributions.Categorical(logits=again["prior_logit"])
        kl = torch.distributions.kl_divergence(post_dist, prior_dist).sum(-1)  # (B, T)
    torch.testing.assert_close(post["deter"], again["deter"])
    expected = (
        (image_loss + reward_loss + cont_loss).mean() + 0.5 * kl.clamp(min=1.0).mean() + 0.1 * kl.clamp(min=1.0).mean()
    )
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(metrics["image_loss"], image_loss.mean(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(metrics["reward_loss"], reward_loss.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["cont_loss"], cont_loss.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["kl"], kl.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["dyn_loss"], kl.clamp(min=1.0).mean(), rtol=1e-5, atol=1e-5)


def test_kl_terms_stop_gradients_like_eq_8_and_9(registry):
    world_model = make_world_model(registry, "s5", {"image": (16, 16, 3)}, 4)
    dynamics = world_model.dynamics
    post_logits = torch.randn(2, 3, dynamics.stoch, dynamics.classes, requires_grad=True)
    prior_logits = torch.randn(2, 3, dynamics.stoch, dynamics.classes, requires_grad=True)
    dyn, rep = world_model.kl_terms(post_logits, prior_logits)
    assert dyn.shape == rep.shape == (2, 3)
    torch.testing.assert_close(dyn, rep)  # same value, different gradients
    post_grad, prior_grad = torch.autograd.grad(dyn.sum(), (post_logits, prior_logits), allow_unused=True)
    assert post_grad is None and prior_grad.abs().sum() > 0  # L_dyn trains the prior only
    post_grad, prior_grad = torch.autograd.grad(rep.sum(), (post_logits, prior_logits), allow_unused=True)
    assert prior_grad is None and post_grad.abs().sum() > 0  # L_rep trains the posterior only
    # free bits: below 1 nat per (b, t) the term is constant
    dyn_loss, _ = world_model.kl_losses(post_logits, post_logits.detach() + 1e-3, free=1.0)
    assert dyn_loss.item() == 1.0


@pytest.mark.parametrize("name", MODELS)
def test_initial_state_is_learned(registry, name):
    world_model = make_world_model(registry, name, {"image": (16, 16, 3)}, 4)
    dynamics = world_model.dynamics
    loss, _, _ = world_model.loss(random_batch(2, 5, 4, resets=[(0, 3)]))
    loss.backward()
    assert dynamics.initial_weight.grad is not None and dynamics.initial_weight.grad.abs().sum() > 0
    initial = dynamics.initial(2)
    activation = torch.tanh if name == "rssm" else F.gelu  # DreamerV3: tanh(W); S5WM: GELU(W) (spec 3.1)
    torch.testing.assert_close(initial["deter"], activation(dynamics.initial_weight).expand(2, -1))
    onehot = initial["stoch"].detach()
    assert torch.equal(onehot.sum(-1), torch.ones(2, dynamics.stoch))  # z_0: the prior's mode, a one-hot


# ----------------------------------------------------------------------------------- action alignment


def _changed_action(batch: dict, step: int) -> dict:
    changed = dict(batch)
    changed["action"] = batch["action"].clone()
    changed["action"][:, step] = torch.roll(batch["action"][:, step], 1, -1)
    return changed


@pytest.mark.parametrize("name", MODELS)
def test_previous_alignment_trains_on_the_action_before_each_observation(registry, mode_sampling, name):
    world_model = make_world_model(registry, name, {"image": (16, 16, 3)}, 4)
    assert world_model.config["action_alignment"] == "previous"  # the default fixes the original's off-by-one
    batch = random_batch(2, 6, 4)
    last = batch["is_first"].shape[1] - 1
    with torch.no_grad():
        loss, post, _ = world_model.loss(batch)
        loss_last, post_last, _ = world_model.loss(_changed_action(batch, last))
        _, post_before, _ = world_model.loss(_changed_action(batch, last - 1))
    # a_T (the last action of the window) feeds step T+1 only: nothing inside the window changes
    for key in ("stoch", "deter", "logit", "prior_logit"):
        torch.testing.assert_close(post_last[key], post[key])
    torch.testing.assert_close(loss_last, loss)
    # a_{T-1} feeds h_T, and only h_T
    torch.testing.assert_close(post_before["deter"][:, :last], post["deter"][:, :last])
    assert not torch.allclose(post_before["deter"][:, last], post["deter"][:, last], atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_original_alignment_reproduces_the_off_by_one(registry, mode_sampling, name):
    world_model = make_world_model(
        registry, name, {"image": (16, 16, 3)}, 4, "agent.world_model.action_alignment=original"
    )
    batch = random_batch(2, 6, 4)
    last = batch["is_first"].shape[1] - 1
    with torch.no_grad():
        _, post, _ = world_model.loss(batch)
        _, post_last, _ = world_model.loss(_changed_action(batch, last))
    torch.testing.assert_close(post_last["deter"][:, :last], post["deter"][:, :last])
    assert not torch.allclose(post_last["deter"][:, last], post["deter"][:, last], atol=1e-4)


@pytest.mark.parametrize("alignment", ["previous", "original"])
def test_action_is_zeroed_at_is_first(registry, mode_sampling, alignment):
    world_model = make_world_model(
        registry, "s5", {"image": (16, 16, 3)}, 4, f"agent.world_model.action_alignment={alignment}"
    )
    batch = random_batch(2, 7, 4, resets=[(0, 3), (1, 5)])
    prev = world_model.previous_actions(batch["action"], batch["is_first"])
    assert torch.count_nonzero(prev[batch["is_first"]]) == 0
    keep = ~batch["is_first"]
    source = batch["action"] if alignment == "original" else torch.roll(batch["action"], 1, 1)
    torch.testing.assert_close(prev[keep], source[keep])
    # behaviour: the action that would cross the episode boundary changes nothing
    crossing = 2 if alignment == "previous" else 3  # a_2 feeds step 3 (is_first) | a_3 is paired with step 3
    with torch.no_grad():
        _, post, _ = world_model.loss(batch)
        _, changed, _ = world_model.loss(_changed_action(batch, crossing))
    torch.testing.assert_close(changed["deter"][0], post["deter"][0])


# ---------------------------------------------------------------------------------- deterministic latent


def test_weighted_image_loss_weighs_the_on_pixels(registry, mode_sampling):
    """image_loss: weighted_mse = Σ w (pred − x)² with w = image_on_weight where the target pixel is on (> 127),
    1 elsewhere; weight 1 is exactly mse; the other terms of the loss are untouched."""
    batch = random_batch(2, 5, 4)
    losses = {}
    options = {
        "image_loss=mse": ["image_loss=mse"],
        "image_loss=weighted_mse": ["image_loss=weighted_mse"],
        "image_on_weight=1.0": ["image_loss=weighted_mse", "image_on_weight=1.0"],
    }
    for option, keys in options.items():
        overrides = [f"agent.world_model.{key}" for key in keys]
        world_model = make_world_model(registry, "s5", {"image": (16, 16, 3)}, 4, *overrides)
        with torch.no_grad():
            _, post, metrics = world_model.loss(batch)
            prediction = world_model.decoders["image"](world_model.features(post))
        losses[option] = (metrics, prediction)
    target = batch["image"].float() / 255.0 - 0.5
    metrics, prediction = losses["image_loss=weighted_mse"]
    weight = torch.where(batch["image"] > 127, 10.0, 1.0)  # the default image_on_weight
    expected = (weight * (prediction - target) ** 2).sum((-3, -2, -1)).mean()
    torch.testing.assert_close(metrics["image_loss"], expected)
    plain, _ = losses["image_loss=mse"]
    assert metrics["image_loss"] > 2 * plain["image_loss"]  # about half the random pixels are on
    torch.testing.assert_close(metrics["reward_loss"], plain["reward_loss"])
    torch.testing.assert_close(losses["image_on_weight=1.0"][0]["image_loss"], plain["image_loss"])


def test_deterministic_latent_variant(registry):
    world_model = make_world_model(registry, "s5", {"image": (16, 16, 3)}, 4, "agent.world_model.stochastic=false")
    assert not world_model.dynamics.stochastic
    batch = random_batch(2, 5, 4)
    total, post, metrics = world_model.loss(batch)
    assert torch.isfinite(total)
    post_logit, prior_logit = post["logit"], post["prior_logit"]
    torch.testing.assert_close(post["stoch"], post_logit)  # z is the raw posterior logits
    assert torch.count_nonzero(post["prior_ent"]) == 0
    squared = (post_logit - prior_logit).pow(2)
    dyn, rep = world_model.kl_terms(post_logit, prior_logit)
    torch.testing.assert_close(dyn, squared.flatten(-2).mean(-1))
    torch.testing.assert_close(rep, squared.flatten(-2).mean(-1))
    # free bits apply per element, as in the original (networks.py: Seq2SeqDynamics.kl_loss)
    dyn_loss, rep_loss = world_model.kl_losses(post_logit, prior_logit, free=1.0)
    torch.testing.assert_close(dyn_loss, squared.clamp(min=1.0).mean())
    torch.testing.assert_close(metrics["dyn_loss"], squared.clamp(min=1.0).mean().detach())
    total.backward()
    assert world_model.dynamics.prior_head[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------- training on a real replay


@pytest.fixture(scope="module")
def minatar_replay(registry) -> dict[str, np.ndarray]:
    """~400 steps of MinAtar Breakout with uniform random actions, rows (o_t, a_t, r_t, is_first_t, is_terminal_t).

    a_t is the action chosen after seeing o_t, as the hierarchy stores it; the terminal row's action is zero.
    """
    cfg = compose_config(
        "env=minatar", f"env.size={IMAGE_SIZE}", "env.obs=rgb"
    )  # RGB frames: the video tests check pixels
    env = registry.build("env", cfg.env, seed=0)
    num_actions = env.action_space.n
    rng = np.random.default_rng(0)
    rows = {key: [] for key in ("image", "action", "reward", "is_first", "is_terminal")}
    obs, _ = env.reset()
    reward, first, terminal, over = 0.0, True, False, False
    for _ in range(REPLAY_STEPS):
        action = np.zeros(num_actions, np.float32)
        index = int(rng.integers(num_actions))
        if not over:
            action[index] = 1.0
        for key, value in zip(rows, (obs["image"], action, reward, first, terminal)):
            rows[key].append(value)
        if over:
            obs, _ = env.reset()
            reward, first, terminal, over = 0.0, True, False, False
        else:
            obs, reward, terminal, truncated, _ = env.step(index)
            first, over = False, terminal or truncated
    replay = {key: np.stack(value) for key, value in rows.items()}
    assert replay["is_first"].sum() >= 3 and replay["image"].std() > 0  # several episodes of real frames
    return replay


def replay_batches(replay: dict, count: int, batch: int, length: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        starts = rng.integers(0, len(replay["reward"]) - length, batch)
        window = {
            key: torch.as_tensor(np.stack([value[s : s + length] for s in starts])) for key, value in replay.items()
        }
        window["reward"] = window["reward"].float()
        window["is_first"] = window["is_first"].clone()
        window["is_first"][:, 0] = True  # as the replay forces it
        batches.append(window)
    return batches


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_loss_goes_down_on_a_minatar_replay(registry, minatar_replay, name):
    num_actions = minatar_replay["action"].shape[-1]
    image_shape = minatar_replay["image"].shape[-3:]  # (H, W, C): C = the game's object channels
    world_model = make_world_model(registry, name, {"image": image_shape}, num_actions, seed=1)
    batches = replay_batches(minatar_replay, count=2, batch=8, length=16)
    # lr 1e-3 (10x the paper's) so a few dozen updates show the trend; clip as configured
    optimizer = torch.optim.AdamW(world_model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.0)

    def evaluate() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return float(sum(world_model.loss(batch)[0] for batch in batches)) / len(batches)

    before = evaluate()
    for update in range(20):
        loss, _, metrics = world_model.loss(batches[update % len(batches)])
        assert torch.isfinite(loss), metrics
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(world_model.parameters(), world_model.config["grad_clip"])
        optimizer.step()
    after = evaluate()
    assert after < 0.8 * before, (name, before, after)


# ------------------------------------------------------------------------------------- open-loop video


def test_open_loop_video(registry, minatar_replay, mode_sampling):
    num_actions = minatar_replay["action"].shape[-1]
    world_model = make_world_model(registry, "s5", {"image": (IMAGE_SIZE, IMAGE_SIZE, 3)}, num_actions)
    batch = replay_batches(minatar_replay, count=1, batch=3, length=12, seed=4)[0]
    batch["is_first"][:, 1:] = False  # one episode per row, so the imagined part never crosses a reset
    video = world_model.open_loop_video(batch, context=5)
    length, size = 12, IMAGE_SIZE
    assert video.dtype == np.uint8 and video.shape == (length, 3 * size, 3 * size, 3)  # (T, 3H, N*W, 3)
    frames = video.reshape(length, 3, size, 3, size, 3)  # (T, row, H, sequence, W, C)
    truth, model = frames[:, 0], frames[:, 1]
    np.testing.assert_array_equal(truth, batch["image"].numpy().transpose(1, 2, 0, 3, 4))
    with torch.no_grad():
        prev_action = world_model.previous_actions(batch["action"], batch["is_first"])
        post, _ = world_model.dynamics.observe(world_model.encode(batch), prev_action, batch["is_first"])
        recon = world_model.decoders["image"](world_model.features(post))
        # the first 5 model frames are reconstructions from the posterior
        expected = ((recon[:, :5] + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(model[:5], expected.transpose(1, 2, 0, 3, 4))
        # the rest is imagined with the window's own actions: recompute the rollout
        state = {key: value[:, 4] for key, value in post.items() if key != "prior_logit"}
        for t in range(5, length):
            state = world_model.dynamics.img_step(state, prev_action[:, t], sample=False)
            frame = world_model.decoders["image"](world_model.features(state))
            expected = ((frame + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            np.testing.assert_array_equal(model[t], expected.transpose(1, 0, 2, 3))
    # error row = (model - truth + 1) / 2
    error = frames[:, 2].astype(np.float64) / 255
    np.testing.assert_allclose(error, (model / 255 - truth / 255 + 1) / 2, atol=1.5 / 255)
    # open loop: frames after the context do not reach the model row
    changed = dict(batch)
    changed["image"] = batch["image"].clone()
    changed["image"][:, 5:] = 255 - changed["image"][:, 5:]
    other = world_model.open_loop_video(changed, context=5).reshape(length, 3, size, 3, size, 3)
    np.testing.assert_array_equal(other[:, 1], model)
    assert not np.array_equal(other[5:, 0], truth[5:])


def test_loss_rejects_a_batch_whose_shapes_disagree(registry):
    world_model = make_world_model(registry, "s5", {"image": (16, 16, 3)}, 4)
    good = random_batch(2, 8, 4)
    world_model.loss(good)
    for key, bad in {
        "action": good["action"][..., :3],  # 3 actions where the model has 4
        "reward": good["reward"][:, :7],  # one step short
        "image": good["image"][:1],  # another batch size
    }.items():
        with pytest.raises(ValueError, match=key):
            world_model.loss({**good, key: bad})
