"""bench/chaos.py, short: 20 seeded faults on a real host, and not one invariant broken.

It runs in its own process group, ended whatever happens (the bench starts a whole host).
"""

from __future__ import annotations

import pytest

from tests.test_benches import run_bench


@pytest.mark.timeout(240)
def test_twenty_faults_and_no_violation() -> None:
    result = run_bench("bench/chaos.py", "--faults", "20", "--seed", "12", timeout=220)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = result.stdout.splitlines()
    assert "faults injected            20" in " ".join(lines) or any(line.startswith("faults injected            20 ") for line in lines), out
    assert "invariant violations       0" in lines, out
