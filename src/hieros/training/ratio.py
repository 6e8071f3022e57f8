"""The train-ratio clock: how many updates are due after the agent has taken ``step`` steps."""

from __future__ import annotations


class TrainRatio:
    """DreamerV3's ``Ratio``: ``updates_per_step`` updates per agent step, carried over between calls.

    The paper's 1024 replayed steps per agent step at batch 16 x 64 is ``updates_per_step = 1``.
    The first call returns one update and starts the clock (training starts once the replay is ready).
    """

    def __init__(self, updates_per_step: float) -> None:
        if updates_per_step <= 0:
            raise ValueError(f"updates_per_step={updates_per_step} is invalid: allowed is a number > 0")
        self.updates_per_step = float(updates_per_step)
        self.last: float | None = None

    def __call__(self, step: int) -> int:
        if self.last is None:
            self.last = float(step)
            return 1
        due = int(self.updates_per_step * (step - self.last))
        self.last += due / self.updates_per_step
        return due

    def state_dict(self) -> dict:
        return {"updates_per_step": self.updates_per_step, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.updates_per_step = float(state["updates_per_step"])
        self.last = None if state["last"] is None else float(state["last"])
