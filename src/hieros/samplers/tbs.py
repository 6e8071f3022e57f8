"""Time-balanced sampling in the spirit of Robine et al. (2023), the O(n) baseline ETBS approximates.

TWM (``jrobine/twm: replay_buffer.py``) keeps a visit count v_i per item and draws a batch
without replacement with probabilities softmax(-v / temperature) (TWM's default temperature
is 20; the original HIEROS repository carries the same rule as ``TimeBalancedNaive``). Items
that were drawn less often, in particular new ones, become more likely, so every item ends
up drawn about equally often regardless of its age. The paper (§2.3) cites this method's
O(n) cost per draw as the reason for ETBS.

The visit counts are the sampler's STATE (``state_dict``/``load_state_dict``). The sampler is
told only the current item count n, so it keeps the counts itself, oldest first:

* n larger than the number of tracked items: the new (newest) items start at 0 visits;
* n smaller: the oldest items were evicted and their counts are dropped;
* a replay at its capacity (n unchanged while items are replaced) must call :meth:`evict`
  with the number of items it dropped (:class:`hieros.replay.Replay` does).

A batch is drawn without replacement (Gumbel top-k, exactly equivalent to successive
draws without replacement) when ``count <= n``, with replacement otherwise. Unlike ETBS and
uniform, draws are NOT independent: each batch updates the counts. Cost O(n) per batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hieros.registry import register
from hieros.samplers import BaseSampler


@register("sampler", "tbs")
class TimeBalanced(BaseSampler):
    """O(n) time-balanced sampling (TWM): softmax of -visits/temperature, visit counts kept as state."""

    stateless = False

    def __init__(self, temperature: float = 20.0) -> None:
        temperature = float(temperature)
        if not temperature > 0.0:
            raise ValueError(
                f"tbs: temperature must be > 0 (it divides the visit counts; TWM uses 20), got {temperature}"
            )
        self.temperature = temperature
        self._visits = np.zeros(0, dtype=np.int64)  # buffer; live counts are _visits[_start:_stop]
        self._start = 0
        self._stop = 0

    @property
    def visits(self) -> np.ndarray:
        """Visit count per tracked item, oldest first (a copy)."""
        return self._visits[self._start : self._stop].copy()

    def evict(self, count: int) -> None:
        count = int(count)
        if count < 0:
            raise ValueError(f"tbs.evict: count must be >= 0, got {count}")
        self._start = min(self._start + count, self._stop)

    def _track(self, n: int) -> np.ndarray:
        """Make exactly n items tracked (new ones at 0 visits, evicted oldest dropped); returns the live view."""
        tracked = self._stop - self._start
        if n < tracked:
            self._start = self._stop - n
        elif n > tracked:
            if self._start + n > self._visits.size:
                live = self._visits[self._start : self._stop]
                grown = np.zeros(max(2 * n, 1024), dtype=np.int64)
                grown[: live.size] = live
                self._visits, self._start, self._stop = grown, 0, live.size
            self._visits[self._stop : self._start + n] = 0
            self._stop = self._start + n
        return self._visits[self._start : self._stop]

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        n, count = self._check_request(n, count)
        visits = self._track(n)  # (n,)
        logits = visits / -self.temperature
        if count <= n:
            keys = logits + rng.gumbel(size=n)  # Gumbel top-k = sampling without replacement
            chosen = np.argpartition(-keys, count - 1)[:count] if count else np.zeros(0, np.int64)
            chosen = chosen[np.argsort(-keys[chosen])].astype(np.int64)  # in the order of successive draws
        else:
            probs = np.exp(logits - logits.max())
            chosen = rng.choice(n, size=count, replace=True, p=probs / probs.sum()).astype(np.int64)
        np.add.at(visits, chosen, 1)
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {"visits": self.visits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"visits"}:
            raise ValueError(
                f"tbs expects a state dict with the single key 'visits', got keys {sorted(state)}; "
                f"the checkpoint was probably written with a different sampler"
            )
        visits = np.asarray(state["visits"], dtype=np.int64).reshape(-1)
        self._visits = visits.copy()
        self._start, self._stop = 0, visits.size

    def __repr__(self) -> str:
        return f"TimeBalanced(temperature={self.temperature})"
