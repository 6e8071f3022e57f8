"""``python -m hieros.bench [--quick] [--only NAME ...] [--device D] [--precision P] [--compile] [--out FILE]``.

Every module of :mod:`hieros.bench` that defines ``run(quick: bool = False) -> dict`` is a benchmark (found with
pkgutil; a new ``bench/<topic>.py`` needs no registration). The JSON maps each module name to
``{"seconds": wall time, "device": where it ran, "result": run()'s dict}`` or, when the module raised,
``{"seconds": ..., "error": "..."}``; its top level records the device (and its name), torch, precision and
compile backend. A ``run`` that also accepts ``options`` gets the :class:`~hieros.bench._device.BenchOptions` of
``--device`` (auto: CUDA when torch sees a GPU), ``--precision`` and ``--compile``; the others run on the CPU.
The exit code is 1 when any benchmark raised, 2 for a usage error (``--device cuda`` without CUDA). Whatever a
benchmark prints goes to stderr, so stdout stays JSON; ``--out`` is rewritten after each benchmark, so a run that
is stopped keeps the figures of the benchmarks that finished.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import pkgutil
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hieros.bench
from hieros.arguments import ArgumentParser
from hieros.bench._device import CPU, DEVICES, PRECISIONS, BenchOptions, DeviceError, resolve_device

PACKAGE = hieros.bench.__name__


def discover() -> list[str]:
    """Names of the benchmark modules (every module of the package except ``__main__`` and private ones)."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(hieros.bench.__path__)
        if not info.ispkg and not info.name.startswith("_")
    )


def run_one(name: str, quick: bool, options: BenchOptions = CPU) -> dict[str, Any] | None:
    """``{"seconds", "device", "result"}``, ``{"seconds", "device", "error"}``, or None when the module has no
    ``run`` function."""
    start = time.perf_counter()
    device = "cpu"
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
        run = getattr(module, "run", None)
        if not callable(run):
            return None  # a helper module, not a benchmark
        kwargs: dict[str, Any] = {"quick": quick}
        if "options" in inspect.signature(run).parameters:
            kwargs["options"], device = options, options.device
        with contextlib.redirect_stdout(sys.stderr):
            result = run(**kwargs)
        json.dumps(result, default=_jsonable)  # fail here, with the module's name, if the figures are not JSON-able
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        seconds = round(time.perf_counter() - start, 3)
        return {"seconds": seconds, "device": device, "error": f"{type(error).__name__}: {error}"}
    return {"seconds": round(time.perf_counter() - start, 3), "device": device, "result": result}


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths: the usual non-JSON figures a benchmark returns."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv: Sequence[str] | None = None) -> int:
    available = discover()
    parser = ArgumentParser(prog="python -m hieros.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few seconds per benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(available)}")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (default): cuda when available")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true", help="Fabric precision of the updates")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="torch.compile the update computations (backend: inductor when not named; aot_eager, eager)",
    )
    args = parser.parse_args(argv)
    names = args.only or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; the benchmarks are: {', '.join(available)}")
    try:
        options = BenchOptions(
            device=resolve_device(args.device),
            precision=args.precision,
            compile=args.compile is not None,
            compile_backend=args.compile or "inductor",
        )
    except DeviceError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2

    report = {
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **options.describe(),
        "benchmarks": {},
    }
    for name in names:
        entry = run_one(name, args.quick, options)
        if entry is not None:
            report["benchmarks"][name] = entry
            _write(args.out, report)
    print(json.dumps(report, indent=2, default=_jsonable))
    _write(args.out, report)
    failed = [name for name, entry in report["benchmarks"].items() if "error" in entry]
    if failed:
        print(f"hieros.bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _write(out: Path | None, report: dict[str, Any]) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
