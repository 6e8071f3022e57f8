"""The Atari100k protocol (spec §1.2, fixed version) on gymnasium + ale-py.

One agent step = ``action_repeat`` emulator frames with the same action; rewards are summed (not clipped) and the
loop stops early when the episode ends. The observation is the element-wise max of the last two raw frames of the
episode (on reset only the reset frame exists, so it is returned as is), resized to ``size``×``size`` with
``cv2.INTER_AREA``. At reset, n ~ U{0, …, noop_max−1} NOOP frames are played, drawn from the env's seeded
``np_random`` (the game is reset again if it ends during the no-ops); they are not agent steps. The minimal action
set is used, a life loss does not end the episode, and reaching ``max_frames`` emulator frames is ``truncated``,
never ``terminated`` (the original set ``is_terminal = is_last``, spec §10).

The base env is ``gym.make("ALE/<Rom>-v5", frameskip=1, ...)``; the protocol wrapper drives its ALE interface one
frame at a time (what ``AtariEnv.step`` does with ``frameskip=1``) so that it can read every raw screen.
"""

from __future__ import annotations

import difflib
import types
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from hieros.envs.seeding import SeededEnv
from hieros.registry import register

ATARI100K_GAMES: types.MappingProxyType[str, str] = types.MappingProxyType(
    {
        "alien": "Alien",
        "amidar": "Amidar",
        "assault": "Assault",
        "asterix": "Asterix",
        "bank_heist": "BankHeist",
        "battle_zone": "BattleZone",
        "boxing": "Boxing",
        "breakout": "Breakout",
        "chopper_command": "ChopperCommand",
        "crazy_climber": "CrazyClimber",
        "demon_attack": "DemonAttack",
        "freeway": "Freeway",
        "frostbite": "Frostbite",
        "gopher": "Gopher",
        "hero": "Hero",
        "jamesbond": "Jamesbond",
        "kangaroo": "Kangaroo",
        "krull": "Krull",
        "kung_fu_master": "KungFuMaster",
        "ms_pacman": "MsPacman",
        "pong": "Pong",
        "private_eye": "PrivateEye",
        "qbert": "Qbert",
        "road_runner": "RoadRunner",
        "seaquest": "Seaquest",
        "up_n_down": "UpNDown",
    }
)
"""The 26 Atari100k games: friendly name (= ale-py's snake_case ROM name) → ALE rom id (``ALE/<id>-v5``)."""

_NOOP = 0  # ale_py.Action.NOOP; index 0 of every minimal action set


def _unknown_game_message(game: str) -> str:
    lowered = str(game).lower().replace("-", "_").replace(" ", "_")
    by_rom = {rom.lower(): name for name, rom in ATARI100K_GAMES.items()}
    close = difflib.get_close_matches(lowered, list(ATARI100K_GAMES), n=1, cutoff=0.5)
    if lowered.replace("_", "") in by_rom:
        close = [by_rom[lowered.replace("_", "")]]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown Atari100k game {game!r}. The 26 valid names are: {', '.join(ATARI100K_GAMES)}.{hint}"


@register("env", "atari100k")
class Atari100k(SeededEnv):
    """Atari100k game with the DreamerV3/HIEROS protocol: repeat 4, max-pool, 0-29 no-ops, 64×64 RGB, minimal actions.

    Observation ``{"image": uint8 (size, size, 3)}`` (``(size, size, 1)`` with ``gray=True``); action
    ``Discrete(len(minimal action set))``. ``reset(seed=s)`` seeds the ALE and the no-op RNG, so equal seeds give
    equal observations under equal actions; the first ``reset()`` without a seed uses the constructor's ``seed``.
    ``info`` holds ``lives`` and ``episode_frame_number``; the reset info also holds ``noops``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game: str,
        seed: int,
        size: int = 64,
        action_repeat: int = 4,
        noop_max: int = 30,
        max_frames: int = 108000,
        gray: bool = False,
        sticky_prob: float = 0.0,
    ) -> None:
        if game not in ATARI100K_GAMES:
            raise ValueError(_unknown_game_message(game))
        if int(size) < 1:
            raise ValueError(f"atari100k size must be a positive number of pixels, got {size}")
        if int(action_repeat) < 1:
            raise ValueError(f"atari100k action_repeat must be >= 1, got {action_repeat}")
        if int(noop_max) < 0:
            raise ValueError(f"atari100k noop_max must be >= 0 (0 disables no-op starts), got {noop_max}")
        if int(max_frames) < 1:
            raise ValueError(f"atari100k max_frames must be a positive frame count (108000 = 30 min), got {max_frames}")
        if not 0.0 <= float(sticky_prob) <= 1.0:
            raise ValueError(f"atari100k sticky_prob is a probability in [0, 1], got {sticky_prob}")
        import ale_py  # imported here: importing ale_py registers its envs in gymnasium's global registry

        gym.register_envs(ale_py)
        # ALE's own banner and info lines go straight to the process's stdout/stderr; keep its errors only (a
        # process-wide setting of ale-py's logger, the same for every env this process makes)
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self.game = game
        self.rom_id = ATARI100K_GAMES[game]
        self._size = int(size)
        self._action_repeat = int(action_repeat)
        self._noop_max = int(noop_max)
        self._gray = bool(gray)
        super().__init__(seed)
        try:
            self._base = gym.make(
                f"ALE/{self.rom_id}-v5",
                frameskip=1,
                repeat_action_probability=float(sticky_prob),
                full_action_space=False,
                max_num_frames_per_episode=int(max_frames),
            )
        except Exception as error:
            raise RuntimeError(
                f"ale-py {ale_py.__version__} could not load the ROM {self.rom_id!r} (game {game!r}): {error}. "
                f"ale-py >= 0.9 bundles the Atari ROMs: reinstall it with `pip install -U ale-py`. For custom ROMs set "
                f"the environment variable ALE_ROMS_DIR to a directory holding the file "
                f"'{game}.bin' (ale-py names ROM files by the snake_case game name)."
            ) from error
        self.ale = self._base.unwrapped.ale
        self._action_set = np.asarray(self.ale.getMinimalActionSet())
        self.action_space = gym.spaces.Discrete(len(self._action_set), seed=self._seed)
        channels = 1 if self._gray else 3
        self.observation_space = gym.spaces.Dict(
            {"image": gym.spaces.Box(0, 255, (self._size, self._size, channels), np.uint8)}
        )
        height, width = self.ale.getScreenDims()
        self._frames = np.zeros((2, height, width, 3), np.uint8)  # ring of the last two raw RGB screens
        self._latest = 0
        self._episode_over = True

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        seed = self.begin_reset(seed)
        self._base.reset(seed=seed)  # with a seed: seeds the ALE and reloads the ROM
        noops = int(self.np_random.integers(self._noop_max)) if self._noop_max > 0 else 0
        for _ in range(noops):
            self.ale.act(_NOOP)
            if self.ale.game_over():
                self.ale.reset_game()
        self._latest = 0
        self.ale.getScreenRGB(self._frames[0])
        self._frames[1] = 0  # no second frame yet: the pooled reset observation is the reset frame
        self._episode_over = False
        return self._observation(), {**self._info(), "noops": noops}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError(f"atari100k {self.game}: step() called after the episode ended; call reset() first")
        index = int(action)
        if not 0 <= index < len(self._action_set):
            raise ValueError(
                f"atari100k {self.game}: action {action!r} is outside the minimal action set of "
                f"{len(self._action_set)} actions (valid: 0..{len(self._action_set) - 1})"
            )
        ale_action = self._action_set[index]
        reward = 0.0
        for _ in range(self._action_repeat):
            reward += self.ale.act(ale_action)
            self._latest ^= 1
            self.ale.getScreenRGB(self._frames[self._latest])
            if self.ale.game_over():  # game over or frame cap reached
                break
        terminated = bool(self.ale.game_over(with_truncation=False))
        truncated = bool(self.ale.game_truncated()) and not terminated
        self._episode_over = terminated or truncated
        return self._observation(), float(reward), terminated, truncated, self._info()

    def close(self) -> None:
        self._base.close()
        super().close()

    # ------------------------------------------------------------------ helpers
    def _observation(self) -> dict[str, np.ndarray]:
        pooled = np.maximum(self._frames[0], self._frames[1])
        image = cv2.resize(pooled, (self._size, self._size), interpolation=cv2.INTER_AREA)
        if self._gray:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
        return {"image": image}

    def _info(self) -> dict[str, Any]:
        return {"lives": int(self.ale.lives()), "episode_frame_number": int(self.ale.getEpisodeFrameNumber())}

    @property
    def action_set(self) -> np.ndarray:
        """The ALE actions behind the agent's indices (the game's minimal action set)."""
        return self._action_set.copy()
