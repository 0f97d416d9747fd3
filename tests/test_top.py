"""`hypervisor top`: frames, rates from consecutive frames, and the CLI in batch mode."""

from __future__ import annotations

import io

import pytest

from hypervisor.top import Frame, render, run
from tests.processes import Host

INFO = {"total_pages": 16384, "free_pages": 8192, "allocated_pages": 8192, "domains": 1}


def dom(pages: int) -> dict:
    return {"name": "web", "domid": 3, "state": "running", "current_pages": pages, "target_pages": 4096, "max_pages": 8192,
            "balloon": {"state": "retrying", "schedule_delay": 4, "retry_count": 3}}


@pytest.mark.timeout(10)
def test_a_frame_shows_pool_domains_and_rates():
    first = Frame(0.0, INFO, [dom(2048)], {"web": 10})
    second = Frame(2.0, INFO, [dom(2560)], {"web": 110})
    assert "-" in render(first, None).splitlines()[-1]
    row = render(second, first).splitlines()[-1].split()
    assert row[:6] == ["web", "3", "running", "10", "16", "32"]
    assert row[6] == "+1.0"  # 512 pages in 2 s = 1 MiB/s
    assert row[7:] == ["retrying", "4", "3", "50"]
    assert "32 MiB free" in render(second, first)


@pytest.mark.timeout(10)
def test_batch_mode_prints_the_asked_number_of_frames():
    out = io.StringIO()
    frames = iter([Frame(float(i), INFO, [dom(2048)]) for i in range(5)])
    run(lambda: next(frames), delay=0.01, iterations=3, out=out)
    assert out.getvalue().count("ballonet host") == 3


@pytest.mark.timeout(60)
def test_top_against_a_running_host(procs):
    host = Host(procs, memory="64m")
    host.guest("web", "--memory", "8m")
    host.wait_registered("web")
    result = host.tool("top", "-d", "0.2", "-i", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ballonet host") == 2 and "web" in result.stdout


@pytest.mark.timeout(60)
def test_top_shows_interrupt_rates_with_irqbus(procs):
    from tests.processes import Irqbus

    bus = Irqbus(procs)
    host = Host(procs, memory="64m", extra=("--irqbus", bus.endpoint))
    host.guest("web", "--memory", "8m", "--irqbus", bus.endpoint, "--device", "nic0:pin=20:edge")
    host.wait_registered("web")
    bus.device("nic", "web", "nic0", "--pin", "20", "--rate", "200")
    result = host.tool("top", "-d", "0.5", "-i", "3", "--irqbus", bus.endpoint)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "web" and last[-1].isdigit() and int(last[-1]) > 0  # interrupts per second
