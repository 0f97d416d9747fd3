"""docs/protocol.md's worked example of authentication, run as a user would run it: the
document's own code, in a fresh interpreter, against a real `hypervisor serve`, so the
example cannot rot."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.processes import REPO, Host, Processes

pytestmark = pytest.mark.timeout(60)

HEADING = "## Example: authenticating (Python, pyzmq and msgpack only)"


def example_code() -> str:
    """The first ```python block under HEADING."""
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert HEADING in text, f"docs/protocol.md has no section {HEADING!r}"
    found = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.S)
    assert found, f"no python block under {HEADING!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def replies(tmp_path_factory) -> list[dict[str, Any]]:
    """What the example printed: the toolstack's `info`, then the stranger's."""
    procs = Processes(own_groups=True)
    try:
        host = Host(procs, memory="64m")
        env = {**os.environ, "BALLONET_ADMIN": host.admin_endpoint}  # BALLONET_KEYS: the run's (conftest)
        done = subprocess.run(
            [sys.executable, "-c", example_code()], env=env, cwd=tmp_path_factory.mktemp("doc"),
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return [ast.literal_eval(line) for line in done.stdout.splitlines()]
    finally:
        procs.stop_all()


def test_the_toolstack_key_from_its_files_is_answered(replies):
    first = replies[0]
    assert first["ok"] is True and first["seq"] == 1
    assert first["result"] == {"total_pages": 16384, "free_pages": 16384, "allocated_pages": 0, "domains": 0}  # 64m, empty


def test_an_unknown_key_completes_the_handshake_and_gets_a_reply(replies):
    """The ZAP handler admits any key, so a key of nobody's is answered (not met with
    silence, as a wrong server key is): the answer is the server's to give."""
    assert len(replies) == 2
    assert replies[1]["seq"] == 1 and isinstance(replies[1]["ok"], bool)


def test_an_unknown_key_is_refused_eacces_on_the_admin_endpoint(replies):
    refused = replies[1]
    assert refused["ok"] is False and refused["error"] == "EACCES"
    assert "toolstack" in refused["message"]
