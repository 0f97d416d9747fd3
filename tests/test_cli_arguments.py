"""Numbers on the command line are ASCII digits: "²" or "٣" as a domain, count, pin, size or
delay is a usage error (exit status 2) naming the argument, never a traceback, never a 3."""

from __future__ import annotations

import argparse
import math

import pytest

from guest import cli as guest_cli
from guest.drivers import parse_device
from hypervisor import cli as hypervisor_cli
from irqbus import cli as irqbus_cli
from tests.processes import Processes
from wire import security
from wire.arguments import domain, positive_number, seconds, whole_number
from wire.sizes import parse_size

pytestmark = pytest.mark.timeout(20)
NOWHERE = "ipc:///nonexistent/ballonet-test"


@pytest.fixture(autouse=True)
def _keep_this_processs_key(monkeypatch):
    """A CLI's main() run in this process sets the process's key (wire.security.setup: `guest
    run` takes key guest-NAME); the tests' later clients in this process must keep the
    toolstack key, or the admin endpoint refuses them (EACCES)."""
    monkeypatch.setattr(security, "_current", security.current())
UNICODE_NUMBERS = ["²", "①", "٣", "١٢", "𝟕", "Ⅻ", "-1", " 7", "1_0", "+3"]


@pytest.mark.parametrize("text", UNICODE_NUMBERS)
def test_a_domain_that_reads_as_a_number_but_not_in_ascii_digits_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="ASCII digits"):
        domain(text)


def test_a_domain_is_a_domid_in_ascii_digits_or_a_name():
    assert domain("7") == 7 and domain("007") == 7 and domain("0") == 0
    assert domain("web") == "web" and domain("web٣") == "web٣" and domain("vm-2") == "vm-2"
    with pytest.raises(argparse.ArgumentTypeError, match="out of range"):
        domain("32752")


@pytest.mark.parametrize("text", ["²", "٣", "", "1.0", "-1", "0x1", " 1", "1" * 40, "11"])
def test_whole_numbers_are_ascii_digits_in_range(text):
    with pytest.raises(argparse.ArgumentTypeError, match="ASCII digits"):
        whole_number(1, 10)(text)
    assert whole_number(1, 10)("10") == 10


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "٣", "1,5", "", "1e999", "0x10"])
def test_seconds_are_positive_finite_ascii_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError):
        seconds(text)
    assert [seconds(t) for t in ("2", "0.5", ".25", "1e-3", "3.")] == [2.0, 0.5, 0.25, 0.001, 3.0]
    assert math.isclose(positive_number("a rate", 10)("10"), 10)
    with pytest.raises(argparse.ArgumentTypeError, match="up to 10"):
        positive_number("a rate", 10)("10.5")


@pytest.mark.parametrize("text", ["١٢m", "²", "٣g", "1_000", "-1m", "nan", "infm"])
def test_sizes_are_ascii_numbers(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_a_device_pin_is_ascii_digits():
    with pytest.raises(ValueError, match="pin must be"):
        parse_device("nic0:pin=²")
    assert parse_device("nic0:pin=5").pin == 5


COMMANDS = [
    (hypervisor_cli, ["mem-set", "²", "1m"], "domain"),
    (hypervisor_cli, ["mem-max", "٣", "1m"], "domain"),
    (hypervisor_cli, ["destroy", "①"], "domain"),
    (hypervisor_cli, ["mem-set", "web", "١٢m"], "size"),
    (hypervisor_cli, ["top", "-i", "٣"], "-i/--iterations"),
    (hypervisor_cli, ["guest-set", "²", "stuck=on"], "domain"),
    (hypervisor_cli, ["guest-set", "web", "rate=٣"], "KEY=VALUE"),
    (hypervisor_cli, ["guest-set", "web", "ceiling=١m"], "KEY=VALUE"),
    (hypervisor_cli, ["list", "--timeout", "nan"], "--timeout"),
    (irqbus_cli, ["raise", "²", "nic0"], "guest"),
    (irqbus_cli, ["show", "٣"], "guest"),
    (irqbus_cli, ["raise", "vm1", "nic0", "--count", "²"], "--count"),
    (irqbus_cli, ["attach", "vm1", "nic0", "--pin", "²"], "--pin"),
    (irqbus_cli, ["attach", "vm1", "nic0", "--pin", "2"], "--pin"),
    (irqbus_cli, ["msi", "vm1", "--address", "0xfee00000", "--data", "٦٥"], "--data"),
    (irqbus_cli, ["device", "vm1", "nic0", "--rate", "٣"], "--rate"),
    (irqbus_cli, ["device", "vm1", "nic0", "--rate", "5", "--count", "٣"], "--count"),
    (guest_cli, ["interrupts", "²"], "name"),
    (guest_cli, ["run", "--memory", "1m", "--max-retries", "²"], "--max-retries"),
    (guest_cli, ["run", "--memory", "1m", "--device", "nic0:pin=²"], "--device"),
    (guest_cli, ["run", "--memory", "١m"], "--memory"),
    (guest_cli, ["run", "--memory", "1m", "--ceiling", "١m"], "--ceiling"),
    (guest_cli, ["run", "--memory", "1m", "--inaccuracy", "٤k"], "--inaccuracy"),
    (guest_cli, ["run", "--memory", "1m", "--retry-delay", "inf"], "--retry-delay"),
    (guest_cli, ["run", "--memory", "1m", "--max-retry-delay", "100000"], "--max-retry-delay"),
    (guest_cli, ["run", "--memory", "1m", "--speed", "٣"], "--speed"),
    (guest_cli, ["run", "--memory", "1m", "--speed", "0"], "--speed"),
    (guest_cli, ["run", "--memory", "1m", "--kernel-floor", "٣m"], "--kernel-floor"),
    (guest_cli, ["run", "--memory", "1m", "--driver", "2.6"], "--driver"),
    (guest_cli, ["run", "--memory", "1m", "--irq-quiet", "٠.٥"], "--irq-quiet"),
    (guest_cli, ["run", "--memory", "1m", "--irq-quiet", "0"], "--irq-quiet"),
    (guest_cli, ["run", "--memory", "1m", "--irq-quiet", "nan"], "--irq-quiet"),
]


@pytest.mark.parametrize("cli, argv, argument", COMMANDS, ids=[" ".join(argv) for _, argv, _ in COMMANDS])
def test_each_cli_refuses_unicode_numbers_as_a_usage_error(cli, argv, argument, capsys, monkeypatch):
    for env in ("BALLONET_HYPERVISOR", "BALLONET_ADMIN", "BALLONET_IRQBUS"):
        monkeypatch.setenv(env, NOWHERE)
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2, err
    assert f"argument {argument}" in err and "error:" in err


@pytest.mark.parametrize("argv", [["hypervisor", "mem-set", "²", "1m", "--admin-endpoint", NOWHERE],
                                  ["guest", "interrupts", "²", "--irqbus", NOWHERE]])
def test_the_installed_commands_exit_2_without_a_traceback(argv):
    procs = Processes()
    try:
        result = procs.run(*argv)
    finally:
        procs.stop_all()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ASCII digits" in result.stderr


def test_guest_run_refuses_a_retry_count_for_a_driver_without_one(capsys, monkeypatch):
    monkeypatch.setenv("BALLONET_HYPERVISOR", NOWHERE)
    assert guest_cli.main(["run", "--memory", "1m", "--driver", "seed", "--max-retries", "4"]) == 2
    assert "no retry count" in capsys.readouterr().err


def test_legacy_hard_limit_is_an_alias_of_the_pre_patch_driver():
    args = guest_cli.build_parser().parse_args(["run", "--memory", "1m", "--legacy-hard-limit"])
    assert str(args.driver) == "pre-patch"
    assert str(guest_cli.build_parser().parse_args(["run", "--memory", "1m"]).driver) == "current"
