"""Every shipped scenario, run for real through `python -m scenarios run`, must pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenario_passes(procs, path, tmp_path):
    # started through `procs`, so that on failure or timeout the runner gets SIGTERM and stops
    # every process it started itself
    runner = procs.start("runner", "scenarios", "run", str(path), "--out", str(tmp_path))
    assert runner.wait(170) == 0, procs.log("runner")[-4000:]
    out = next(tmp_path.iterdir())
    assert {"series.csv", "series.json", "plot.svg", "report.txt"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "series.json").read_text())["samples"]
    assert "PASSED" in (out / "report.txt").read_text()
    assert (out / "logs" / "hypervisor.log").exists()
