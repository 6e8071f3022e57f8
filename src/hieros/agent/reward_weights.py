"""The reward weights of eq. 1 at each level of the hierarchy (paper section 2.1, spec section 6).

Kept free of torch so that config validation (``hieros.config``) can use it before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PAPER_SUBGOAL_WEIGHT = 0.3  # w_g of eq. 1 where the config leaves it null (the paper's value)


def level_reward_weights(cfg: Mapping[str, Any], level: int) -> dict[str, float]:
    """The reward weights of eq. 1 that apply at ``level``; terms a level does not have are omitted.

    Every level but the top has a subgoal (weight w_g, the paper's 0.3 when the config says null). Novelty is
    rewarded on every level, or only above level 0 with ``novelty_levels: higher`` (the original sweep).
    """
    hierarchy = cfg["hierarchy"]
    weights_cfg = hierarchy["reward_weights"]
    weights = {"extrinsic": float(weights_cfg["extrinsic"])}
    if level < hierarchy["layers"] - 1:  # every level below the top has a subgoal
        subgoal = weights_cfg["subgoal"]
        weights["subgoal"] = PAPER_SUBGOAL_WEIGHT if subgoal is None else float(subgoal)
    novelty_here = hierarchy["layers"] > 1 and (hierarchy["novelty_levels"] == "all" or level > 0)
    if novelty_here:
        weights["novelty"] = float(weights_cfg["novelty"])
    return {name: weight for name, weight in weights.items() if weight > 0 or name == "extrinsic"}
