"""The guest CLI's interrupt parts: `guest run --irqbus/--device` and `guest interrupts NAME`.

`guest interrupts` asks irqbus, which every running guest is attached to; irqbus forwards the
question to the guest and relays its answer (the guest has no listening socket of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import structlog

from guest.drivers import DriverSpec, check_specs, parse_device
from guest.interrupts import IrqbusAttachment
from guest.irq import SpuriousPolicy
from guest.service import Attachment
from wire import endpoints, security
from wire.keys import Role
from wire.arguments import positive_number
from wire.security import Server
from wire.client import RpcClient
from wire.errors import RemoteError, Unreachable, report_failure
from wire.operations import VIRQS
from wire.shown import for_terminal


MAX_IRQ_QUIET_S = 3600.0


def _device(text: str) -> DriverSpec:
    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def interrupts_options(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("interrupts")
    group.add_argument(
        "--irqbus",
        help=f"irqbus endpoint (env {endpoints.IRQBUS_ENV}); without either the guest runs without interrupts",
    )
    group.add_argument(
        "--device",
        action="append",
        type=_device,
        default=[],
        metavar="NAME:pin=N[:level|:edge]|NAME:msi",
        help="a driver for device NAME on pin N (0-15 i8259, 16-23 IOAPIC) or on MSI-X; repeatable",
    )
    group.add_argument(
        "--irq-quiet",
        type=positive_number("a positive number of seconds", MAX_IRQ_QUIET_S),
        default=SpuriousPolicy().quiet,
        metavar="SECONDS",
        help="spurious-interrupt detection: an unhandled streak restarts after this long without an "
        "unhandled interrupt (Linux: HZ/10 = 0.1 s; raise it where the guest's processes may be "
        "descheduled for longer, or a storm never looks continuous)",
    )
    group.add_argument(
        "--no-memory-interrupt",
        action="store_true",
        help="do not bind the hypervisor's memory-available interrupt: retry on the timer only (to compare)",
    )


def interrupt_attachments(args: argparse.Namespace, log: structlog.typing.FilteringBoundLogger) -> tuple[list[Attachment], str | None]:
    """The irqbus attachment `guest run` asked for, or a problem to report (exit 2)."""
    endpoint = args.irqbus or os.environ.get(endpoints.IRQBUS_ENV)
    if not endpoint:
        if args.device:
            return [], f"--device needs an irqbus: --irqbus or {endpoints.IRQBUS_ENV}"
        return [], None
    try:
        check_specs(args.device)
    except ValueError as err:
        return [], str(err)
    virqs = tuple(v for v in VIRQS if not (v == "memory" and args.no_memory_interrupt))
    spurious = SpuriousPolicy(quiet=args.irq_quiet)
    return [IrqbusAttachment(endpoint, args.device, log, spurious=spurious, virqs=virqs)], None


def lines_for_terminal(text: str) -> str:
    """The guest's /proc/interrupts as it wrote it, but for control characters: a guest
    answers with whatever it likes, and only its line breaks reach the terminal as such."""
    return "\n".join(for_terminal(line) for line in str(text).split("\n"))


def show_interrupts(args: argparse.Namespace) -> int:
    endpoint = endpoints.endpoint(args.irqbus, endpoints.IRQBUS_ENV)
    if (failed := security.setup(args, Role.TOOLSTACK, [endpoint], "guest interrupts", (Server.IRQBUS,))) is not None:
        return failed
    client = RpcClient(endpoint, server=Server.IRQBUS, timeout=args.timeout, retries=2)
    try:
        result = client.call("interrupts", {"guest": args.name, "format": "json" if args.json else "text"})
    except (Unreachable, RemoteError) as err:
        return report_failure(err, f"guest interrupts {for_terminal(args.name)}", "irqbus", endpoint)
    finally:
        client.close()
    if args.json:
        print(json.dumps(result.get("rows", []), indent=2))
    else:
        sys.stdout.write(lines_for_terminal(result.get("text", "")))
    return 0
