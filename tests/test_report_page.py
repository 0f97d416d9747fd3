"""report.html opens in a real browser without a server, and 30 guests stay readable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scenarios import report
from scenarios.plot import colours, nice_ticks
from scenarios.recording import Recording, Sample, StepRecord
from scenarios.runner import Outcome, Run
from scenarios.spec import Check, Expectation, parse
from tests.browser import chromium, dom, screenshot

GUESTS = 30
STATES = ("done", "retrying", "cancelled", "hard-limited")


def thirty_guests() -> Run:
    scenario = parse(
        {
            "name": "thirty",
            "description": "30 guests <of all kinds> & their states",
            "memory": "8g",
            "duration": 10,
            "guest": [{"name": f"guest-{i:02d}", "memory": "128m", "maxmem": "256m"} for i in range(GUESTS)],
        }
    )
    samples = []
    for k in range(41):
        t = k * 0.25
        domains = {}
        for i in range(GUESTS):
            current = 32768 + int(min(t, 5) * 300 * (i - GUESTS / 2))
            domains[f"guest-{i:02d}"] = {
                "current_pages": current,
                "target_pages": 32768 + 1500 * (i - GUESTS // 2),
                "balloon": {"state": STATES[(i + k // 10) % 4]} if k % 13 else {},
                "reported_s": 0.1,
            }
        used = sum(d["current_pages"] for d in domains.values())
        samples.append(Sample(t, 1_100_000 - used, domains, 1_100_000))
    steps = [
        StepRecord(1.0, "mem-set guest-03 96m", "accepted", "", "accepted", 1.0, "mem-set", "guest-03"),
        StepRecord(2.0, "mem-max guest-04 16m", "refused", "EINVAL: guest-04 holds 32768 pages", "accepted", 2.0, "mem-max", "guest-04"),
    ]
    run = Run(scenario, Recording(samples, steps), audit_ok=True, audit_text="books balance")
    run.outcomes = [
        Outcome(Expectation(Check.AT_TARGET, ("guest-01",), by=8.0), True, "at 8.0 s: guest-01 ok"),
        Outcome(Expectation(Check.STATE, ("guest-02",), at=5.0, state="done"), False, "guest-02 retrying (reported at 5.10 s); expected done"),
    ]
    run.problems = ["guest-29 (instance 1, guest-29.1.log) exited with status 1: refused by the hypervisor: ENOMEM: <no room>"]
    return run


def test_ticks_are_round_and_thirty_colours_differ():
    assert nice_ticks(512) == [0, 100, 200, 300, 400, 500, 600]
    assert nice_ticks(2.96) == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert nice_ticks(37) == [0, 10, 20, 30, 40]
    assert len(set(colours(GUESTS))) == GUESTS


@pytest.mark.timeout(120)
def test_the_page_opens_in_headless_chromium_with_every_part(tmp_path):
    browser = chromium()
    run = thirty_guests()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "guest-29.1.log").write_text("{}\n")
    paths = report.write(run, tmp_path)
    page = tmp_path / "report.html"
    assert page in paths
    html = page.read_text()
    assert "<script" not in html and "<link" not in html and " src=" not in html  # nothing to fetch
    parsed = dom(browser, page)
    assert re.search(r'id="verdict">FAILED<', parsed)
    assert "30 guests &lt;of all kinds&gt; &amp; their states" in parsed  # the description, escaped
    assert parsed.count("<svg") == 2
    for i in range(GUESTS):  # a legend entry and a state strip for each guest
        assert parsed.count(f">guest-{i:02d}<") >= 2, i
    assert "EINVAL: guest-04 holds 32768 pages" in parsed and "mem-max guest-04 16m" in parsed
    assert "state at 5 s done" in parsed and 'href="logs/guest-29.1.log"' in parsed
    mib_ticks = re.findall(r"text-anchor=\"end\">(\d+)<", parsed)  # the y axis, MiB
    assert len(mib_ticks) >= 4 and all(int(v) % 100 == 0 for v in mib_ticks), mib_ticks
    png = screenshot(browser, page, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
