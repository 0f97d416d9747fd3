from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.processes import Processes
from wire.keys import KEYS_ENV, KeyDir, Role

# The run's own key directory (docs/protocol.md): every process the tests start, and the tests'
# own clients, find their keys here (created on first use), never in the user's.
_KEYS = tempfile.mkdtemp(prefix="ballonet-test-keys-")
os.environ[KEYS_ENV] = _KEYS
# provisioned before any process starts, as a host's are (ballonet keys create)
_dir = KeyDir(_KEYS)
_dir.pair("hypervisor", role=Role.HYPERVISOR)
_dir.pair("irqbus")
_dir.pair("toolstack", role=Role.TOOLSTACK)
_dir.pair("device", role=Role.DEVICE)  # `irqbus device`'s default key, any guest: tests start several at once


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_KEYS, ignore_errors=True)


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
