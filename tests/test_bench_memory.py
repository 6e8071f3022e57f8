"""Peak-memory measurement of the benchmarks: each case's own resident memory, not its parent's."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hieros.bench._memory import in_fresh_process, measure_step, resident_mib

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

PROBE = textwrap.dedent(
    """
    import numpy as np
    from hieros.bench._memory import measure_step

    def allocate(mib):
        def step():
            block = np.ones(int(mib) * 2**20, np.uint8)  # touches every page
            del block
        return measure_step(step)
    """
)


def test_child_reports_its_own_peak_not_the_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    parent_block = np.ones(1024 * 2**20, np.uint8)  # the parent holds 1 GiB more than any child will
    parent_rss = resident_mib()
    small = in_fresh_process("memory_probe", "allocate", "64")
    large = in_fresh_process("memory_probe", "allocate", "256")
    del parent_block
    assert "error" not in small and "error" not in large, (small, large)
    # ru_maxrss would report at least the parent's high-water mark here (inherited across fork + exec).
    assert large["peak_mib"] < parent_rss - 512
    assert 56 <= small["growth_mib"] <= 96
    assert 240 <= large["growth_mib"] <= 300
    assert large["peak_mib"] - small["peak_mib"] >= 150
    assert small["baseline_mib"] <= small["peak_mib"]


def test_peak_of_a_step_excludes_an_earlier_higher_peak() -> None:
    earlier = np.ones(512 * 2**20, np.uint8)
    del earlier  # the process high-water mark now includes 512 MiB that are gone
    figures = measure_step(lambda: np.ones(32 * 2**20, np.uint8).sum())
    if not figures["peak_reset"]:
        pytest.skip("this kernel does not allow resetting VmHWM")
    assert 24 <= figures["growth_mib"] <= 200


def test_failing_case_reports_the_error_line() -> None:
    result = in_fresh_process("hieros.bench._memory", "no_such_case")
    assert "AttributeError" in result["error"] and "no_such_case" in result["error"]
