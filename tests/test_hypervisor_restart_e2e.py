"""A hypervisor that restarts without a journal knows nothing of the domains it had: its guests
must say so and fail, not take its ESRCH for "destroyed" and exit 0 (issue 10). One with a
journal (`--state`) recovers them, and they carry on (issue 12)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
import structlog
import structlog.testing

from guest.cli import GuestExit
from guest.service import DomainGone, GuestService, GuestSettings, HypervisorRestarted
from wire.domain_end import DomainEnd
from tests.processes import REPO, Host, wait_for
from wire.errors import RemoteError

pytestmark = pytest.mark.timeout(60)


def test_guest_run_exits_3_saying_the_hypervisor_restarted_but_0_when_destroyed(procs):
    host = Host(procs, memory="64m")
    web = host.guest("web", "--memory", "8m", "--log-level", "info")
    gone = host.guest("gone", "--memory", "8m", "--log-level", "info")
    host.wait_registered("web", "gone")

    assert host.tool("destroy", "gone").returncode == 0  # the books it registered in say so: exit 0
    assert gone.wait(10) == GuestExit.OK
    assert "(gone) was destroyed by the toolstack; exiting with status 0" in procs.log("gone")  # its stderr
    (said,) = [e for e in procs.log_events("gone") if e.get("event") == "domain destroyed"]
    assert said["level"] == "info" and said["via"] in ("event", "reply")

    procs.stop(host.proc)  # a clean stop; the next hypervisor starts afresh on the same endpoints
    time.sleep(1.5)  # long enough for the guest's heartbeats to go unanswered a few times
    host.start()
    assert web.wait(15) == GuestExit.HYPERVISOR_RESTARTED == 3
    events = {e.get("event"): e for e in procs.log_events("web")}
    said = events["hypervisor restarted"]
    assert said["level"] == "error" and said["registered_boot_id"] != said["boot_id"] and said["boot_id"]
    assert events["registered"]["boot_id"] == said["registered_boot_id"]
    assert "the hypervisor restarted" in procs.log("web") and "exiting with status 3" in procs.log("web")  # its stderr
    assert not {"domain destroyed", "domain destroyed by the toolstack"} & set(events)
    assert [e["event"] for e in procs.log_events("web") if e.get("event", "").startswith("hypervisor ")] == [
        "hypervisor unreachable", "hypervisor back", "hypervisor restarted",  # one line per change, not one per try
    ]
    wait_for(lambda: host.tool("info").returncode == 0, 10, "the new hypervisor")
    assert host.json("list") == []


def test_an_esrch_is_destroyed_only_from_the_books_the_guest_registered_in():
    """The rule itself (GuestService._no_such_domain): the same boot id is "destroyed" (a lost
    `destroyed` event: the next request says so), any other is a restarted hypervisor."""
    # a logger of its own: the process-wide one may print to a stream an earlier test closed
    log = structlog.wrap_logger(structlog.testing.CapturingLogger())
    service = GuestService(GuestSettings("web", 16, 16, "ipc:///nonexistent/hv"), log)
    try:
        service.domid, service.boot_id = 4, "aaaa"
        with pytest.raises(HypervisorRestarted) as lost:
            service._no_such_domain(RemoteError("ESRCH", "no domain", "bbbb"))
        assert (lost.value.domid, lost.value.registered_boot_id, lost.value.boot_id) == (4, "aaaa", "bbbb")
        with pytest.raises(HypervisorRestarted):
            service._no_such_domain(RemoteError("ESRCH", "no domain", None))  # no boot id: not the books it knew
        assert service.gone is None
        service._no_such_domain(RemoteError("ESRCH", "no domain", "aaaa"))  # no reason: the books forgot why
        assert service.gone == DomainGone(4, DomainEnd.DESTROYED, "no domain")
    finally:
        service.close()


@pytest.mark.parametrize("reason, end", [("reclaimed", DomainEnd.RECLAIMED), ("crashed", DomainEnd.CRASHED), ("destroyed", DomainEnd.DESTROYED), ("martian", DomainEnd.DESTROYED)])
def test_the_reason_on_an_esrch_from_the_same_books_says_how_the_domain_ended(reason, end):
    log = structlog.wrap_logger(structlog.testing.CapturingLogger())
    service = GuestService(GuestSettings("web", 16, 16, "ipc:///nonexistent/hv"), log)
    try:
        service.domid, service.boot_id = 4, "aaaa"
        service._no_such_domain(RemoteError("ESRCH", f"domain 4 (web) was {reason}", "aaaa", reason))
        assert service.gone == DomainGone(4, end, f"domain 4 (web) was {reason}")
    finally:
        service.close()


def test_a_guest_stopping_whose_domain_is_already_gone_says_how_it_ended(monkeypatch):
    """Its last request, `shutdown`, answered ESRCH: reclaimed while it was stopped, say so (it
    was logged as 'shutdown not confirmed' and the guest exited 0)."""
    log = structlog.wrap_logger(structlog.testing.CapturingLogger())
    service = GuestService(GuestSettings("web", 16, 16, "ipc:///nonexistent/hv"), log)
    try:
        service.domid, service.boot_id = 4, "aaaa"

        def reclaimed(op, *args, **kwargs):
            raise RemoteError("ESRCH", "domain 4 (web) was reclaimed", "aaaa", "reclaimed")

        monkeypatch.setattr(service.client, "call", reclaimed)
        service._shutdown()
        assert service.gone == DomainGone(4, DomainEnd.RECLAIMED, "domain 4 (web) was reclaimed")
    finally:
        service.close()


SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_a_scenario_reboots_a_hypervisor_without_a_journal_and_its_guests_exit_3_saying_why(procs, tmp_path):
    runner = procs.start("runner", "scenarios", "run", str(SCENARIOS / "hypervisor-reboot.toml"), "--out", str(tmp_path), "--quiet")
    assert runner.wait(50) == 0, procs.log("runner")[-4000:]
    out = tmp_path / "hypervisor-reboot"
    assert "PASSED" in (out / "report.txt").read_text()
    assert not (out / "hypervisor.db").exists()  # `[hypervisor] journal = false`
    for name in ("web", "db"):
        log = (out / "logs" / f"{name}.log").read_text()
        assert '"event": "hypervisor restarted"' in log and "exiting with status 3" in log, log[-2000:]
    assert "a restart of this hypervisor is a host reboot" in (out / "logs" / "hypervisor.log").read_text()


def test_a_scenario_restarts_a_journalled_hypervisor_and_its_guests_carry_on(procs, tmp_path):
    """The runner keeps the journal in the run's folder; the hypervisor started again on the
    timeline recovers it (the same boot id, the same domids), and the README's queries read it."""
    runner = procs.start("runner", "scenarios", "run", str(SCENARIOS / "hypervisor-restart.toml"), "--out", str(tmp_path), "--quiet")
    assert runner.wait(50) == 0, procs.log("runner")[-4000:]
    out = tmp_path / "hypervisor-restart"
    assert "PASSED" in (out / "report.txt").read_text()  # both at their targets by 3.5 s, the audit clean
    first, second = ((out / "logs" / log).read_text() for log in ("hypervisor.log", "hypervisor.1.log"))
    created = next(json.loads(line) for line in first.splitlines() if '"journal created"' in line)
    recovered = next(json.loads(line) for line in second.splitlines() if '"recovered"' in line)
    assert recovered["boot_id"] == created["boot_id"] and recovered["domains"] == 2
    for name in ("web", "db"):
        log = (out / "logs" / f"{name}.log").read_text()
        assert '"hypervisor restarted"' not in log and "exiting with status 3" not in log, log[-2000:]
        assert '"shutdown not confirmed"' not in log, log[-2000:]  # the runner stops its servers last

    reached, per_second = readme_queries()
    db = sqlite3.connect(out / "hypervisor.db")
    shut = db.execute("SELECT name FROM events WHERE op = 'shutdown' ORDER BY name").fetchall()
    assert shut == [("db",), ("web",)], shut  # each guest shut its domain down as the run ended
    rows = db.execute(reached).fetchall()
    # each mem-set of the timeline, and how long its guest took to reach it: web to 80m, db to 60m
    assert [(name, target) for name, target, _, _ in rows] == [("web", 80), ("db", 60)], rows
    assert all(seconds is not None and seconds >= 0 for _, _, _, seconds in rows), rows
    seconds = db.execute(per_second).fetchall()
    assert seconds and all(s >= 0 for s, _, _ in seconds), seconds
    # web grew 48m (12288 pages) and db gave back 4m (1024 pages): all of it in these rows
    assert sum(g or 0 for _, g, _ in seconds) >= 12288 and sum(r or 0 for _, _, r in seconds) >= 1024, seconds


def readme_queries() -> list[str]:
    """The two example queries of the README's journal section, as a user would paste them."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The journal"):]
    return re.findall(r"```sql\n(.*?)```", section, re.S)[:2]
