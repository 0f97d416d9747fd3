"""`hypervisor serve` runs the host; the other subcommands are the toolstack, modelled on xl."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from hypervisor import top
from hypervisor.dispatch import Hypervisor
from hypervisor.domains import DEFAULT_LIVENESS_S
from hypervisor.journal import Journal, JournalError, Synchronous
from hypervisor.rights import Guests
from hypervisor.service import HypervisorService
from hypervisor.toolstack import Toolstack, format_info, format_list, format_snapshot
from hypervisor.virq import VirqSender
from irqbus.show import fetch_show
from wire import endpoints, logsetup, security
from wire.keys import Role
from wire.arguments import domain, seconds, whole_number
from wire.security import Server
from wire.client import RpcClient
from wire.control import parse_assignments
from wire.operations import ON_CRASH
from wire.errors import RemoteError, Unreachable, report_failure
from wire.shown import for_terminal
from wire.signals import stop_on_signals
from wire.sizes import size_to_pages


DEFAULT_MEMORY = size_to_pages("4g")


def _size(text: str) -> int:
    try:
        return size_to_pages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


control_help = (
    "rate=PAGES_PER_S (0: no limit), stuck=on|off, floor=SIZE, ceiling=SIZE|none, inaccuracy=SIZE, "
    "max_schedule_delay=SECONDS, max_retry_count=N (0: never give up)"
)


def _assignment(text: str) -> tuple[str, Any]:
    """One KEY=VALUE of `guest-set`, as the wire key and value (wire/control.py)."""
    try:
        [(key, value)] = parse_assignments([text]).items()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hypervisor", description="ballonet's hypervisor and its toolstack")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hypervisor: the host's page pool and every domain")
    serve.add_argument(
        "--memory", type=_size,
        help="host memory, xl-style size (default 4g; with --state, the journal's, which a different size given here refuses)",
    )
    serve.add_argument(
        "--state", metavar="FILE",
        help="the journal (SQLite) that keeps the books across restarts: created if missing, else recovered and audited "
        "before serving (default: none; a restart is a host reboot)",
    )
    serve.add_argument(
        "--synchronous", choices=[s.value for s in Synchronous], default=None,
        help="with --state, SQLite's synchronous mode: normal survives a process crash, full a power loss too (default normal)",
    )
    serve.add_argument("--guest-endpoint", help=f"where guests connect (env {endpoints.HYPERVISOR_ENV}, default {endpoints.DEFAULT_HYPERVISOR})")
    serve.add_argument("--admin-endpoint", help=f"where the toolstack connects (env {endpoints.ADMIN_ENV}, default {endpoints.DEFAULT_ADMIN})")
    serve.add_argument("--irqbus", help=f"irqbus endpoint for guests' virtual interrupts (env {endpoints.IRQBUS_ENV}; without either, none are sent)")
    serve.add_argument("--liveness", type=seconds, default=DEFAULT_LIVENESS_S, help="seconds of silence before a domain shows unresponsive")
    serve.add_argument(
        "--reclaim-after", type=seconds, metavar="SECONDS",
        help="a domain whose guest sent no request or heartbeat for SECONDS is destroyed and its pages return to the pool "
        "(or kept as crashed, with on_crash=preserve); default: never (a slow guest is not a dead one)",
    )
    serve.add_argument(
        "--guests", choices=[g.value for g in Guests], default=Guests.ANY.value,
        help="which keys the guest endpoint serves: any (the default: any key registers a domain, bound to that key) or "
        "authorized (only keys with role guest, for every guest operation: `ballonet keys authorize NAME --role guest`)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    security.add_arguments(serve, "hypervisor")

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--admin-endpoint", help=f"the hypervisor's admin endpoint (env {endpoints.ADMIN_ENV})")
        cmd.add_argument("--timeout", type=seconds, default=1.0, help="seconds to wait for each of 3 attempts")
        security.add_arguments(cmd, "toolstack")
        return cmd

    for name, help_text in [
        ("list", "list domains"), ("info", "host memory"), ("audit", "check that the books balance"),
        ("snapshot", "the pool and every domain at one instant"),
    ]:
        client_command(name, help_text).add_argument("--json", action="store_true", help="machine-readable output")
    for name, help_text in [("mem-set", "set a domain's balloon target"), ("mem-max", "set a domain's maxmem, as xl mem-max (refused below its target)")]:
        cmd = client_command(name, help_text)
        cmd.add_argument("domain", type=domain, help="domain name or id")
        cmd.add_argument("size", type=_size, help="size; a bare number is KiB, suffixes b k m g t")
        if name == "mem-max":
            cmd.add_argument(
                "--domctl", action="store_true",
                help="the bare XEN_DOMCTL_max_mem: any max, also below the target or the current memory (the domain then cannot grow)",
            )
    guest_set = client_command("guest-set", "change a running guest's behaviour: its pace, floor, ceiling, inaccuracy, driver tunables")
    guest_set.add_argument("domain", type=domain, help="domain name or id")
    # dest `settings`, not `keys`: KEY=VALUE pairs, not the key directory (--keys)
    guest_set.add_argument("settings", nargs="+", type=_assignment, metavar="KEY=VALUE", help=f"one or more of: {control_help}")
    client_command("destroy", "destroy a domain and return its pages").add_argument("domain", type=domain, help="domain name or id")
    on_crash = client_command("on-crash", "what the host does with a domain whose guest falls silent (serve --reclaim-after), as xl's on_crash")
    on_crash.add_argument("domain", type=domain, help="domain name or id")
    on_crash.add_argument("action", choices=ON_CRASH, help="destroy: its pages return to the pool (the default); preserve: kept as crashed until `destroy`")
    top = client_command("top", "a live view of the host, like xentop")
    top.add_argument("-d", "--delay", type=seconds, default=1.0, help="seconds between frames (default 1)")
    top.add_argument("-i", "--iterations", type=whole_number(1, 10**9), help="stop after this many frames (default: until Ctrl-C)")
    top.add_argument("--irqbus", help=f"irqbus endpoint, for interrupt rates (env {endpoints.IRQBUS_ENV})")
    return parser


def serve(args: argparse.Namespace) -> int:
    if args.synchronous is not None and args.state is None:
        print("hypervisor serve: --synchronous is the journal's durability: it needs --state FILE", file=sys.stderr)
        return 2
    args.synchronous = args.synchronous or Synchronous.NORMAL.value
    log = logsetup.configure(args.log_level, "hypervisor")
    guest_ep = endpoints.endpoint(args.guest_endpoint, endpoints.HYPERVISOR_ENV)
    admin_ep = endpoints.endpoint(args.admin_endpoint, endpoints.ADMIN_ENV)
    irqbus_ep = args.irqbus or os.environ.get(endpoints.IRQBUS_ENV)
    if (failed := security.setup(args, Role.HYPERVISOR, [guest_ep, admin_ep, *([irqbus_ep] if irqbus_ep else [])], "hypervisor serve",
                                 (Server.IRQBUS,) if irqbus_ep else ())) is not None:
        return failed
    log.info("keys", **security.current().describe())
    stop = stop_on_signals()
    journal: Journal | None = None
    if args.state is None:
        hypervisor = Hypervisor(DEFAULT_MEMORY if args.memory is None else args.memory, args.liveness)
        log.info("no journal (--state): a restart of this hypervisor is a host reboot, every domain and page is forgotten")
    else:
        try:
            journal = Journal(args.state, Synchronous(args.synchronous))
            new = journal.is_new
            hypervisor, recovery = journal.start(DEFAULT_MEMORY if new and args.memory is None else args.memory, args.liveness, time.monotonic())
        except JournalError as err:
            if journal is not None:
                journal.close()
            print(f"hypervisor serve: refusing to start: {err}", file=sys.stderr)
            log.error("refusing to start", reason=str(err))
            return 1
        if recovery is None:
            log.info("journal created", state=args.state, synchronous=args.synchronous, boot_id=hypervisor.boot_id)
        else:
            log.info(
                "recovered", state=args.state, domains=recovery.domains, pages=recovery.pages, records=recovery.records,
                events=recovery.events, boot_id=recovery.boot_id, synchronous=args.synchronous,
            )
    virqs = VirqSender(irqbus_ep, log, owners=hypervisor.owners) if irqbus_ep else None
    hypervisor.reclaim_after_s = args.reclaim_after
    hypervisor.guests = Guests(args.guests)
    service = HypervisorService(hypervisor, guest_ep, admin_ep, log, virqs=virqs, journal=journal)
    log.info(
        "serving", guest_endpoint=guest_ep, admin_endpoint=admin_ep, irqbus=irqbus_ep, total_pages=hypervisor.pool.total_pages,
        boot_id=hypervisor.boot_id, state=args.state, reclaim_after_s=args.reclaim_after, guests=args.guests,
    )
    try:
        service.serve(stop.is_set)
    except sqlite3.Error as err:  # a commit failed: the batch's replies were not sent
        print(f"hypervisor serve: the journal {args.state} could not be written ({err}); stopping: start again to recover", file=sys.stderr)
        return 1
    finally:
        service.close()
        if journal is not None:
            journal.close()
        log.info("stopped")
    return 0


def run_client(args: argparse.Namespace) -> int:
    endpoint = endpoints.endpoint(args.admin_endpoint, endpoints.ADMIN_ENV)
    irqbus_ep = getattr(args, "irqbus", None) or os.environ.get(endpoints.IRQBUS_ENV)
    if (failed := security.setup(args, Role.TOOLSTACK, [endpoint, *([irqbus_ep] if irqbus_ep else [])], f"hypervisor {args.command}",
                                 (Server.HYPERVISOR, *((Server.IRQBUS,) if irqbus_ep else ())))) is not None:
        return failed
    tool = Toolstack(endpoint, timeout=args.timeout)
    try:
        if args.command == "top":
            return run_top(args, tool)
        elif args.command == "list":
            domains = tool.list()
            print(json.dumps(domains, indent=2) if args.json else format_list(domains))
        elif args.command == "snapshot":
            snap = tool.snapshot()
            snap.pop("next", None)
            print(json.dumps(snap, indent=2) if args.json else format_snapshot(snap))
        elif args.command == "info":
            info = tool.info()
            print(json.dumps(info, indent=2) if args.json else format_info(info))
        elif args.command == "audit":
            report = tool.audit()
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                print("books balance" if report["ok"] else "\n".join(for_terminal(p) for p in report["problems"]))
            return 0 if report["ok"] else 1
        elif args.command == "mem-set":
            tool.mem_set(args.domain, args.size)
        elif args.command == "mem-max":
            tool.mem_max(args.domain, args.size, domctl=args.domctl)
        elif args.command == "destroy":
            tool.destroy(args.domain)
        elif args.command == "on-crash":
            tool.on_crash(args.domain, args.action)
        elif args.command == "guest-set":
            result = tool.guest_set(args.domain, dict(args.settings))
            print(f"domain {result['domid']}: " + " ".join(f"{k}={for_terminal(str(v))}" for k, v in sorted(result["control"].items())))
    except (Unreachable, RemoteError) as err:
        return report_failure(err, f"hypervisor {args.command}", "hypervisor", endpoint)
    finally:
        tool.close()
    return 0


def run_top(args: argparse.Namespace, tool: Toolstack) -> int:
    stop = stop_on_signals()
    irqbus_ep = args.irqbus or os.environ.get(endpoints.IRQBUS_ENV)
    irqbus = RpcClient(irqbus_ep, server=Server.IRQBUS, timeout=0.3, retries=0) if irqbus_ep else None

    def interrupts() -> dict[str, int] | None:
        """Interrupts delivered to each guest so far, as irqbus counts them (None: no irqbus)."""
        if irqbus is None:
            return None
        try:
            return {g["name"]: g["delivered"] for g in fetch_show(irqbus)["guests"]}
        except (Unreachable, RemoteError):
            return None

    try:
        top.run(lambda: top.Frame(time.monotonic(), tool.info(), tool.list(), interrupts()), args.delay, args.iterations, should_stop=stop.is_set)
    finally:
        if irqbus is not None:
            irqbus.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
