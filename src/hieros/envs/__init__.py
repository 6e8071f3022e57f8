"""Environments (registry group ``env``) and the vectorised driver used by the training loop.

Every environment is a :class:`gymnasium.Env` with a ``Dict`` observation space holding exactly one key,
``"image"`` (uint8, H×W×C) or ``"vector"`` (float32, D), and a ``Discrete`` action space:

* :mod:`hieros.envs.atari100k` — the Atari100k protocol on ale-py (``atari100k``);
* :mod:`hieros.envs.gym` — any gymnasium id with a Box observation and Discrete actions (``gym``);
* :mod:`hieros.envs.minatar` — MinAtar games as object-channel (or RGB) images (``minatar``);
* :mod:`hieros.envs.chain` — a synthetic bandit chain for debugging and the learning regression test (``chain``);
* :mod:`hieros.envs.seeding` — :class:`~hieros.envs.seeding.SeededEnv`, the seeding rule they share;
* :mod:`hieros.envs.vector` — :class:`~hieros.envs.vector.VectorEnv`, batching with DreamerV3 episode flags.
"""
