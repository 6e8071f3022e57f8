"""Replay memory and sampling speed for Atari-sized steps (64×64×3 uint8 observations).

Figures: bytes held per stored step (array bytes, and the measured resident-memory growth
of filling an in-memory replay) against the raw 12,288 observation bytes (target ≤ 1.05×
including the small per-step fields), microseconds per ``add`` of one step, and microseconds
to sample a 16×64 batch, in memory and from a memory-mapped directory.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np

from hieros.replay import Replay

OBSERVATION = (64, 64, 3)
RAW_OBSERVATION_BYTES = int(np.prod(OBSERVATION))
ACTIONS = 18
BATCH, WINDOW = 16, 64


def _spec() -> dict:
    return {
        "image": (OBSERVATION, np.uint8),
        "action": ((ACTIONS,), np.float32),
        "reward": ((), np.float32),
        "is_first": ((), bool),
        "is_last": ((), bool),
        "is_terminal": ((), bool),
    }


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux
        return -1


def _source(num_streams: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """64 random frames and one-hot actions per stream, cycled through by :func:`_fill`."""
    frames = rng.integers(0, 256, size=(64, num_streams, *OBSERVATION), dtype=np.uint8)
    actions = np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, size=(64, num_streams))]
    return frames, actions


def _fill(replay: Replay, steps: int, source: tuple[np.ndarray, np.ndarray]) -> float:
    """Add ``steps`` steps per stream; returns microseconds per add (median)."""
    frames, actions = source
    num_streams = frames.shape[1]
    timings = np.empty(steps)
    for t in range(steps):
        step = {
            "image": frames[t % 64],
            "action": actions[t % 64],
            "reward": np.zeros(num_streams, np.float32),
            "is_first": np.full(num_streams, t % 500 == 0),
            "is_last": np.full(num_streams, t % 500 == 499),
            "is_terminal": np.zeros(num_streams, bool),
        }
        start = time.perf_counter_ns()
        replay.add(step)
        timings[t] = time.perf_counter_ns() - start
    return float(np.median(timings) / 1e3)


def _sample_us(replay: Replay, repeats: int, rng: np.random.Generator) -> float:
    replay.sample(BATCH, rng)
    timings = np.empty(repeats)
    for repeat in range(repeats):
        start = time.perf_counter_ns()
        replay.sample(BATCH, rng)
        timings[repeat] = time.perf_counter_ns() - start
    return float(np.median(timings) / 1e3)


def run(quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    num_streams = 1
    capacity = 1_000 if quick else 20_000
    repeats = 10 if quick else 100
    small_bytes = ACTIONS * 4 + 4 + 3

    source = _source(num_streams, rng)
    before = _resident_bytes()
    replay = Replay(_spec(), capacity=capacity, num_streams=num_streams, window=WINDOW)
    add_us = _fill(replay, capacity // num_streams, source)
    grown = _resident_bytes() - before
    figures: dict[str, Any] = {
        "capacity_steps": capacity,
        "raw_observation_bytes": RAW_OBSERVATION_BYTES,
        "raw_step_bytes": RAW_OBSERVATION_BYTES + small_bytes,
        "held_bytes_per_step": replay.nbytes / replay.steps,
        "held_over_raw_observation": round(replay.nbytes / replay.steps / RAW_OBSERVATION_BYTES, 4),
        "resident_bytes_per_step": round(grown / replay.steps, 1) if before >= 0 else None,
        "resident_over_raw_observation": round(grown / replay.steps / RAW_OBSERVATION_BYTES, 4)
        if before >= 0
        else None,
        "add_us_per_step": round(add_us, 2),
        "sample_16x64_us_memory": round(_sample_us(replay, repeats, rng), 1),
    }
    del replay

    with tempfile.TemporaryDirectory() as directory:
        mapped = Replay(_spec(), capacity=capacity, num_streams=num_streams, window=WINDOW, directory=directory)
        figures["add_us_per_step_memmap"] = round(_fill(mapped, capacity // num_streams, source), 2)
        figures["sample_16x64_us_memmap"] = round(_sample_us(mapped, repeats, rng), 1)
        start = time.perf_counter()
        mapped.flush()
        figures["flush_s_memmap"] = round(time.perf_counter() - start, 3)
        del mapped
    figures["batch_bytes"] = BATCH * WINDOW * (RAW_OBSERVATION_BYTES + small_bytes)
    figures["target_met_memory"] = figures["held_over_raw_observation"] <= 1.05
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
