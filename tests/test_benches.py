"""The benchmarks still run: each with tiny settings, end to end, so none can rot unnoticed.

Only that they complete and that their own checks pass; their figures are for people (a
timed assertion on a shared machine would only measure the machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.processes import REPO


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a bench script in its own process group, and end the whole group whatever happens:
    a bench starts servers and clients of its own."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(150)
def test_rpc_bench_runs_and_the_books_balance() -> None:
    """Both modes in one run: each mode's hypervisor served the clients (its books balance after
    their calls) and the closing table has a verdict per mode and server."""
    result = run_bench("bench/rpc_bench.py", "--clients", "2", "--seconds", "0.3", "--rounds", "6", "--samples", "12", "--state", timeout=130)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for mode in ("insecure", "curve"):
        assert any(line.startswith(f"-- {mode} (") for line in lines), result.stdout
        for subject in ("hypervisor reservation", "hypervisor + journal"):
            assert any(line.split()[:1] == [mode] and subject in line and " at least 0." in line for line in lines), result.stdout
    assert sum(line.startswith("raw echo (baseline)") for line in lines) == 2, result.stdout
    assert lines.count("audit after the run        books balance") == 2, result.stdout
    assert lines.count("audit of the journalled    books balance") == 2, result.stdout
    assert any(line.startswith("goal: throughput at least 0.8x") for line in lines), result.stdout
    assert any(line.startswith("goal: with the journal (normal) at least 0.6x") for line in lines), result.stdout
    assert any(line.startswith("CURVE / insecure req/s: echo x") for line in lines), result.stdout


@pytest.mark.timeout(120)
def test_irq_bench_runs_in_both_modes() -> None:
    """One path, both modes: every setup delivered (its p50 is a number, so its handler saw
    raises; the ceiling's rate is above 0), and the closing table has a verdict per mode."""
    result = run_bench("bench/irq_bench.py", "--samples", "20", "--rounds", "2", "--seconds", "0.2", "--paths", "MSI-X", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for mode in ("insecure", "curve"):
        assert any(line.startswith("raw relay (baseline)") and line.split()[3] == mode for line in lines), result.stdout
        assert any(line.startswith("irqbus MSI-X") and line.split()[2] == mode for line in lines), result.stdout
        ceiling = [line.split() for line in lines if line.startswith("acked relay (ceiling)") and line.split()[3] == mode]
        assert ceiling and float(ceiling[0][-1]) > 0, result.stdout  # its rate against the relay's: its receiver saw raises
        assert any(line.split()[:2] == [mode, "MSI-X"] and line.split()[-1] == "met" for line in lines), result.stdout  # the floor's verdict
        assert any(line.startswith(f"{mode}: goal (p50 <= 1.3x") and "floor" in line for line in lines), result.stdout


@pytest.mark.timeout(120)
def test_irq_bench_holds_an_i8259_line_s_ceiling_until_the_ack() -> None:
    """A line that delivers nothing more until the guest's EOI is measured against the held
    relay (which merges what comes meanwhile), not the acked one; its receiver saw raises."""
    result = run_bench("bench/irq_bench.py", "--samples", "20", "--rounds", "2", "--seconds", "0.4", "--paths", "i8259 edge pin 5",
                       "--modes", "insecure", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line[:28].strip(): line[28:].split() for line in result.stdout.splitlines()}
    assert "held relay (ceiling)" in rows and "acked relay (ceiling)" not in rows, result.stdout
    assert float(rows["held relay (ceiling)"][-1]) > 0, result.stdout


@pytest.mark.timeout(120)
def test_irq_bench_profile_tells_where_the_time_goes() -> None:
    """--profile: irqbus, the guest and the device each time their stages; joined, they give
    every stage for the samples, the latency among them."""
    result = run_bench("bench/irq_bench.py", "--samples", "20", "--rounds", "2", "--seconds", "0.2", "--paths", "MSI-X",
                       "--modes", "insecure", "--profile", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line[:46].strip(): line[46:].split() for line in result.stdout.splitlines() if line.startswith("  ")}
    for stage in ("irqbus decode", "irqbus machine/chip model", "irqbus send to guest", "guest genirq up to the handler",
                  "= device send -> handler (the latency)", "after: irqbus whole ack (chip)"):
        assert stage in rows and float(rows[stage][0]) > 0 and int(rows[stage][2]) > 0, result.stdout


@pytest.mark.timeout(120)
def test_handle_cost_runs_and_the_books_balance() -> None:
    result = run_bench("bench/handle_cost.py", "--requests", "400", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handling cost" in result.stdout, result.stdout


@pytest.mark.timeout(120)
def test_irq_cost_runs_every_path_and_every_interrupt_is_handled() -> None:
    """irq_cost.py stops with an error when the guest handled fewer interrupts than were raised."""
    result = run_bench("bench/irq_cost.py", "--interrupts", "50", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("i8259", "IOAPIC", "MSI-X"))]
    assert len(rows) == 4 and "raw relay" in result.stdout, result.stdout


@pytest.mark.timeout(120)
def test_scale_bench_runs_a_small_fleet_and_prints_the_goals() -> None:
    """Two small fleets, so the growth column is there too; every figure measured (no '-'),
    the books balanced, and each goal printed (not judged below 1,000 guests)."""
    result = run_bench("bench/scale_bench.py", "--guests", "2,4", "--idle", "0.5", "--quick", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for label in ("registered", "converged after mem-set down", "converged after mem-set up", "guests' PSS, total", "stopped"):
        (row,) = [line for line in lines if line.startswith(label)]
        assert " - " not in row and row.split()[-1].startswith("x"), row
    (idle,) = [line for line in lines if line.startswith("hypervisor CPU, idle")]
    assert [word.endswith("%") for word in idle.split()[-3:-1]] == [True, True], idle  # a 0.5 s window: the ratio may be of 0
    assert any(line.startswith("books balance after") and line.split()[-2:] == ["yes", "yes"] for line in lines), result.stdout
    assert sum("not judged (N=4)" in line for line in lines) == 5, result.stdout


@pytest.mark.timeout(60)
def test_the_held_relay_forwards_nothing_while_a_frame_is_unacked_and_then_the_newest(tmp_path) -> None:
    """The held relay's rule, as an i8259 line's: the first raise goes through, the next two
    wait for its ack and the second of them replaces the first (they merge), which goes on
    the ack; the device gets its reply to each at once."""
    import threading

    import msgpack
    import zmq

    sys.path.insert(0, str(REPO / "bench"))
    import irq_bench

    endpoint = f"ipc://{tmp_path}/held"
    ready, stop = threading.Event(), threading.Event()
    relay = threading.Thread(target=irq_bench.relay, args=(endpoint, irq_bench.INSECURE, "", ready, stop, True))
    relay.start()
    ctx = zmq.Context()
    receiver, device = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        assert ready.wait(10)
        for sock in (receiver, device):
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(endpoint)
        receiver.send(b"receiver")
        for _ in range(50):  # until the relay knows the receiver (the two connections race)
            device.send(msgpack.packb({"i": 0, "op": "raise"}))
            assert device.recv() == b"ack"
            if receiver.poll(100):
                break
        assert msgpack.unpackb(receiver.recv())["i"] == 0
        receiver.send(b"ack")
        for i in (1, 2, 3):
            device.send(msgpack.packb({"i": i, "op": "raise"}))
            assert device.recv() == b"ack"
        assert msgpack.unpackb(receiver.recv())["i"] == 1
        assert not receiver.poll(300)  # 2 and 3 are held
        receiver.send(b"ack")
        assert msgpack.unpackb(receiver.recv())["i"] == 3
        receiver.send(b"ack")
        device.send(msgpack.packb({"i": 4, "op": "raise"}))
        assert device.recv() == b"ack"
        assert msgpack.unpackb(receiver.recv())["i"] == 4  # nothing outstanding: at once
    finally:
        stop.set()
        relay.join(10)
        receiver.close(0)
        device.close(0)
        ctx.term()
