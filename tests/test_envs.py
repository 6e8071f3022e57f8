"""Environment protocol tests on real ALE games, gymnasium envs, MinAtar and the synthetic bandit chain."""

from __future__ import annotations

import cv2
import gymnasium
import numpy as np
import pytest

import hieros.envs.atari100k
import hieros.envs.chain
import hieros.envs.gym
import hieros.envs.minatar
from hieros.envs.atari100k import ATARI100K_GAMES, Atari100k
from hieros.envs.chain import BanditChain
from hieros.envs.gym import GymVector
from hieros.envs.minatar import MinAtar, channels_to_rgb, cubehelix_palette
from hieros.envs.vector import VectorEnv, make_vector_env
from hieros.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    for module in (hieros.envs.atari100k, hieros.envs.gym, hieros.envs.minatar, hieros.envs.chain):
        reg.load_module(module)
    return reg


def _resize(frame: np.ndarray, size: int = 64) -> np.ndarray:
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def _raw_frames_and_rewards(ale, ale_action, repeat: int = 4) -> tuple[list[np.ndarray], list[int]]:
    """Play ``repeat`` frames on a cloned emulator state, return the raw screens and rewards, restore the state."""
    state = ale.cloneState()
    frames, rewards = [], []
    for _ in range(repeat):
        rewards.append(ale.act(ale_action))
        frames.append(ale.getScreenRGB())
        if ale.game_over():
            break
    ale.restoreState(state)
    return frames, rewards


# --------------------------------------------------------------------------------------------- atari100k
def test_atari_games_table_is_the_26_and_immutable():
    assert len(ATARI100K_GAMES) == 26
    assert ATARI100K_GAMES["ms_pacman"] == "MsPacman" and ATARI100K_GAMES["up_n_down"] == "UpNDown"
    with pytest.raises(TypeError):
        ATARI100K_GAMES["tetris"] = "Tetris"  # type: ignore[index]


def test_atari_observation_is_64x64_rgb_uint8():
    env = Atari100k("breakout", seed=0)
    assert env.observation_space == gymnasium.spaces.Dict(
        {"image": gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)}
    )
    obs, info = env.reset()
    assert set(obs) == {"image"}
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].max() > 0
    obs, reward, terminated, truncated, info = env.step(1)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert isinstance(reward, float) and terminated is False and truncated is False
    assert env.observation_space.contains(obs)
    env.close()


@pytest.mark.parametrize(("game", "num_actions"), [("breakout", 4), ("freeway", 3), ("pong", 6), ("ms_pacman", 9)])
def test_atari_minimal_action_set(game, num_actions):
    import ale_py

    gymnasium.register_envs(ale_py)
    env = Atari100k(game, seed=0)
    assert env.action_space == gymnasium.spaces.Discrete(num_actions)
    reference = gymnasium.make(f"ALE/{ATARI100K_GAMES[game]}-v5", full_action_space=False)
    np.testing.assert_array_equal(env.action_set, np.asarray(reference.unwrapped.ale.getMinimalActionSet()))
    reference.close()
    env.close()


def test_atari_noops_are_uniform_0_to_29_and_not_agent_steps():
    env = Atari100k("breakout", seed=0)
    env.reset(seed=0)
    counts = []
    for _ in range(200):
        _, info = env.reset()
        # The emulator played exactly the drawn number of frames before the first observation.
        assert env.ale.getEpisodeFrameNumber() == info["noops"] == info["episode_frame_number"]
        counts.append(info["noops"])
    counts = np.asarray(counts)
    assert counts.min() == 0 and counts.max() == 29  # U{0..29}: gymnasium's AtariPreprocessing would give 1..30
    assert len(np.unique(counts)) >= 25
    env.close()
    no_noops = Atari100k("breakout", seed=0, noop_max=1)
    assert {no_noops.reset()[1]["noops"] for _ in range(5)} == {0}
    no_noops.close()


def test_atari_max_pools_last_two_frames_and_sums_rewards():
    env = Atari100k("pong", seed=3)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["image"], _resize(env.ale.getScreenRGB()))  # reset frame as is
    rng = np.random.default_rng(0)
    pooled_differs_from_last = 0
    nonzero_rewards = 0
    for _ in range(400):
        action = int(rng.integers(env.action_space.n))
        frames, rewards = _raw_frames_and_rewards(env.ale, env.action_set[action])
        obs, reward, terminated, truncated, _ = env.step(action)
        assert len(frames) == 4 and not (terminated or truncated)
        pooled = _resize(np.maximum(frames[-2], frames[-1]))
        np.testing.assert_array_equal(obs["image"], pooled)
        assert reward == float(sum(rewards))
        pooled_differs_from_last += int(not np.array_equal(pooled, _resize(frames[-1])))
        nonzero_rewards += int(reward != 0)
        if pooled_differs_from_last >= 3 and nonzero_rewards >= 2:
            break
    assert pooled_differs_from_last >= 3, "no step where max-pooling changes the frame: the test proves nothing"
    assert nonzero_rewards >= 2, "no scoring step seen: the reward-sum check proves nothing"
    env.close()


def test_atari_truncation_at_frame_cap_is_not_terminal():
    env = Atari100k("breakout", seed=0, max_frames=400)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            break
    assert truncated is True and terminated is False
    assert info["episode_frame_number"] == 400 and info["lives"] > 0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.close()


def test_atari_game_over_terminates_and_life_loss_does_not():
    env = Atari100k("breakout", seed=1)
    _, info = env.reset()
    lives = [info["lives"]]
    rng = np.random.default_rng(1)
    terminated = truncated = False
    for _ in range(3000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            break
        lives.append(info["lives"])
    assert terminated is True and truncated is False
    assert info["lives"] == 0
    assert lives[0] == 5 and min(lives) == 1  # four lives were lost without ending the episode
    env.close()


def test_atari_same_seed_same_observations_different_seeds_differ():
    def rollout(env: Atari100k, seed: int, actions: np.ndarray) -> tuple[int, np.ndarray]:
        obs, info = env.reset(seed=seed)
        images = [obs["image"]]
        images += [env.step(int(action))[0]["image"] for action in actions]
        return info["noops"], np.stack(images)

    actions = np.random.default_rng(0).integers(6, size=60)
    env_a, env_b = Atari100k("pong", seed=0), Atari100k("pong", seed=0)
    noops_a, images_a = rollout(env_a, 7, actions)
    noops_b, images_b = rollout(env_b, 7, actions)
    assert noops_a == noops_b
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(rollout(env_a, 7, actions)[1], images_a)  # reseeding the same env repeats
    # The constructor seed is used by the first unseeded reset.
    fresh = Atari100k("pong", seed=7)
    np.testing.assert_array_equal(fresh.reset()[0]["image"], images_a[0])
    # Without sticky actions the no-op start is the only randomness; these seeds draw different counts.
    runs = [(noops_a, images_a)] + [rollout(env_b, seed, actions) for seed in (1, 3, 4)]
    assert len({noops for noops, _ in runs}) == len(runs)
    for i in range(len(runs)):
        for j in range(i):
            assert not np.array_equal(runs[i][1], runs[j][1])
    for env in (env_a, env_b, fresh):
        env.close()


def test_atari_unknown_game_lists_valid_names_and_closest():
    with pytest.raises(ValueError) as error:
        Atari100k("ms_pacmn", seed=0)
    message = str(error.value)
    assert all(name in message for name in ATARI100K_GAMES)
    assert "Did you mean 'ms_pacman'?" in message
    with pytest.raises(ValueError, match="Did you mean 'ms_pacman'"):
        Atari100k("MsPacman", seed=0)


def test_atari_bad_action_and_bad_arguments_raise():
    env = Atari100k("freeway", seed=0)
    env.reset()
    with pytest.raises(ValueError, match="minimal action set of 3"):
        env.step(3)
    env.close()
    with pytest.raises(ValueError, match="sticky_prob"):
        Atari100k("pong", seed=0, sticky_prob=1.5)


def test_atari_gray_and_size_options():
    env = Atari100k("pong", seed=0, size=32, gray=True)
    obs, _ = env.reset()
    assert obs["image"].shape == (32, 32, 1) and env.observation_space.contains(obs)
    rgb = _resize(env.ale.getScreenRGB(), 32)
    np.testing.assert_array_equal(obs["image"][..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    env.close()


def test_atari_builds_through_registry(registry):
    env = registry.build("env", {"name": "atari100k", "game": "pong"}, seed=0)
    assert isinstance(env, Atari100k) and isinstance(env, gymnasium.Env)
    assert env.action_space.n == 6
    env.close()


# --------------------------------------------------------------------------------------------- gym
def test_gym_vector_observation_and_errors():
    env = GymVector("CartPole-v1", seed=0)
    obs, _ = env.reset()
    assert env.observation_space["vector"].shape == (4,) and obs["vector"].dtype == np.float32
    assert env.action_space == gymnasium.spaces.Discrete(2)
    env.close()
    with pytest.raises(ValueError, match="only supports Discrete actions"):
        GymVector("Pendulum-v1", seed=0)
    with pytest.raises(ValueError, match="needs a Box observation"):
        GymVector("FrozenLake-v1", seed=0)
    with pytest.raises(ValueError, match="cannot make"):
        GymVector("NoSuchEnv-v0", seed=0)


def test_gym_vector_max_steps_truncates():
    env = GymVector("CartPole-v1", seed=0, max_steps=5)
    env.reset()
    flags = [env.step(step % 2)[2:4] for step in range(5)]
    assert flags[-1] == (False, True) and all(flag == (False, False) for flag in flags[:-1])
    env.close()


# --------------------------------------------------------------------------------------------- minatar
def test_minatar_palette_matches_seaborn_cubehelix():
    # seaborn 0.13.2: np.round(np.array(sns.color_palette("cubehelix", 4)) * 255)
    expected = [[0, 0, 0], [22, 61, 78], [84, 121, 47], [208, 126, 147], [193, 202, 243]]
    np.testing.assert_array_equal(cubehelix_palette(4), expected)
    seaborn = pytest.importorskip("seaborn")
    for channels in (4, 6, 7, 10):
        reference = np.round(np.asarray(seaborn.color_palette("cubehelix", channels)) * 255)
        np.testing.assert_array_equal(cubehelix_palette(channels)[1:], reference)


@pytest.mark.parametrize(
    ("game", "channels"), [("breakout", 4), ("freeway", 7), ("asterix", 4), ("seaquest", 10), ("space_invaders", 6)]
)
def test_minatar_observation(game, channels):
    for obs_mode, depth in (("channels", channels), ("rgb", 3)):
        env = MinAtar(game, seed=0, obs=obs_mode)
        obs, _ = env.reset()
        assert obs["image"].shape == (64, 64, depth) and obs["image"].dtype == np.uint8
        assert env.action_space == gymnasium.spaces.Discrete(6)
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, _ = env.step(0)
        assert obs["image"].shape == (64, 64, depth) and isinstance(reward, float)
    with pytest.raises(ValueError, match="channels | rgb"):
        MinAtar(game, seed=0, obs="grey")


def test_minatar_channel_observation_is_the_state_upscaled_and_renders_like_the_gui():
    env = MinAtar("breakout", seed=3, size=30)
    obs, _ = env.reset()
    for action in (1, 1, 3, 0):
        state = env.state()
        np.testing.assert_array_equal(obs["image"], np.repeat(np.repeat(state, 3, 0), 3, 1).astype(np.uint8) * 255)
        paddle = np.flatnonzero(state[9, :, 0])
        assert len(paddle) == 1 and obs["image"][27:, 3 * paddle[0] : 3 * paddle[0] + 3, 0].min() == 255
        single = state.sum(-1) <= 1  # where objects do not overlap, the colours are the GUI's
        np.testing.assert_array_equal(
            channels_to_rgb(obs["image"])[np.repeat(np.repeat(single, 3, 0), 3, 1)],
            env.render_state(state)[np.repeat(np.repeat(single, 3, 0), 3, 1)],
        )
        obs, *_ = env.step(action)


def test_minatar_rendering_is_palette_of_top_channel_upscaled():
    env = MinAtar("breakout", seed=0, size=60, obs="rgb")
    state = np.zeros((10, 10, 4), bool)
    state[0, 0, 0] = True
    state[3, 7, [1, 3]] = True  # two channels on one cell: the higher one is drawn
    image = env.render_state(state)
    palette = cubehelix_palette(4)
    assert image.shape == (60, 60, 3)
    np.testing.assert_array_equal(image[:6, :6], np.broadcast_to(palette[1], (6, 6, 3)))
    np.testing.assert_array_equal(image[18:24, 42:48], np.broadcast_to(palette[4], (6, 6, 3)))
    background = np.ones((60, 60), bool)
    background[:6, :6] = background[18:24, 42:48] = False
    assert not image[background].any()
    # A size that is not a multiple of 10 uses cv2's INTER_NEAREST rule.
    odd = MinAtar("breakout", seed=0, size=64)
    codes = np.max(state * np.arange(1, 5), axis=2).astype(np.uint8)
    expected = palette[cv2.resize(codes, (64, 64), interpolation=cv2.INTER_NEAREST)]
    np.testing.assert_array_equal(odd.render_state(state), expected)


def test_minatar_determinism_and_truncation():
    actions = np.random.default_rng(0).integers(6, size=80)

    def rollout(seed: int) -> np.ndarray:
        env = MinAtar("breakout", seed=seed, max_steps=1000)
        images = [env.reset()[0]["image"]]
        for action in actions:
            obs, _, terminated, truncated, _ = env.step(int(action))
            images.append(obs["image"])
            if terminated or truncated:
                images.append(env.reset()[0]["image"])
        return np.stack(images)

    np.testing.assert_array_equal(rollout(5), rollout(5))
    assert any(not np.array_equal(rollout(seed), rollout(5)) for seed in (6, 7, 8))
    env = MinAtar("freeway", seed=0, max_steps=3)
    env.reset()
    assert [env.step(0)[2:4] for _ in range(3)] == [(False, False), (False, False), (False, True)]
    minimal = MinAtar("breakout", seed=0, minimal_actions=True)
    assert minimal.action_space.n == 3
    with pytest.raises(ValueError, match="Did you mean 'space_invaders'"):
        MinAtar("space_invader", seed=0)


# --------------------------------------------------------------------------------------------- chain
def test_chain_pays_the_rewarded_action_and_observes_time_and_previous_action():
    env = BanditChain(seed=0, length=4, actions=3, rewarded_action=2)
    assert env.action_space == gymnasium.spaces.Discrete(3)
    assert env.observation_space["vector"].shape == (4,)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["vector"], [0.0, 0.0, 0.0, 0.0])  # no previous action after a reset
    steps = [env.step(action) for action in (2, 0, 1, 2)]
    assert [reward for _, reward, *_ in steps] == [1.0, 0.0, 0.0, 1.0]
    np.testing.assert_array_equal(steps[1][0]["vector"], [0.5, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(steps[3][0]["vector"], [1.0, 0.0, 0.0, 1.0])
    assert [step[2:4] for step in steps] == [(False, False)] * 3 + [(False, True)]  # truncated, not terminal
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(0)
    assert env.observation_space.contains(env.reset()[0])
    terminal = BanditChain(seed=0, length=2, terminal=True, observe_action=False)
    terminal.reset()
    assert terminal.observation_space["vector"].shape == (1,)
    assert [terminal.step(1)[2:4] for _ in range(2)] == [(False, False), (True, False)]


def test_chain_validates_its_config():
    BanditChain.validate_config({"name": "chain", "length": 20, "actions": 2, "rewarded_action": 1})
    for node, key in [
        ({"length": 0}, "env.length=0"),
        ({"actions": 1, "rewarded_action": 0}, "env.actions=1"),
        ({"rewarded_action": 2}, "env.rewarded_action=2"),
        ({"length": True}, "env.length=True"),
    ]:
        with pytest.raises(ValueError, match=key):
            BanditChain.validate_config(node)


def test_vector_env_chain_episode_flags(registry):
    for terminal in (False, True):
        node = {"name": "chain", "length": 3, "terminal": terminal}
        vector = make_vector_env(registry, node, num_envs=2, seed=0)
        outputs = _drive(vector, np.ones((5, 2), np.int64), seed=0)
        vector.close()
        assert [bool(out["is_last"][0]) for out in outputs] == [False, False, False, True, False, False]
        assert [bool(out["is_terminal"][0]) for out in outputs] == [False, False, False, terminal, False, False]
        assert outputs[3]["episode_return"].tolist() == [3.0, 3.0] and outputs[4]["reward"].tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------------------------- VectorEnv
def _drive(vector: VectorEnv, actions: np.ndarray, seed: int) -> list[dict[str, np.ndarray]]:
    outputs = [vector.reset(seed=seed)]
    outputs += [vector.step(step_actions) for step_actions in actions]
    return outputs


def test_vector_env_flags_rewards_and_episode_stats(registry):
    num_envs, steps = 2, 150
    actions = np.random.default_rng(0).integers(2, size=(steps, num_envs))
    vector = make_vector_env(registry, {"name": "gym", "id": "CartPole-v1"}, num_envs=num_envs, seed=10)
    assert vector.num_envs == 2 and vector.action_dim == 2
    assert vector.observation_space["vector"].shape == (4,)
    outputs = _drive(vector, actions, seed=10)
    vector.close()
    first = outputs[0]
    assert first["vector"].shape == (2, 4) and first["reward"].dtype == np.float32
    assert first["is_first"].all() and not first["is_last"].any() and (first["reward"] == 0).all()
    episodes = 0
    for i in range(num_envs):
        # Replay the same actions on a plain gymnasium env: the action given on a reset step must be ignored.
        reference = gymnasium.make("CartPole-v1")
        ref_obs, _ = reference.reset(seed=10 + i)
        running_return, running_length = 0.0, 0
        for t, out in enumerate(outputs):
            np.testing.assert_array_equal(out["vector"][i], ref_obs.astype(np.float32))
            if t > 0 and outputs[t - 1]["is_last"][i]:
                assert out["is_first"][i] and out["reward"][i] == 0 and not out["is_last"][i]
            else:
                assert out["is_first"][i] == (t == 0)
            if out["is_first"][i]:
                running_return, running_length = 0.0, 0
            else:
                running_return += float(out["reward"][i])
                running_length += 1
            if out["is_last"][i]:
                episodes += 1
                assert out["is_terminal"][i]  # CartPole episodes of random play end by falling over
                assert out["episode_return"][i] == running_return
                assert out["episode_length"][i] == running_length
            else:
                assert np.isnan(out["episode_return"][i]) and np.isnan(out["episode_length"][i])
            if t == len(outputs) - 1:
                break
            if out["is_last"][i]:
                ref_obs, _ = reference.reset()
            else:
                ref_obs, reward, terminated, truncated, _ = reference.step(int(actions[t, i]))
                assert outputs[t + 1]["reward"][i] == reward
                assert outputs[t + 1]["is_terminal"][i] == terminated
        reference.close()
    assert episodes >= 6


def test_vector_env_ignores_action_on_reset_step(registry):
    actions = np.random.default_rng(1).integers(2, size=(120, 2))
    vector = make_vector_env(registry, {"name": "gym", "id": "CartPole-v1"}, num_envs=2, seed=0)
    outputs = _drive(vector, actions, seed=0)
    flipped = actions.copy()
    reset_steps = np.stack([out["is_first"] for out in outputs[1:]])  # (T, N): actions given on reset steps
    assert reset_steps.any()
    flipped[reset_steps] = 1 - flipped[reset_steps]
    again = _drive(vector, flipped, seed=0)
    vector.close()
    for out, other in zip(outputs, again):
        for key in out:
            np.testing.assert_array_equal(out[key], other[key])


def test_vector_env_truncation_is_last_not_terminal(registry):
    vector = make_vector_env(registry, {"name": "gym", "id": "CartPole-v1", "max_steps": 3}, num_envs=1, seed=0)
    outputs = _drive(vector, np.zeros((5, 1), np.int64), seed=0)
    vector.close()
    assert [bool(out["is_last"][0]) for out in outputs] == [False, False, False, True, False, False]
    assert not any(out["is_terminal"][0] for out in outputs)
    assert [bool(out["is_first"][0]) for out in outputs] == [True, False, False, False, True, False]
    assert outputs[3]["episode_length"][0] == 3


def test_vector_env_atari_and_parallel_match_sync(registry):
    node = {"name": "atari100k", "game": "breakout", "max_frames": 200}
    actions = np.random.default_rng(2).integers(4, size=(60, 2))
    sync = make_vector_env(registry, node, num_envs=2, seed=4)
    parallel = make_vector_env(registry, node, num_envs=2, seed=4, parallel=True)
    try:
        expected, got = _drive(sync, actions, seed=4), _drive(parallel, actions, seed=4)
    finally:
        sync.close()
        parallel.close()
    assert expected[0]["image"].shape == (2, 64, 64, 3) and expected[0]["image"].dtype == np.uint8
    assert any(out["is_last"].any() for out in expected)  # the 200-frame cap ends episodes within 60 steps
    for out, other in zip(expected, got):
        assert out.keys() == other.keys()
        for key in out:
            np.testing.assert_array_equal(out[key], other[key])


def test_vector_env_rejects_bad_input(registry):
    vector = make_vector_env(registry, {"name": "gym", "id": "CartPole-v1"}, num_envs=2, seed=0)
    with pytest.raises(RuntimeError, match="before reset"):
        vector.step(np.zeros(2, np.int64))
    vector.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vector.step(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="one-hot"):
        vector.step(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        vector.step(np.array([0, 2]))
    vector.close()


class _BoxObservationEnv(gymnasium.Env):
    def __init__(self, seed: int) -> None:
        self.observation_space = gymnasium.spaces.Box(0, 1, (2,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)


def test_vector_env_rejects_non_dict_observations():
    with pytest.raises(TypeError, match="Dict observation space"):
        VectorEnv([lambda: _BoxObservationEnv(seed=0)])
