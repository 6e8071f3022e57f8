"""Sequence replay (spec §7.1); the Figure 13 sampler study (spec §7.5) is :mod:`hieros.report.figure13`."""

from hieros.replay.buffer import Replay, ReplayDiskFullError
from hieros.replay.hierarchy_replay import HierarchyReplay

__all__ = ["HierarchyReplay", "Replay", "ReplayDiskFullError"]
