"""Every shipped scenario, run for real through `python -m scenarios run`, must pass."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from scenarios.launch import Processes
from wire.keys import KEYS_ENV

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenario_passes(procs, path, tmp_path):
    # started through `procs`, so that on failure or timeout the runner gets SIGTERM and stops
    # every process it started itself
    # the user's key directory is the runner's $BALLONET_KEYS: the run must use its own
    users_keys = tmp_path / "users-keys"
    runner = procs.start("runner", "scenarios", "run", str(path), "--out", str(tmp_path / "out"), env={KEYS_ENV: str(users_keys)})
    assert runner.wait(170) == 0, procs.log("runner")[-4000:]
    assert not users_keys.exists()
    out = next((tmp_path / "out").iterdir())
    assert {"series.csv", "series.json", "plot.svg", "report.txt", "report.html"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "series.json").read_text())["samples"]
    assert "PASSED" in (out / "report.txt").read_text()
    assert (out / "logs" / "hypervisor.log").exists()
    started = [json.loads(line) for line in (out / "logs" / "hypervisor.log").read_text().splitlines() if '"event": "keys"' in line]
    assert started and started[0]["security"] == "curve", started  # the run's own keys, CURVE on


# --- issue 10's findings: one short run shared by the assertions about it ---------------------

FINDINGS = """
name = "findings"
description = "a guest killed and started again, a refused step, an expectation judged late"
memory = "256m"
duration = 3
sample_interval = 0.05

[defaults]
retry_delay = 0.1
max_retry_delay = 0.4
heartbeat = 0.1

[[guest]]
name = "a"
memory = "64m"
maxmem = "128m"

[[guest]]
name = "b"
memory = "32m"
maxmem = "64m"

[[timeline]]
at = 0.2
action = "mem-set"
target = "a"
size = "96m"

[[timeline]]
at = 0.3
action = "kill"
target = "b"

[[timeline]]
at = 0.5
action = "start"
target = "b"

[[timeline]]
at = 0.7
action = "mem-max"
target = "a"
size = "16m"      # a holds 96m: refused, and nothing says it should be

[[timeline]]
at = 0.8
action = "mem-max"
target = "a"
size = "8m"       # refused too, as this step expects
expect = "refused"

[[timeline]]
at = 0.9
action = "start"
target = "a"      # running: refused (it would have destroyed a's domain)
expect = "refused"

[[expect]]
check = "exited"
guests = ["b"]    # its first instance was killed; the one started at 0.5 s still runs

[[expect]]
check = "off-target"
guests = ["a"]
by = 0.1
pages = 100

[[expect]]
check = "at-target"
guests = ["a"]
by = 2.5
"""


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    """The findings scenario, run once through the CLI: (exit code, output, its out directory)."""
    tmp = tmp_path_factory.mktemp("findings")
    path = tmp / "findings.toml"
    path.write_text(FINDINGS)
    procs = Processes(own_groups=True)
    try:
        runner = procs.start("runner", "scenarios", "run", str(path), "--out", str(tmp / "out"), "--quiet")
        code = runner.wait(60)
        yield code, procs.log("runner"), tmp / "out" / "findings"
    finally:
        procs.stop_all()


def _report(out: Path) -> str:
    return (out / "report.txt").read_text()


def _line(report: str, *words: str) -> str:
    found = [line for line in report.splitlines() if all(w in line for w in words)]
    assert found, f"no line with {words} in:\n{report}"
    return found[0]


@pytest.mark.timeout(90)
def test_exited_is_judged_on_the_latest_instance(findings):
    code, output, out = findings
    assert code == 1, output
    assert "FAIL" in _line(_report(out), "exited", "['b']"), _report(out)


@pytest.mark.timeout(90)
def test_every_instance_keeps_its_own_log(findings):
    _, _, out = findings
    first, second = out / "logs" / "b.log", out / "logs" / "b.1.log"
    assert first.exists() and second.exists(), sorted(p.name for p in (out / "logs").iterdir())
    assert "registered" in first.read_text() and "registered" in second.read_text()


@pytest.mark.timeout(90)
def test_the_report_lists_every_step_and_a_refused_one_fails(findings):
    _, _, out = findings
    report = _report(out)
    for words in (("0.20 s", "mem-set a 96m", "accepted"), ("0.30 s", "kill b"), ("0.50 s", "start b")):
        assert "FAIL" not in _line(report, *words), report
    refused = _line(report, "mem-max a 16m")
    assert "refused" in refused and "EINVAL" in refused and "FAIL" in refused, report
    running = _line(report, "start a")
    assert "refused (a is running" in running and "FAIL" not in running, report
    expected = _line(report, "mem-max a 8m")
    assert "refused (EINVAL" in expected and "FAIL" not in expected, report


@pytest.mark.timeout(90)
def test_every_guest_at_target_reports_first_and_settled_since(findings):
    _, _, out = findings
    line = _line(_report(out), "every guest at target")
    first, settled = (float(x) for x in re.findall(r"first ([\d.]+) s.*settled since ([\d.]+) s", line)[0])
    assert first <= settled and settled >= 0.2, line  # settled after the mem-set at 0.2 s, whenever it first held


@pytest.mark.timeout(90)
def test_off_target_says_more_than_n_pages(findings):
    _, _, out = findings
    line = _line(_report(out), "off-target")
    assert "more than 100 pages" in line and "within" not in line, line


@pytest.mark.timeout(90)
def test_the_run_lasts_past_the_last_expectations_time(findings):
    _, _, out = findings
    samples = json.loads((out / "series.json").read_text())["samples"]
    assert samples[-1]["t"] >= 2.5, samples[-1]["t"]


REFUSED_GUEST = """
name = "refused-guest"
memory = "256m"
duration = 2

[[guest]]
name = "fine"
memory = "32m"

[[guest]]
name = "huge"
memory = "1g"     # more than the host has: the hypervisor refuses to build it
"""


@pytest.mark.timeout(60)
def test_a_guest_refused_at_registration_is_a_verdict_not_a_crash(procs, tmp_path):
    path = tmp_path / "refused.toml"
    path.write_text(REFUSED_GUEST)
    started = time.monotonic()
    runner = procs.start("runner", "scenarios", "run", str(path), "--out", str(tmp_path / "out"), "--quiet")
    code = runner.wait(40)
    output = procs.log("runner")
    assert code == 1, output
    assert time.monotonic() - started < 20, "the runner waited for a guest that had already exited"
    assert "Traceback" not in output, output
    report = (tmp_path / "out" / "refused-guest" / "report.txt").read_text()
    line = _line(report, "huge")
    assert "did not start" in line and "cannot build" in line, report
    assert sum("huge" in line for line in report.splitlines()) == 1, report  # said once, not again as a process that exited


@pytest.mark.timeout(90)
def test_every_sample_is_one_consistent_snapshot(findings):
    _, _, out = findings
    samples = json.loads((out / "series.json").read_text())["samples"]
    unbalanced = [s for s in samples if s["free_pages"] + sum(d["current_pages"] for d in s["domains"].values()) != s["total_pages"]]
    assert not unbalanced, unbalanced[:2]
    assert "free + owned = total on every one of" in _report(out)


@pytest.mark.timeout(90)
def test_a_failed_run_exits_1_and_says_why(findings):
    code, output, out = findings
    assert code == 1
    assert "scenarios failed: findings (" in output and "exited" in output and "mem-max a 16m" in output, output


# --- the new expectations, one run (and the same at speed = 4) -------------------------------

EXPECTATIONS = """
name = "expectations"
description = "the driver's state and figures, the pool, a sum and a step, each at a moment"
memory = "512m"
duration = {duration}
sample_interval = 0.05
{speed}

[defaults]
driver = "3.1"     # unlimited retries: still retrying at the moment (current would have cancelled)
retry_delay = 0.1
max_retry_delay = 0.4
heartbeat = 0.1

[[guest]]
name = "up"
memory = "64m"
maxmem = "256m"

[[guest]]
name = "big"
memory = "384m"
maxmem = "384m"

[[timeline]]
at = {at}
action = "mem-set"
target = "up"
size = "256m"     # 64m free: granted that, then nothing: the driver retries, backing off to 0.4 s

[[expect]]
check = "state"
guests = ["up"]
at = {moment}
state = "retrying"

[[expect]]
check = "state"
guests = ["big"]
at = {moment}
state = "done"

[[expect]]
check = "retry-count"
guests = ["up"]
at = {moment}
min = 3

[[expect]]
check = "schedule-delay"
guests = ["up"]
at = {moment}
min = 0.4
max = 0.4

[[expect]]
check = "free"
at = {moment}
max = "1m"

[[expect]]
check = "sum"
guests = ["up", "big"]
at = {moment}
min = "511m"
max = "512m"

[[expect]]
check = "step"
action = "mem-set"
target = "up"
outcome = "accepted"
"""


def run_scenario(procs, tmp_path: Path, text: str, timeout: float = 60) -> tuple[int, str, str]:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    runner = procs.start("runner", "scenarios", "run", str(path), "--out", str(tmp_path / "out"), "--quiet")
    code = runner.wait(timeout)
    reports = list((tmp_path / "out").glob("*/report.txt"))
    return code, procs.log("runner"), reports[0].read_text() if reports else ""


@pytest.mark.timeout(90)
def test_driver_pool_sum_and_step_expectations_pass_on_a_run_that_meets_them(procs, tmp_path):
    code, output, report = run_scenario(procs, tmp_path, EXPECTATIONS.format(duration=2, speed="", at=0.2, moment=1.5))
    assert code == 0, output
    for words in (("state", "retrying", "['up']"), ("state", "done", "['big']"), ("retry-count at",), ("schedule-delay at",), ("free at",), ("sum at",), ("step mem-set",)):
        assert _line(report, *words).lstrip().startswith("[ok]"), report
    # the driver's figures lag the pages by up to a heartbeat: each is judged on a report sent at or after 1.5 s
    reported = [float(x) for x in re.findall(r"reported at ([\d.]+) s", report)]
    assert len(reported) == 4 and min(reported) >= 1.5, report
    header = (tmp_path / "out" / "expectations" / "series.csv").read_text().splitlines()[0]
    assert "up.state_at" in header and "total_pages" in header


@pytest.mark.timeout(90)
def test_speed_plays_the_same_scenario_faster_in_scenario_seconds(procs, tmp_path):
    code, output, report = run_scenario(procs, tmp_path, EXPECTATIONS.format(duration=8, speed="speed = 4", at=0.8, moment=6))
    assert code == 0, output
    assert "speed x4" in report and "at 6 s" in report, report
    logs = tmp_path / "out" / "expectations" / "logs"
    registered = [json.loads(line) for line in (logs / "up.log").read_text().splitlines() if '"registered"' in line]
    assert registered and registered[0]["speed"] == 4.0, registered  # the guest's driver clock ran 4x


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "text, words",
    [
        ("name = 'x'\nmemory = '1g'\nduration = 1\ncolour = 'red'\n[[guest]]\nname = 'a'\nmemory = '64m'\n", "unknown key(s) ['colour']"),
        ("name = [unclosed", "scenario error"),
        (None, "No such file"),
    ],
    ids=["unknown-key", "not-toml", "missing"],
)
def test_a_bad_file_exits_2_with_a_clear_message_and_runs_nothing(procs, tmp_path, text, words):
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    runner = procs.start("runner", "scenarios", "run", str(path), "--out", str(tmp_path / "out"))
    assert runner.wait(20) == 2
    output = procs.log("runner")
    assert words in output and "Traceback" not in output, output
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
def test_the_html_report_tells_the_same_story_in_a_browser(findings):
    from tests.browser import chromium, dom

    _, _, out = findings
    parsed = dom(chromium(), out / "report.html")
    assert 'id="verdict">FAILED<' in parsed and parsed.count("<svg") == 2
    assert "mem-max a 16m" in parsed and "EINVAL" in parsed and "still running: ['b']" in parsed
    assert 'href="logs/b.1.log"' in parsed and 'href="logs/hypervisor.log"' in parsed


# --- a [[fleet]]: its guests forked by one guest fleet, one of them killed and one restarted -----

SMALL_FLEET = """
name = "small-fleet"
description = "three guests from one [[fleet]] table, squeezed together; one killed and started again, one restarted"
memory = "256m"
duration = 2.5
sample_interval = 0.05

[defaults]
retry_delay = 0.1
max_retry_delay = 0.4
heartbeat = 0.2

[[fleet]]
name = "f"
count = 3
memory = "32m..48m"      # f1 32m, f2 40m, f3 48m
maxmem = "64m"

[[timeline]]
at = 0.2
action = "mem-set"
target = "f"
size = "40m..56m"        # each up by 8m: f1 40m, f2 48m, f3 56m

[[timeline]]
at = 0.8
action = "kill"
target = "f2"

[[timeline]]
at = 1.0
action = "start"
target = "f2"            # its dead domain destroyed first; a new one at its boot size, 40m

[[timeline]]
at = 1.2
action = "restart"
target = "f3"            # shuts its domain down, then boots again at 48m

[[expect]]
check = "at-target"
guests = ["f"]
by = 2.2

[[expect]]
check = "sum"
guests = ["f"]
at = 2.2
min = "128m"             # 40m + 40m + 48m
max = "128m"

[[expect]]
check = "audit"
"""


@pytest.mark.timeout(90)
def test_a_fleets_guests_take_steps_and_faults_one_by_one_as_before(procs, tmp_path):
    code, output, report = run_scenario(procs, tmp_path, SMALL_FLEET)
    assert code == 0, output + report
    for words in (("mem-set f 40m..56m", "accepted"), ("kill f2", "accepted"), ("start f2", "accepted"), ("restart f3", "accepted")):
        assert "FAIL" not in _line(report, *words), report
    logs = tmp_path / "out" / "small-fleet" / "logs"
    assert {"f1.log", "f2.log", "f2.1.log", "f3.log", "f3.1.log", "guest-fleet.log"} <= {p.name for p in logs.iterdir()}
    assert "registered" in (logs / "f2.1.log").read_text() and "registered" in (logs / "f3.1.log").read_text()
    fleet = [json.loads(line) for line in (logs / "guest-fleet.log").read_text().splitlines() if line.startswith("{")]
    killed = [e for e in fleet if e.get("event") == "guest exited" and e.get("name") == "f2"]
    assert killed and killed[0]["how"] == "killed by SIGKILL", fleet  # forked by the fleet, which saw it die
    assert next(e for e in fleet if e.get("event") == "fleet stopped")["guests"] == 5  # 3, and 2 started again
