"""Replay data for the diagnostics: deterministic windows (:func:`sample_windows`), whole episodes
(:func:`find_episodes`, :func:`load_episodes`) and numpy-to-tensor conversion (:func:`to_tensors`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor


def sample_windows(replay, count: int, length: int, seed: int) -> dict[str, np.ndarray] | None:
    """Up to ``count`` distinct windows of ``length`` steps from ``replay`` (uniform over its items, numpy
    Generator ``seed``: deterministic), each field (B, T, ...), ``is_first`` forced at every window's first step as
    the replay's sampler does. None when the replay holds no window."""
    stored = replay.steps // replay.num_streams
    per_stream = max(0, stored - length + 1)
    items = per_stream * replay.num_streams
    if items == 0:
        return None
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(items, size=min(count, items), replace=False))
    streams, starts = chosen % replay.num_streams, chosen // replay.num_streams  # item order of the replay
    windows = [replay.read(int(stream), int(start), int(start) + length) for stream, start in zip(streams, starts)]
    batch = {key: np.stack([window[key] for window in windows]) for key in windows[0]}
    batch["is_first"][:, 0] = True
    return batch


def find_episodes(is_first: np.ndarray, is_last: np.ndarray) -> tuple[list[tuple[int, int]], bool]:
    """Episodes of one stream's flags (stored order): ([(start, stop)], complete).

    A complete episode runs from an ``is_first`` row to its ``is_last`` row (inclusive) or up to the row before the
    next ``is_first``. When there is none, the longest contiguous run between episode starts (the head of the
    stream, cut by the ring, or the running episode) is returned instead, with ``complete=False``.
    """
    is_first, is_last = np.asarray(is_first, bool), np.asarray(is_last, bool)
    steps = is_first.shape[0]
    starts = np.flatnonzero(is_first).tolist()
    complete = []
    for index, start in enumerate(starts):
        following = starts[index + 1] if index + 1 < len(starts) else steps
        lasts = np.flatnonzero(is_last[start:following])
        if lasts.size:
            complete.append((start, start + int(lasts[0]) + 1))
        elif index + 1 < len(starts):
            complete.append((start, following))
    if complete:
        return complete, True
    bounds = [0, *[start for start in starts if start > 0], steps]
    runs = [(begin, end) for begin, end in zip(bounds[:-1], bounds[1:]) if end > begin]
    return ([max(runs, key=lambda run: run[1] - run[0])] if runs else []), False


def load_episodes(replay, count: int) -> tuple[list[dict[str, np.ndarray]], bool, list[dict[str, int]]]:
    """The ``count`` longest complete episodes over every stream of ``replay`` (ties: older first), or the longest
    contiguous run if no stream holds a complete one: (episodes, complete, where each came from)."""
    found: list[tuple[int, int, int, bool]] = []  # (stream, start, stop, complete)
    for stream in range(replay.num_streams):
        flags = replay.read(stream, fields=("is_first", "is_last"))
        runs, complete = find_episodes(flags["is_first"], flags["is_last"])
        found += [(stream, start, stop, complete) for start, stop in runs]
    complete = any(entry[3] for entry in found)
    candidates = [entry for entry in found if entry[3] == complete]
    candidates.sort(key=lambda entry: (-(entry[2] - entry[1]), entry[0], entry[1]))
    if not complete:
        candidates = candidates[:1]
    chosen = candidates[: max(0, int(count))]
    episodes = [replay.read(stream, start, stop) for stream, start, stop, _ in chosen]
    where = [{"stream": stream, "start": start, "length": stop - start} for stream, start, stop, _ in chosen]
    return episodes, complete, where


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device | str) -> dict[str, Tensor]:
    return {key: torch.as_tensor(np.asarray(value), device=device) for key, value in arrays.items()}
