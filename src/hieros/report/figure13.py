"""Reproduce the paper's Figure 13 (Appendix H) with the procedure of spec §7.5.

For t = 1..size: add one item, then draw one index from the sampler at the current size
N = t, and count it. The per-item counts (oldest item first), averaged over seeds, are
plotted with a ±100-item moving average like the original script. Samplers: uniform, ETBS
as the paper intends it (``etbs``) at τ ∈ {0.1, 0.3, 0.5, 0.7, 1.0}, the original code's rule
(``etbs_original``) scaled by the training capacity 1e6 and by the final size (the original
plotting script's choice), and the O(n) baseline ``tbs``.

Usage::

    python -m hieros.report.figure13 --out DIR [--size 4000] [--seeds 20]

writes ``DIR/counts.json`` (per-item mean counts and age-decile means per sampler) and
``DIR/figure13.png``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from hieros.arguments import ArgumentParser
from hieros.samplers import Sampler
from hieros.samplers.etbs import EfficientTimeBalanced
from hieros.samplers.etbs_original import EfficientTimeBalancedOriginal
from hieros.samplers.tbs import TimeBalanced
from hieros.samplers.uniform import Uniform

TEMPERATURES: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0)
SMOOTHING_RADIUS = 100


def simulate(sampler: Sampler, size: int = 4000, seeds: int = 20, seed: int = 0) -> np.ndarray:
    """Mean number of draws per item after ``size`` rounds of add-one-then-draw-one; shape (size,), oldest first.

    Stateless samplers (``sampler.stateless``) are run for all seeds at once: round t draws
    ``seeds`` indices at N = t, one per seed. A stateful sampler (``tbs``) is deep-copied per seed
    and run round by round from its current state, since its draws depend on its own history.
    """
    if size < 1 or seeds < 1:
        raise ValueError(f"simulate needs size >= 1 and seeds >= 1, got size={size}, seeds={seeds}")
    rng = np.random.default_rng(seed)
    counts = np.zeros(size, dtype=np.int64)
    if getattr(sampler, "stateless", False):
        for t in range(1, size + 1):
            counts += np.bincount(sampler.indices(t, seeds, rng), minlength=size)
    else:
        for _ in range(seeds):
            replica = copy.deepcopy(sampler)
            drawn = np.concatenate([replica.indices(t, 1, rng) for t in range(1, size + 1)])
            counts += np.bincount(drawn, minlength=size)
    return counts / seeds


def decile_means(counts: np.ndarray) -> list[float]:
    """Mean count per age decile, oldest (d1) to newest (d10)."""
    return [float(part.mean()) for part in np.array_split(np.asarray(counts, dtype=np.float64), 10)]


def smooth(counts: np.ndarray, radius: int = SMOOTHING_RADIUS) -> np.ndarray:
    """±radius moving average, shrinking the window at the ends (no zero padding)."""
    counts = np.asarray(counts, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    index = np.arange(counts.size)
    low = np.maximum(index - radius, 0)
    high = np.minimum(index + radius + 1, counts.size)
    return (cumulative[high] - cumulative[low]) / (high - low)


def default_samplers(size: int) -> dict[str, Sampler]:
    samplers: dict[str, Sampler] = {"uniform": Uniform()}
    for temperature in TEMPERATURES:
        samplers[f"etbs tau={temperature}"] = EfficientTimeBalanced(temperature)
    for temperature in TEMPERATURES:
        samplers[f"etbs_original capacity=1e6 tau={temperature}"] = EfficientTimeBalancedOriginal(temperature)
    for temperature in TEMPERATURES:
        samplers[f"etbs_original capacity={size} tau={temperature}"] = EfficientTimeBalancedOriginal(
            temperature, capacity=size
        )
    samplers["tbs temperature=20"] = TimeBalanced(20.0)
    return samplers


def run(out: str | Path, size: int = 4000, seeds: int = 20, with_tbs: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samplers = default_samplers(size)
    if not with_tbs:
        samplers = {name: s for name, s in samplers.items() if not name.startswith("tbs")}
    counts = {name: simulate(sampler, size, seeds) for name, sampler in samplers.items()}
    result: dict[str, Any] = {
        "procedure": "for t = 1..size: add one item, draw one index at N = t (spec §7.5); mean over seeds",
        "size": size,
        "seeds": seeds,
        "samplers": {name: repr(sampler) for name, sampler in samplers.items()},
        "decile_means": {name: decile_means(c) for name, c in counts.items()},
        "counts": {name: [round(float(v), 4) for v in c] for name, c in counts.items()},
    }
    (out / "counts.json").write_text(json.dumps(result, indent=1))
    _plot(counts, out / "figure13.png", size, seeds)
    return result


def _plot(counts: dict[str, np.ndarray], path: Path, size: int, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    panels = (
        ("ETBS, CDF scaled by the current size (paper intent)", lambda name: name.startswith("etbs tau")),
        ("ETBS as coded (etbs_original), CDF scaled by capacity", lambda name: name.startswith("etbs_original")),
    )
    colours = {
        temperature: plt.cm.viridis(i / max(len(TEMPERATURES) - 1, 1)) for i, temperature in enumerate(TEMPERATURES)
    }
    for axis, (title, chosen) in zip(axes, panels):
        for name, values in counts.items():
            if name == "uniform":
                axis.plot(smooth(values), color="black", label=name, linewidth=1.4)
            elif name.startswith("tbs"):
                axis.plot(smooth(values), ":", color="grey", label=name, linewidth=1.4)
            elif chosen(name):
                temperature = float(name.rsplit("tau=", 1)[1])
                style = "--" if "capacity=1e6" in name else "-"
                axis.plot(smooth(values), style, color=colours.get(temperature), label=name, linewidth=1.2)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("item index (0 = oldest)")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"times sampled (mean of {seeds} seeds, ±{SMOOTHING_RADIUS} moving average)")
    fig.suptitle(f"Figure 13 reproduction: add 1 item, draw 1, final size {size}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory for counts.json and figure13.png")
    parser.add_argument("--size", type=int, default=4000, help="final number of items (paper: 4000)")
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds to average (spec §7.5: 20)")
    parser.add_argument("--no-tbs", action="store_true", help="skip the O(n) tbs baseline (slowest curve)")
    args = parser.parse_args(argv)
    result = run(args.out, args.size, args.seeds, with_tbs=not args.no_tbs)
    width = max(len(name) for name in result["decile_means"])
    print(f"{'sampler':<{width}}  " + "  ".join(f"d{i + 1:<4}" for i in range(10)))
    for name, deciles in result["decile_means"].items():
        print(f"{name:<{width}}  " + "  ".join(f"{v:5.2f}" for v in deciles))
    print(f"wrote {Path(args.out) / 'counts.json'} and {Path(args.out) / 'figure13.png'}")


if __name__ == "__main__":
    main()
