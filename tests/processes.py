"""Real processes for end-to-end tests: scenarios.launch, with timers at test speed."""

from __future__ import annotations

import subprocess

from scenarios.launch import REPO, Processes, wait_for
from scenarios.launch import Host as _Host

__all__ = ["REPO", "Host", "Processes", "wait_for"]

TEST_TIMERS = {"--retry-delay": "0.1", "--max-retry-delay": "0.8", "--heartbeat": "0.2"}


class Host(_Host):
    def guest(self, name: str, *args: str, log_level: str = "debug") -> subprocess.Popen:
        """`guest run` with test-speed timers unless the test gives its own."""
        extra = [x for flag, value in TEST_TIMERS.items() if flag not in args for x in (flag, value)]
        return super().guest(name, *extra, *args, log_level=log_level)
