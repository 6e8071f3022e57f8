"""Console lines of a training run: the banner and the progress, plain and rich."""

from __future__ import annotations

import io
import math
import re

from hieros.training.console import Console


def test_plain_console_prints_one_line_per_report():
    stream = io.StringIO()
    console = Console(total_steps=1000, levels=2, mode="plain", stream=stream)
    console.banner("HIEROS training", [("run directory", "/runs/x"), ("tracking", "off")])
    console.start(0)
    console.advance(10)  # nothing printed per step
    report = {"sps": 12.5, "train/level0/model_loss": 1.23456, "train/level1/model_loss": 0.5}
    console.report(250, report, score=3.0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[hieros] HIEROS training" and "/runs/x" in lines[1]
    assert lines[-1].startswith("[hieros] step 250/1000 (25.0%) | 12.5 sps | eta ")
    assert lines[-1].endswith("| score 3.00 | L0 model_loss 1.235 | L1 model_loss 0.500")
    assert math.isclose(len(lines), 4)


def test_rich_console_renders_banner_and_progress(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = io.StringIO()
    console = Console(total_steps=100, levels=1, mode="rich", stream=stream)
    console.banner("HIEROS training", [("run directory", "/runs/x")])
    console.start(0)
    console.report(50, {"sps": 3.0, "train/level0/model_loss": 2.0}, score=None)
    console.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # without colour codes
    assert "HIEROS training" in text and "/runs/x" in text and "50/100" in text and "L0 model_loss 2.000" in text
