"""The hypervisor's journal (hypervisor/journal.py) and what recovery needs from the cores."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.processes import REPO
from wire import replay

FRAME = b"\x85\xa1v\x01\xa2op\xb4increase_reservation\xa3seq\x07\xa6client\xa2g1\xa4args\x81\xa8nr_pages\x40"


def test_the_replay_digest_is_the_same_in_another_process():
    """A recovered record must match a retry sent to the process before the restart: hash()
    of bytes differs per PYTHONHASHSEED, so this failed with it."""
    code = f"from wire import replay; print(replay.digest({FRAME!r}))"
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=True)
    assert int(other.stdout) == replay.digest(FRAME)
    assert replay.digest(FRAME) != replay.digest(FRAME + b"\x00")
