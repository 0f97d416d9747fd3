"""A real headless browser for the report tests: Debian's Chromium, installed when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    """The chromium binary; installs Debian's package when it is missing and we are root,
    else skips the test with the reason."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, and it cannot be installed here (needs root and apt-get)")
    result = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True, timeout=600)
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium could not be installed: {result.stderr.strip()[-300:]}")
    return found


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=60)


def dom(binary: str, page: Path) -> str:
    """The page as the browser parsed it."""
    result = _run(binary, "--dump-dom", page.resolve().as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(binary: str, page: Path, png: Path, width: int = 1000, height: int = 2400) -> Path:
    result = _run(binary, f"--screenshot={png}", f"--window-size={width},{height}", "--hide-scrollbars", page.resolve().as_uri())
    assert png.exists() and png.stat().st_size > 10_000, result.stderr[-2000:]
    return png
