"""Replay samplers: which stored item (window) a training batch draws.

A sampler maps the current number of items ``n`` to ``count`` item indices in one
vectorised call. Index 0 is the OLDEST item still stored, ``n - 1`` the newest. The
replay (:class:`hieros.replay.Replay`) owns the data; a sampler sees only ``n``.

Built-in samplers (registry group ``sampler``), one per module:

* ``uniform`` (:mod:`.uniform`): U{0, ..., n-1}, DreamerV3's rule (spec §7.2).
* ``etbs`` (:mod:`.etbs`): efficient time-balanced sampling as the paper intends it
  (paper §2.3 eq. 12 with Appendix H eq. 24, the CDF scaled by the current size; spec §7.4).
* ``etbs_original`` (:mod:`.etbs_original`): the original code's rule bit for bit, the CDF
  scaled by the replay capacity (spec §7.3).
* ``tbs`` (:mod:`.tbs`): the O(n) time-balanced baseline of Robine et al. (2023) that ETBS
  approximates: softmax over negative per-item visit counts.

Protocol (:class:`Sampler`)::

    indices(n: int, count: int, rng: numpy.random.Generator) -> numpy.ndarray  # int64, shape (count,), in [0, n)
    state_dict() -> dict
    load_state_dict(state: dict) -> None

Optional hook: ``evict(count: int) -> None`` is called by the replay when its ``count``
oldest items were dropped (FIFO), so that a sampler keeping per-item state (``tbs``) can
shift it. Stateless samplers inherit a no-op from :class:`BaseSampler`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["BaseSampler", "Sampler", "check_temperature"]


@runtime_checkable
class Sampler(Protocol):
    """What :class:`hieros.replay.Replay` needs from a sampler."""

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BaseSampler:
    """Shared argument checks and the trivial state of a stateless sampler."""

    stateless: bool = True
    """True when successive draws are independent given ``n`` (no state changes on a draw)."""

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def evict(self, count: int) -> None:
        """The replay dropped its ``count`` oldest items. Stateless samplers ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__} is stateless and expects an empty state dict, got keys {sorted(state)}; "
                f"the checkpoint was probably written with a different sampler"
            )

    def _check_request(self, n: int, count: int) -> tuple[int, int]:
        n, count = int(n), int(count)
        if n < 1:
            raise ValueError(
                f"{type(self).__name__}.indices: cannot draw from {n} items; the replay must hold at least one "
                f"complete window before sampling"
            )
        if count < 0:
            raise ValueError(f"{type(self).__name__}.indices: count must be >= 0, got {count}")
        return n, count


def check_temperature(temperature: float, sampler: str) -> float:
    temperature = float(temperature)
    if not 0.0 <= temperature <= 1.0:
        raise ValueError(
            f"{sampler}: temperature must lie in [0, 1] (0 = uniform, 1 = fully time-balanced), got {temperature}"
        )
    return temperature
