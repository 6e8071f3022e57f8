"""MinAtar games (``minatar.Environment``) as image observations.

``obs="channels"`` (default): the game's 10×10×C boolean state as a C-channel image, 255 where a channel is on.
This is what MinAtar's own agents see (Young & Tian 2019), and every object weighs the same in the world model's
image loss. ``obs="rgb"``: the state colourised as MinAtar's GUI does: each cell takes the colour of its highest-index
active channel, channel c (0-based) gets colour c+1 of seaborn's ``cubehelix`` palette with C colours, empty cells
are black. Issue 13 measured why ``channels`` is the default: Breakout's paddle is colour (22, 61, 78), close to
black, so in RGB it is ~1/6 of the squared-error signal of a channel image; after 1,500 world-model updates
(lr 1e-3, 16x16 latents) on random-policy data the RGB model still drew the paddle at its start column (right in 42%
of frames, the start column's share of the data) and its prior ignored the action (move +-0.00 cells after left /
right), while the channel model placed the paddle in 92% of frames after 1,000 updates and its prior moved it
-0.48 / +0.59 cells after left / right (true -0.95 / +0.85).

The palette is computed here from matplotlib's cubehelix formula (neither matplotlib nor seaborn is needed); videos
of channel observations use it too (:func:`channels_to_rgb`). The 10×10 board is upscaled to ``size``×``size`` by
nearest neighbour with floor mapping (source cell ⌊i·10/size⌋, the same rule as ``cv2.INTER_NEAREST``); with
``size`` a multiple of 10 every cell is an exact (size/10)² block.

Actions: MinAtar's full set of 6 by default (``minimal_actions=False``, the standard MinAtar benchmark setting);
``minimal_actions=True`` exposes only the game's minimal set (breakout 3, freeway 3, asterix 5, seaquest 6,
space_invaders 4).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np

from hieros.envs.seeding import SeededEnv
from hieros.registry import register

MINATAR_GAMES: tuple[str, ...] = ("breakout", "freeway", "asterix", "seaquest", "space_invaders")
MINATAR_GRID = 10
MINATAR_OBS: tuple[str, ...] = ("channels", "rgb")
_CUBEHELIX_COEFFICIENTS = ((-0.14861, 1.78277), (-0.29227, -0.90649), (1.97294, 0.0))  # (p0, p1) for R, G, B


def cubehelix_palette(num_colors: int) -> np.ndarray:
    """seaborn's ``color_palette("cubehelix", num_colors)`` as uint8 RGB, with black prepended: (num_colors+1, 3).

    seaborn samples matplotlib's 256-entry cubehelix lookup table (γ=1, s=0.5, r=−1.5, h=1) at
    x = linspace(0, 1, n+2)[1:-1]; entry k of the table is the formula evaluated at k/255.
    """
    x = np.linspace(0.0, 1.0, num_colors + 2)[1:-1]
    x = np.minimum(np.floor(x * 256), 255) / 255  # the lookup-table entry matplotlib returns for x
    amplitude = x * (1 - x) / 2
    phi = 2 * np.pi * (0.5 / 3 - 1.5 * x)
    p0, p1 = np.asarray(_CUBEHELIX_COEFFICIENTS).T  # (3,) each
    rgb = x[:, None] + amplitude[:, None] * (np.cos(phi)[:, None] * p0 + np.sin(phi)[:, None] * p1)  # (n, 3)
    colors = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    return np.concatenate([np.zeros((1, 3), np.uint8), colors])


def channels_to_rgb(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, C) channel images (uint8 0..255 or floats in [0, 1]) as uint8 RGB (..., H, W, 3) for viewing.

    Channel c takes colour c+1 of :func:`cubehelix_palette` (C), weighted by its value; overlapping channels add up
    (clipped). A binary MinAtar observation renders like the GUI except where objects overlap.
    """
    frames = np.asarray(frames)
    values = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
    colors = cubehelix_palette(frames.shape[-1])[1:].astype(np.float32)  # (C, 3)
    return np.clip(np.clip(values, 0.0, 1.0) @ colors, 0, 255).round().astype(np.uint8)


@contextlib.contextmanager
def _mute_minatar_import_warning() -> Iterator[None]:
    # minatar logs "Cannot import matplotlib and/or seaborn" through logging.warning at import time, which also
    # configures the root logger when it has no handler; hieros renders the state itself, so drop that record.
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    drop = logging.Filter("hieros.never")  # a logger filter that rejects every record for the duration
    root.addHandler(placeholder)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        root.removeHandler(placeholder)


def _load_minatar() -> Any:
    with _mute_minatar_import_warning():
        import minatar
    return minatar


@register("env", "minatar")
class MinAtar(SeededEnv):
    """A MinAtar game as ``{"image": uint8 (size, size, C)}`` (``obs="channels"``, C = the game's channels) or
    ``(size, size, 3)`` (``obs="rgb"``) with ``Discrete(6)`` actions (see module docstring).

    ``sticky_prob`` is MinAtar's sticky-action probability (0.1 is its standard). An episode is truncated after
    ``max_steps`` agent steps. ``reset(seed=s)`` reseeds the game's RNG (sticky actions included); the first
    ``reset()`` without a seed uses the constructor's ``seed``. The sticky "last action" is reset to NOOP at every
    episode start so that episodes are independent.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game: str,
        seed: int,
        size: int = 64,
        sticky_prob: float = 0.1,
        max_steps: int = 10000,
        minimal_actions: bool = False,
        obs: str = "channels",
    ) -> None:
        if game not in MINATAR_GAMES:
            close = difflib.get_close_matches(str(game).lower(), MINATAR_GAMES, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown MinAtar game {game!r}. Valid names: {', '.join(MINATAR_GAMES)}.{hint}")
        if int(size) < 1:
            raise ValueError(f"minatar size must be a positive number of pixels, got {size}")
        if not 0.0 <= float(sticky_prob) <= 1.0:
            raise ValueError(f"minatar sticky_prob is a probability in [0, 1], got {sticky_prob}")
        if obs not in MINATAR_OBS:
            raise ValueError(f"minatar obs={obs!r} is invalid: allowed is {' | '.join(MINATAR_OBS)}")
        if int(max_steps) < 1:
            raise ValueError(f"minatar max_steps must be a positive step count, got {max_steps}")
        minatar = _load_minatar()
        self.game = game
        self._game = minatar.Environment(game, sticky_action_prob=float(sticky_prob))
        super().__init__(seed)
        self._max_steps = int(max_steps)
        self._steps = 0
        self._episode_over = True
        full_set = list(range(self._game.num_actions()))
        self._action_set = np.asarray(self._game.minimal_action_set() if minimal_actions else full_set)
        channels = self._game.state_shape()[2]
        self._palette = cubehelix_palette(channels)  # (C+1, 3) uint8
        self._channel_codes = np.arange(1, channels + 1, dtype=np.uint8)  # (C,), 0 is the empty cell
        self._pixel_to_cell = (np.arange(int(size)) * MINATAR_GRID) // int(size)  # (size,) nearest-neighbour map
        self.action_space = gymnasium.spaces.Discrete(len(self._action_set), seed=self._seed)
        self.obs = obs
        depth = channels if obs == "channels" else 3
        self.observation_space = gymnasium.spaces.Dict(
            {"image": gymnasium.spaces.Box(0, 255, (int(size), int(size), depth), np.uint8)}
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        seed = self.begin_reset(seed)
        if seed is not None:
            self._game.seed(int(seed))
        self._game.reset()
        self._game.last_action = 0
        self._steps = 0
        self._episode_over = False
        return self._observation(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError(f"minatar {self.game}: step() called after the episode ended; call reset() first")
        index = int(action)
        if not 0 <= index < len(self._action_set):
            raise ValueError(f"minatar {self.game}: action {action!r} is outside 0..{len(self._action_set) - 1}")
        reward, terminal = self._game.act(int(self._action_set[index]))
        self._steps += 1
        terminated = bool(terminal)
        truncated = self._steps >= self._max_steps and not terminated
        self._episode_over = terminated or truncated
        return self._observation(), float(reward), terminated, truncated, {}

    def state(self) -> np.ndarray:
        """The raw MinAtar state: bool (10, 10, C)."""
        return self._game.state()

    def render_state(self, state: np.ndarray) -> np.ndarray:
        """Colourise and upscale a bool (10, 10, C) state to uint8 (size, size, 3)."""
        codes = np.max(state * self._channel_codes, axis=2)  # (10, 10): highest active channel + 1, or 0
        cells = codes[np.ix_(self._pixel_to_cell, self._pixel_to_cell)]  # (size, size)
        return self._palette[cells]

    def channel_image(self, state: np.ndarray) -> np.ndarray:
        """Upscale a bool (10, 10, C) state to uint8 (size, size, C), 255 where a channel is on."""
        cells = state[np.ix_(self._pixel_to_cell, self._pixel_to_cell)]  # (size, size, C)
        return cells.astype(np.uint8) * np.uint8(255)

    def _observation(self) -> dict[str, np.ndarray]:
        state = self._game.state()
        return {"image": self.channel_image(state) if self.obs == "channels" else self.render_state(state)}
