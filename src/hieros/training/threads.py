"""torch's CPU thread count for a block of work (no Lightning import: the CLIs use it too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Limit torch's CPU threads to ``threads`` (0 = leave torch's default); restored afterwards."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
