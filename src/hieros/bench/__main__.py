"""``python -m hieros.bench [--quick] [--only NAME ...] [--out FILE]``: run the benchmarks, print JSON.

Every module of :mod:`hieros.bench` that defines ``run(quick: bool = False) -> dict`` is a benchmark (found with
pkgutil; a new ``bench/<topic>.py`` needs no registration). The JSON maps each module name to
``{"seconds": wall time, "result": run()'s dict}`` or, when the module raised, ``{"seconds": ..., "error": "..."}``.
The exit code is 1 when any benchmark raised. Whatever a benchmark prints goes to stderr, so stdout stays JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
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

PACKAGE = hieros.bench.__name__


def discover() -> list[str]:
    """Names of the benchmark modules (every module of the package except ``__main__`` and private ones)."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(hieros.bench.__path__)
        if not info.ispkg and not info.name.startswith("_")
    )


def run_one(name: str, quick: bool) -> dict[str, Any] | None:
    """``{"seconds", "result"}``, ``{"seconds", "error"}``, or None when the module has no ``run`` function."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
        run = getattr(module, "run", None)
        if not callable(run):
            return None  # a helper module, not a benchmark
        with contextlib.redirect_stdout(sys.stderr):
            result = run(quick=quick)
        json.dumps(result, default=_jsonable)  # fail here, with the module's name, if the figures are not JSON-able
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        return {"seconds": round(time.perf_counter() - start, 3), "error": f"{type(error).__name__}: {error}"}
    return {"seconds": round(time.perf_counter() - start, 3), "result": result}


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths: the usual non-JSON figures a benchmark returns."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv: Sequence[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(prog="python -m hieros.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few seconds per benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(available)}")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    names = args.only or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; the benchmarks are: {', '.join(available)}")

    report = {
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "benchmarks": {},
    }
    for name in names:
        entry = run_one(name, args.quick)
        if entry is not None:
            report["benchmarks"][name] = entry
    text = json.dumps(report, indent=2, default=_jsonable)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    failed = [name for name, entry in report["benchmarks"].items() if "error" in entry]
    if failed:
        print(f"hieros.bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
