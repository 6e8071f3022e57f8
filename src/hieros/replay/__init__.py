"""Sequence replay (spec §7.1) and the Figure 13 sampler study (spec §7.5)."""

from hieros.replay.buffer import Replay, ReplayDiskFullError

__all__ = ["Replay", "ReplayDiskFullError"]
