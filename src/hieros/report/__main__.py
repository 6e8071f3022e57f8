"""``python -m hieros.report SOURCE [--out DIR] [--score ...] [--mode ...] [--reps N]``."""

from hieros.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
