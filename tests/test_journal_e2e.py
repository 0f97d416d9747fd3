"""`hypervisor serve --state` end to end: a SIGKILLed hypervisor recovers and its guests carry on;
a journal it cannot trust is refused through the CLI, saying why."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time

import pytest

from tests.processes import Host, wait_for
from wire.security import Server
from wire.client import RpcClient

pytestmark = pytest.mark.timeout(90)


def seqs(procs, name: str) -> list[tuple[float, int]]:
    """(when, seq) of each reservation request the guest logged as answered."""
    return [(e["timestamp"], e["seq"]) for e in procs.log_events(name) if e.get("event") in ("increase", "decrease")]


def test_a_sigkilled_hypervisor_recovers_its_journal_and_its_guests_carry_on(procs):
    state = procs.dir / "hv.db"
    host = Host(procs, memory="64m", state=state)
    web = host.guest("web", "--memory", "8m", "--maxmem", "40m", "--balloon-rate", "2000")
    db = host.guest("db", "--memory", "24m", "--maxmem", "32m", "--balloon-rate", "2000")
    host.wait_registered("web", "db")
    before = {name: d["domid"] for name, d in host.domains().items()}
    assert host.tool("mem-set", "web", "32m").returncode == 0  # 6144 pages up at 2000/s: ~3 s of traffic
    assert host.tool("mem-set", "db", "12m").returncode == 0  # 3072 pages down
    wait_for(lambda: len(seqs(procs, "web")) >= 5 and len(seqs(procs, "db")) >= 5, 15, "both guests ballooning")

    killed = host.proc
    procs.stop(killed, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    answered_before = {name: len(seqs(procs, name)) for name in ("web", "db")}
    time.sleep(0.5)  # the guests retry into the void meanwhile
    host.start()
    host.wait_serving()
    recovered = next(e for e in procs.log_events("hypervisor") if e.get("event") == "recovered")
    assert recovered["domains"] == 2

    doms = host.wait_converged(("web", "db"), timeout=40)
    assert {name: d["domid"] for name, d in doms.items()} == before
    assert web.poll() is None and db.poll() is None  # no ESRCH, no exit: they carried on
    for name, target_mib in (("web", 32), ("db", 12)):
        assert doms[name]["current_pages"] == doms[name]["target_pages"] == target_mib * 256
        assert doms[name]["balloon"]["current_kb"] == doms[name]["current_pages"] * 4  # the guest's own view = the books
        answered = seqs(procs, name)
        assert len(answered) > answered_before[name]  # requests answered by the recovered hypervisor too
        assert [s for _, s in answered] == sorted({s for _, s in answered})  # their seqs went on, none twice
    audit = host.tool("audit")
    assert audit.returncode == 0 and "books balance" in audit.stdout


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """A journal a real hypervisor wrote: 64m, two domains, cleanly stopped."""
    from scenarios.launch import Processes

    procs = Processes()
    try:
        path = tmp_path_factory.mktemp("journal") / "hv.db"
        host = Host(procs, memory="64m", state=path)
        with RpcClient(host.guest_endpoint, server=Server.HYPERVISOR, client_id="c-one") as one, RpcClient(host.guest_endpoint, server=Server.HYPERVISOR, client_id="c-two") as two:
            one.call("register", {"name": "one", "memory_pages": 1000, "max_pages": 2000})
            two.call("register", {"name": "two", "memory_pages": 500, "max_pages": 2000})
        procs.stop(host.proc)
        yield path
    finally:
        procs.stop_all()


def serve(procs, path, *args: str):
    return procs.run(
        "hypervisor", "serve", "--state", str(path), "--guest-endpoint", procs.ipc("hv"), "--admin-endpoint", procs.ipc("admin"), *args,
        timeout=30,
    )


def corrupted(journal, tmp_path, sql: str):
    path = tmp_path / "hv.db"
    shutil.copy(journal, path)
    with sqlite3.connect(path) as db:
        db.execute(sql)
    return path


def test_a_journal_whose_pages_are_claimed_twice_is_refused(procs, journal, tmp_path):
    path = corrupted(
        journal, tmp_path, "UPDATE extents SET (extents, pages) = (SELECT extents, pages FROM extents WHERE domid = 1) WHERE domid = 2"
    )
    result = serve(procs, path)
    assert result.returncode == 1
    assert "refusing to start" in result.stderr and "do not balance" in result.stderr and "claimed twice" in result.stderr


def test_a_journal_whose_domain_grew_past_its_maxmem_is_refused(procs, journal, tmp_path):
    path = corrupted(journal, tmp_path, "UPDATE domains SET fields = json_set(fields, '$.max_pages', 10) WHERE name = 'one'")
    result = serve(procs, path)
    assert result.returncode == 1
    assert "do not balance" in result.stderr and "over its maxmem of 10" in result.stderr


def test_a_memory_other_than_the_journals_is_refused_saying_both(procs, journal, tmp_path):
    path = tmp_path / "hv.db"
    shutil.copy(journal, path)
    result = serve(procs, path, "--memory", "128m")
    assert result.returncode == 1
    assert "--memory is 32768 pages (128 MiB)" in result.stderr and "a host of 16384 pages (64 MiB)" in result.stderr


def test_a_journal_of_an_unknown_schema_is_refused(procs, journal, tmp_path):
    path = corrupted(journal, tmp_path, "UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    result = serve(procs, path)
    assert result.returncode == 1
    assert "schema version 99" in result.stderr and "knows version 1" in result.stderr


def test_a_file_that_is_not_a_journal_is_refused(procs, tmp_path):
    path = tmp_path / "hv.db"
    path.write_bytes(b"not a database at all" * 100)
    result = serve(procs, path)
    assert result.returncode == 1 and "not a journal" in result.stderr


def test_synchronous_without_a_journal_is_a_usage_error(procs):
    result = procs.run("hypervisor", "serve", "--synchronous", "full", "--guest-endpoint", procs.ipc("g"), "--admin-endpoint", procs.ipc("a"))
    assert result.returncode == 2 and "needs --state" in result.stderr, result.stderr
