"""Videos of a run: subgoal decoding (Figure 5), the subgoal video and GIF/MP4 writing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from hieros.agent.hierarchy import Hierarchy
from hieros.registry import Registry
from hieros.training.media import decode_subgoal, subgoal_frames, write_video


@pytest.fixture(scope="module")
def image_agent():
    with initialize_config_module("hieros.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "hierarchy.layers=3", "hierarchy.k=2"])
    torch.manual_seed(0)
    config = OmegaConf.to_container(cfg, resolve=True)
    return Hierarchy(config, Registry.default(), {"image": (16, 16, 3)}, 4).eval()


def _acting_with_random_latents(agent, n: int):
    acting = agent.initial_acting_state(n, torch.device("cpu"))
    for entry in acting.levels:
        stoch = entry.latent["stoch"]
        entry.latent["stoch"] = torch.nn.functional.one_hot(
            torch.randint(stoch.shape[-1], stoch.shape[:-1]), stoch.shape[-1]
        ).float()
    return acting


def test_subgoal_of_level_2_is_decoded_through_level_1_to_an_image(image_agent):
    agent, n = image_agent, 3
    acting = _acting_with_random_latents(agent, n)
    code = torch.nn.functional.one_hot(torch.randint(8, (n, 8)), 8).float()
    image = decode_subgoal(agent, 2, code, acting)

    # By hand: level 1's AE -> level 1's decoder with level 1's z -> newest of the k slices -> its h (deter)
    # -> level 0's image decoder with level 0's z.
    level0, level1 = agent.levels[0], agent.levels[1]
    with torch.no_grad():
        h1 = level1.autoencoder.decode(code)
        z1 = acting.levels[1].latent["stoch"].flatten(-2)
        obs1 = level1.world_model.decode(torch.cat([z1, h1], -1))["vector"].mode()  # (n, k * feature_dim_0)
        dyn0 = level0.world_model.dynamics
        assert obs1.shape == (n, 2 * dyn0.feature_dim)
        h0 = obs1[:, dyn0.feature_dim :][:, dyn0.stoch_flat :]
        z0 = acting.levels[0].latent["stoch"].flatten(-2)
        expected = level0.world_model.decoders["image"](torch.cat([z0, h0], -1))
    assert image.shape == (n, 16, 16, 3)
    torch.testing.assert_close(image, expected)

    level1_image = decode_subgoal(agent, 1, code, acting)
    with torch.no_grad():
        expected1 = level0.world_model.decoders["image"](torch.cat([z0, level0.autoencoder.decode(code)], -1))
    torch.testing.assert_close(level1_image, expected1)
    with pytest.raises(ValueError, match="level 3 sends no subgoal"):
        decode_subgoal(agent, 3, code, acting)


def test_subgoal_video_stacks_every_level_above_the_real_frame(image_agent):
    from hieros.envs.vector import make_vector_env

    registry = Registry.default()
    frames = subgoal_frames(
        image_agent,
        lambda: make_vector_env(registry, {"name": "minatar", "game": "breakout", "size": 16, "obs": "rgb"}, 1, seed=0),
        steps=5,
        seed=0,
        device=torch.device("cpu"),
    )
    assert frames.shape == (5, 3 * 16, 16, 3) and frames.dtype == np.uint8
    env = make_vector_env(registry, {"name": "minatar", "game": "breakout", "size": 16, "obs": "rgb"}, 1, seed=0)
    first = env.reset(seed=0)["image"][0]
    env.close()
    np.testing.assert_array_equal(frames[0, 32:], first)  # the bottom row is the observation itself
    assert frames[0, :32].min() == 0 and frames[0, :32].max() == 255  # min-max normalised subgoal images


def test_videos_are_written_as_gif_and_mp4_with_every_frame(tmp_path):
    import imageio.v2 as imageio

    frames = np.random.default_rng(0).integers(0, 2, (7, 15, 10, 3), dtype=np.uint8) * 255  # 8 colours: GIF-exact
    gif, mp4 = write_video(frames, tmp_path / "media" / "clip", fps=5)
    assert (gif.name, mp4.name) == ("clip.gif", "clip.mp4")
    read = imageio.mimread(gif)
    assert len(read) == 7 and read[0].shape[:2] == (15 * 7 + 1, 10 * 7)  # upscaled x7 to >= 96 rows, padded to even
    np.testing.assert_array_equal(read[3][:105:7, ::7, :3], frames[3])
    with imageio.get_reader(mp4) as reader:
        assert reader.count_frames() == 7 and reader.get_meta_data()["size"] == (70, 106)  # padded to even
    assert not list((tmp_path / "media").glob(".*"))  # no temporary files left
    with pytest.raises(ValueError, match="uint8 frames"):
        write_video(frames.astype(np.float32), tmp_path / "bad")
