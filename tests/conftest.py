from __future__ import annotations

import pytest

from tests.processes import Processes


@pytest.fixture
def procs(request):
    p = Processes(own_groups=True)  # nothing a killed process started outlives the test
    yield p
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(p.dump_logs())
    p.stop_all()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
