"""Videos of a run (spec section 9): open-loop imagination (paper Figure 2), decoded subgoals (Figure 5), episodes.

Every video is written twice, as ``<stem>.gif`` and ``<stem>.mp4`` (H.264, yuv420p), from uint8 frames
(T, H, W, 3), upscaled by an integer factor (nearest neighbour) so that small observations stay visible.

Subgoal decoding (:func:`decode_subgoal`): the code g_i sent by level i to level i-1 is decoded by level i-1's
subgoal autoencoder into level i-1's h-space. For i-1 = 0 the image decoder of level 0 renders [z_0, h], z_0 being
level 0's current stochastic state. For i-1 = j >= 1, h belongs to level j's world model, whose decoder
reconstructs level j's observation, the k stacked level-(j-1) latents [stoch_flat, deter] (k_states; one with
kth_state); the newest slice's deter is level j-1's h, paired with level j-1's current z, and so on down to
level 0. Each decoded image is min-max normalised and stacked above the real frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hieros.agent.acting_state import ActingState
from hieros.envs.minatar import channels_to_rgb
from hieros.envs.seeding import VIDEO_ENV_SEED_OFFSET

MIN_TILE = 96  # pixels: frames are upscaled until one observation is at least this tall


# ------------------------------------------------------------------------- writing
def upscale(frames: np.ndarray, tile_height: int) -> np.ndarray:
    """(T, H, W, C) -> nearest-neighbour upscaled so that one tile of ``tile_height`` rows becomes >= MIN_TILE."""
    factor = max(1, math.ceil(MIN_TILE / max(1, tile_height)))
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return frames


def _pad_even(frames: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return frames


def write_video(frames: np.ndarray, stem: str | Path, fps: int = 10, tile_height: int | None = None) -> list[Path]:
    """Write uint8 frames (T, H, W, C) as ``stem.gif`` and ``stem.mp4``; returns both paths. C = 3 is RGB, C = 1
    grey, any other C a channel image coloured by :func:`~hieros.envs.minatar.channels_to_rgb`."""
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video needs uint8 frames (T, H, W, C) with T >= 1, got {frames.shape} {frames.dtype}")
    if frames.shape[-1] == 1:
        frames = frames.repeat(3, axis=-1)
    elif frames.shape[-1] != 3:  # channel observations (MinAtar's C object channels): one colour per channel
        frames = channels_to_rgb(frames)
    frames = _pad_even(upscale(frames, tile_height or frames.shape[1]))
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    gif, mp4 = stem.with_name(stem.name + ".gif"), stem.with_name(stem.name + ".mp4")
    for path, kwargs in (
        (gif, {"duration": 1000.0 / fps, "loop": 0}),
        (mp4, {"fps": fps, "codec": "libx264", "macro_block_size": 1, "pixelformat": "yuv420p"}),
    ):
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        imageio.mimsave(tmp, list(frames), **kwargs)
        tmp.replace(path)  # the MLflow mirror never sees a half-written video
    return [gif, mp4]


def _to_uint8(images: Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _minmax(images: Tensor) -> Tensor:
    """Per-image min-max normalisation to [0, 1]: (..., H, W, C)."""
    flat = images.flatten(-3)
    low, high = flat.min(-1).values, flat.max(-1).values
    scale = (high - low).clamp(min=1e-6)
    return (images - low[..., None, None, None]) / scale[..., None, None, None]


# ------------------------------------------------------------------------- Figure 2
def open_loop_frames(agent: Any, replay: Any, rng: np.random.Generator, device: torch.device) -> np.ndarray | None:
    """Figure 2 from 6 replay windows of level 0: truth | model | error rows; None without images or data."""
    world_model = agent.levels[0].world_model
    if "image" not in world_model.decoders or len(replay) == 0:
        return None
    batch = replay.sample(min(6, len(replay)), rng)
    tensors = {key: torch.as_tensor(value, device=device) for key, value in batch.items()}
    return world_model.open_loop_video(tensors, context=5, max_sequences=6)


# ------------------------------------------------------------------------- Figure 5
@torch.no_grad()
def decode_subgoal(agent: Any, level: int, code: Tensor, acting: ActingState) -> Tensor:
    """The image (N, H, W, C), values around [-0.5, 0.5], of the subgoal ``code`` (N, latents, classes) that
    level ``level`` >= 1 sends down, decoded through the levels with their current z (module docstring)."""
    if level < 1 or level >= len(agent.levels):
        raise ValueError(f"level {level} sends no subgoal: allowed is 1..{len(agent.levels) - 1}")
    world_model0 = agent.levels[0].world_model
    if "image" not in world_model0.decoders:
        raise ValueError("decoded subgoals are images: level 0 must observe images (an image environment)")
    below = level - 1
    h = agent.levels[below].autoencoder.decode(code.float())  # (N, D_below)
    for j in range(below, 0, -1):
        world_model = agent.levels[j].world_model
        stoch = acting.levels[j].latent["stoch"]
        features = torch.cat([stoch.flatten(-2).to(h.dtype), h], -1)
        observation = world_model.decode(features)["vector"].mode()  # (N, slots * feature_dim_{j-1})
        lower = agent.levels[j - 1].world_model.dynamics
        newest = observation.reshape(observation.shape[0], -1, lower.feature_dim)[:, -1]
        h = newest[:, lower.stoch_flat :]  # (N, D_{j-1}): the deter part of [stoch_flat, deter]
    stoch0 = acting.levels[0].latent["stoch"]
    features0 = torch.cat([stoch0.flatten(-2).to(h.dtype), h], -1)
    return world_model0.decoders["image"](features0)


@torch.no_grad()
def subgoal_frames(
    agent: Any, make_envs: Callable[[], Any], steps: int, seed: int, device: torch.device
) -> np.ndarray | None:
    """Figure 5 on a fresh rollout of ``steps`` agent steps (sampled policy): per step a column of the decoded
    subgoals of levels L-1 .. 1 (top first) above the real frame. None for a 1-level agent or without images."""
    if len(agent.levels) < 2 or "image" not in agent.levels[0].world_model.decoders:
        return None
    envs = make_envs()
    try:
        acting = agent.initial_acting_state(envs.num_envs, device)
        obs = envs.reset(seed=seed)
        frames = []
        for _ in range(steps):
            actions, _, acting = agent.act(obs, acting, "sampled")
            real = torch.as_tensor(obs["image"][:1], device=device).float() / 255.0  # (1, H, W, C)
            rows = []
            for level in reversed(range(1, len(agent.levels))):
                code = acting.levels[level - 1].goal_code[:1]
                image = decode_subgoal(agent, level, code, acting.env(0))
                rows.append(_minmax(image.float()))
            frames.append(_to_uint8(torch.cat([*rows, real], 1))[0])  # (L*H, W, C)
            obs = envs.step(actions)
        return np.stack(frames)
    finally:
        envs.close()


# ------------------------------------------------------------------------- a run's media
def write_run_media(run: Any, media_dir: Path, step: int, report: Callable[[str], None] | None = None) -> list[Path]:
    """Figure 2 and Figure 5 videos of ``run`` at ``step`` into ``media_dir``; skipped (with a note) when the
    environment has no image observations or the agent a single level."""
    from hieros.envs.vector import make_vector_env

    written: list[Path] = []
    agent, device = run.agent, run.device
    rng = np.random.default_rng([int(run.cfg.seed), int(step), 2])
    height = (
        run.agent.levels[0].world_model.decoders["image"].image_size
        if "image" in agent.levels[0].world_model.decoders
        else None
    )
    was_training = agent.training
    agent.eval()
    try:
        video = open_loop_frames(agent, run.replays[0], rng, device)
        if video is not None:
            written += write_video(video, media_dir / f"open_loop_step{step:09d}", tile_height=height)
        elif report is not None and height is None:
            report("no open-loop imagination video: the environment has no image observations")
        k_steps = int(run.cfg.hierarchy.k) ** max(1, len(agent.levels) - 1)
        frames = subgoal_frames(
            agent,
            lambda: make_vector_env(run.registry, run.cfg.env, 1, seed=int(run.cfg.seed) + VIDEO_ENV_SEED_OFFSET),
            steps=max(32, 4 * k_steps),
            seed=int(run.cfg.seed) + VIDEO_ENV_SEED_OFFSET + int(step),
            device=device,
        )
        if frames is not None:
            written += write_video(frames, media_dir / f"subgoals_step{step:09d}", tile_height=height)
    finally:
        agent.train(was_training)
    return written


def episode_frames(images: list[np.ndarray]) -> np.ndarray:
    """Level-0 image observations (H, W, 3) of recorded episodes -> (T, H, W, 3)."""
    return np.stack(images).astype(np.uint8)
