"""Config keys added to hieros after runs and checkpoints already existed, each with the value that behaves as the
code did before the key existed. A run whose saved config lacks such a key counts as holding that value: its
checkpoints resume (:func:`hieros.training.checkpoint.config_differences`) and ``hieros-report`` puts it in the same
variant as the runs that set the value explicitly (:func:`hieros.report.variants.assign_variants`).

Add an entry with every new option whose default keeps the old behaviour. Torch-free, so the report can read it.
"""

from __future__ import annotations

from typing import Any

ADDED_KEYS: dict[str, Any] = {
    "agent.world_model.image_loss": "mse",
    # Read only by image_loss: weighted_mse; older runs never weighted, so the default stands for them.
    "agent.world_model.image_on_weight": 10.0,
}
"""Dotted config key -> the value that reproduces the behaviour from before the key existed."""
