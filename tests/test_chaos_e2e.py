"""bench/chaos.py, short: 20 seeded faults on a real host, and not one invariant broken.

Seed 11 draws every fault kind within its 20 (each of SIGKILL, SIGSTOP and a restart, of the
hypervisor, irqbus, a guest and a device), so the hypervisor's journal and irqbus restarts are
exercised, not reported unsupported. It runs in its own process group, ended whatever happens
(the bench starts a whole host).
"""

from __future__ import annotations

import pytest

from bench.chaos_plan import ALL_KINDS
from tests.test_benches import run_bench


@pytest.mark.timeout(240)
def test_twenty_faults_of_every_kind_and_no_violation() -> None:
    result = run_bench("bench/chaos.py", "--faults", "20", "--seed", "11", timeout=220)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = result.stdout.splitlines()
    assert any(line.startswith("faults injected            20 ") for line in lines), out
    injected = {line.split()[0] + " " + line.split()[1] for line in lines if line.startswith("  ") and line.split()[-1].isdigit()}
    assert injected == {str(kind) for kind in ALL_KINDS}, out
    assert "invariant violations       0" in lines, out
