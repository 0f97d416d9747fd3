"""Every CLI escapes control characters in what peers wrote (names, states, answers, error
messages) before it reaches an administrator's terminal."""

from __future__ import annotations

import io
import subprocess
import sys

import msgpack
import pytest
import zmq

from guest.interrupts_cli import lines_for_terminal
from hypervisor.toolstack import format_list
from hypervisor.top import Frame, render
from irqbus.show import format_show
from scenarios import report
from scenarios.recording import Recording, Sample, StepRecord
from scenarios.runner import Run
from scenarios.spec import Scenario
from tests.processes import REPO, Irqbus, secure
from wire.errors import RemoteError, report_failure

ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m"
ESCAPED = "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31m"
INFO = {"total_pages": 4096, "free_pages": 0, "allocated_pages": 4096, "domains": 1}


def row(name: str = "web" + ESC, state: str = "running" + ESC, balloon_state: str = "done" + ESC) -> dict:
    return {"domid": 1, "name": name, "current_pages": 1024, "target_pages": 1024, "max_pages": 1024, "state": state,
            "last_seen_s": 0.1, "balloon": {"state": balloon_state, "schedule_delay": "boom", "retry_count": [1]}}


def clean(text: str) -> bool:
    return not any(ch in text for ch in "\x1b\x07\x9b")


@pytest.mark.timeout(10)
def test_list_and_top_escape_names_and_states_and_do_not_trip_on_odd_figures():
    for text in (format_list([row()]), render(Frame(0.0, INFO, [row()]), None)):
        assert clean(text) and "\\x1b" in text
        assert " ? " in text  # a figure that is not a number is shown as such, not a crash


@pytest.mark.timeout(10)
def test_irqbus_show_escapes_what_the_server_says():
    guest = {
        "name": "vm" + ESC, "domid": 1, "delivered": 0, "spurious": 0, "last_seen_s": 0.0,
        "pic": {"irr": 0, "isr": 0, "imr": 0, "elcr": 0, "lines": 0},
        "ioapic": [{"pin": 16, "vector": 0x30, "trigger": "level" + ESC, "masked": False, "remote_irr": False, "asserted": True}],
        "pins": [{"pin": 5, "controller": "pic" + ESC, "level": True, "masked": False, "devices": ["nic" + ESC], "asserting": ["nic" + ESC]}],
        "devices": [{"name": "nic" + ESC, "kind": "pin", "pin": 5, "trigger": "edge" + ESC, "status": 1, "gen": 1, "merged": 0}],
        "virqs": {"target" + ESC: {"vector": 0x40, "sent": 1}},
    }
    text = format_show({"guests": [guest]})
    assert clean(text) and text.count("\\x1b") >= 8


@pytest.mark.timeout(10)
def test_a_servers_error_message_is_escaped(capsys):
    assert report_failure(RemoteError("EINVAL" + ESC, "bad " + ESC), "hypervisor mem-set", "hypervisor", "ipc://x") == 1
    err = capsys.readouterr().err
    assert clean(err) and ESCAPED in err


@pytest.mark.timeout(10)
def test_a_guests_proc_interrupts_keeps_its_lines_and_loses_its_escapes():
    assert lines_for_terminal("CPU0\n  1: 5 " + ESC + "\n") == "CPU0\n  1: 5 " + ESCAPED + "\n"


@pytest.mark.timeout(10)
def test_the_scenario_report_and_progress_escape_names_and_states():
    sample = Sample(1.0, 0, {"web" + ESC: row(balloon_state="done" + ESC)})
    scenario = Scenario(name="s", description="", memory="64m", duration=1.0, guests=())
    step = StepRecord(1.0, "destroy web" + ESC, "refused", "ESRCH: no domain 'web" + ESC + "'")
    run = Run(scenario, Recording(samples=[sample], steps=[step]), audit_text="books balance" + ESC)
    assert clean(report.text(run)) and report.text(run).count(ESCAPED) >= 4
    out = io.StringIO()
    progress = report.Progress(out=out)
    progress.sample(sample)
    progress.step(step)
    assert clean(out.getvalue()) and out.getvalue().count("\\x1b") >= 3


@pytest.mark.timeout(60)
def test_guest_interrupts_escapes_what_the_guest_answers(procs):
    """A guest answers `interrupts` with whatever text it likes; the command prints it escaped."""
    bus = Irqbus(procs)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, bus.endpoint).connect(bus.endpoint)
    asker = None
    try:
        sock.send(msgpack.packb({"v": 1, "op": "attach", "seq": 1, "client": "evil", "args": {"name": "evil", "domid": 1}}))
        assert sock.poll(5000) and msgpack.unpackb(sock.recv())["ok"]
        asker = subprocess.Popen(
            [sys.executable, "-m", "guest", "interrupts", "evil", "--irqbus", bus.endpoint],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=procs.env,
        )
        assert sock.poll(10_000), "no query came"
        query = msgpack.unpackb(sock.recv())
        assert query["event"] == "query"
        sock.send(msgpack.packb({"v": 1, "op": "answer", "seq": 2, "client": "evil",
                                 "args": {"query": query["args"]["query"], "text": "CPU0\n  1: 5 evil" + ESC + "\n"}}))
        out, err = asker.communicate(timeout=20)
        assert asker.returncode == 0, err
        assert clean(out) and out == "CPU0\n  1: 5 evil" + ESCAPED + "\n"
    finally:
        if asker is not None and asker.poll() is None:
            asker.kill()
            asker.wait(5)
        sock.close()
        ctx.term()


@pytest.mark.timeout(60)
def test_a_server_logging_to_a_terminal_escapes_what_clients_wrote(procs):
    """On a terminal the log is structlog's console format, which wrote a client id or an
    unknown operation's name raw."""
    import os
    import pty
    import select
    import time

    primary, secondary = pty.openpty()
    endpoint = procs.ipc("hv-tty")
    server = subprocess.Popen(
        [sys.executable, "-m", "hypervisor", "serve", "--memory", "64m", "--guest-endpoint", endpoint, "--admin-endpoint", procs.ipc("admin-tty")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary, cwd=REPO, env=procs.env,
    )
    os.close(secondary)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, endpoint).connect(endpoint)
    out = b""
    try:
        sock.send(msgpack.packb({"v": 1, "op": "nuke" + ESC, "seq": 1, "client": "c" + ESC, "args": {}}))
        assert sock.poll(15_000), "no reply"
        assert msgpack.unpackb(sock.recv())["error"] == "ENOSYS"
        deadline = time.monotonic() + 10
        while b"request refused" not in out or not out.endswith(b"\n"):
            assert time.monotonic() < deadline, out
            if select.select([primary], [], [], 0.2)[0]:
                out += os.read(primary, 65536)
    finally:
        sock.close()
        ctx.term()
        server.terminate()
        server.wait(10)
        os.close(primary)
    line = next(line for line in out.decode(errors="replace").splitlines() if "request refused" in line)
    assert "\\x1b]0;owned" in line and "\x1b]0;owned" not in line and "\x07" not in line
