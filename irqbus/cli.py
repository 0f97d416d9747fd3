"""`irqbus serve` runs the interrupt router; the other subcommands are devices and inspection."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from irqbus.device import DeviceGone, DeviceRunner, Pacer, Route
from irqbus.outage import DEFAULT_GUEST_GRACE_S, DEFAULT_MAX_RETRY_DELAY_S, device_backoff
from irqbus.dispatch import IrqBus
from irqbus.queries import DEFAULT_QUERY_TIMEOUT_S
from irqbus.service import IrqbusService
from irqbus.show import fetch_show, format_show
from wire import endpoints, logsetup, security
from wire.keys import KeyFileError, Role, check_public
from wire.security import Server
from wire.client import RpcClient
from wire.errors import RemoteError, Unreachable, report_failure
from wire.arguments import domain, positive_number, seconds, whole_number
from wire.operations import CASCADE_PIN, IRQBUS_PINS, MAX_BURST
from wire.shown import for_terminal, shown
from wire.signals import stop_on_signals


_count = whole_number(1, 10**12)
_burst = whole_number(1, MAX_BURST)
_HEX_OR_DECIMAL = re.compile(r"0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}")


def _int(text: str) -> int:
    """Decimal or 0x-prefixed hex, as MSI addresses are written (ASCII, at most 64 bits)."""
    if _HEX_OR_DECIMAL.fullmatch(text) is None or int(text, 0) >= 1 << 64:
        raise argparse.ArgumentTypeError(f"expected an integer 0..2^64-1 in ASCII digits (0x for hex), got {shown(text)}")
    return int(text, 0)


def _pin(text: str) -> int:
    pin = whole_number(0, IRQBUS_PINS - 1, "a pin")(text)
    if pin == CASCADE_PIN:
        raise argparse.ArgumentTypeError(f"pin {CASCADE_PIN} is the i8259 cascade, not a device line")
    return pin


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irqbus", description="ballonet's interrupt router, its devices and inspection")
    sub = parser.add_subparsers(dest="command", required=True)
    ep_help = f"irqbus endpoint (env {endpoints.IRQBUS_ENV}, default {endpoints.DEFAULT_IRQBUS})"

    serve = sub.add_parser("serve", help="run irqbus: every guest's interrupt controllers")
    serve.add_argument("--endpoint", help=ep_help)
    serve.add_argument("--query-timeout", type=seconds, default=DEFAULT_QUERY_TIMEOUT_S, help="seconds a guest has to answer a forwarded query")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--profile", metavar="FILE", help="time each stage of every message and write the records to FILE (JSON) "
                       "when stopped: for bench/irq_bench.py --profile; slows every message a little")
    security.add_arguments(serve, "irqbus")

    def client_command(name: str, help_text: str, key: str = "toolstack") -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--endpoint", help=ep_help)
        cmd.add_argument("--timeout", type=seconds, default=1.0, help="seconds to wait for each of 2 attempts")
        security.add_arguments(cmd, key)
        return cmd

    def device_command(name: str, help_text: str, key: str = "toolstack") -> argparse.ArgumentParser:
        cmd = client_command(name, help_text, key)
        cmd.add_argument("guest", type=domain, help="guest name or domid")
        cmd.add_argument("device", help="device name")
        return cmd

    def route_options(cmd: argparse.ArgumentParser, required: bool) -> None:
        route = cmd.add_mutually_exclusive_group(required=required)
        route.add_argument("--pin", type=_pin, help="the guest pin the device's line is wired to (0-15 i8259, 16-23 IOAPIC)")
        route.add_argument("--msi", action="store_true", help="the device signals by MSI-X message")
        cmd.add_argument("--level", action="store_true", help="level-triggered line (held until the driver clears it); default edge")

    show = client_command("show", "guests, pins, devices, controller registers")
    show.add_argument("guest", nargs="?", type=domain, help="only this guest (name or domid)")
    show.add_argument("--json", action="store_true")
    attach = device_command("attach", "attach a device to a guest's pin or to MSI")
    route_options(attach, required=True)
    attach.add_argument("--device-key", metavar="NAME|Z85",
                        help="the key that will drive the device (raise, lower, ...): a key NAME in the key directory "
                             "(created on first use, authorized as a device key) or a Z85 public key; default: this command's own")
    device_command("detach", "unplug a device")
    device_command("raise", "the device interrupts (level: holds its line; edge: pulses; MSI: a message)").add_argument(
        "--count", type=_burst, default=1, help="interrupts to raise at once")
    device_command("lower", "the device deasserts its line and clears its status")
    device_command("pulse", "an edge from the device, whatever its trigger").add_argument("--count", type=_burst, default=1)
    msi = client_command("msi", "write an MSI message: the device's MSI-X entry, or raw --address/--data")
    msi.add_argument("guest", type=domain, help="guest name or domid")
    msi.add_argument("device", nargs="?", help="device name (optional with --address/--data)")
    msi.add_argument("--address", type=_int, help="raw message address, e.g. 0xfee00000")
    msi.add_argument("--data", type=_int, help="raw message data, e.g. 0x41 (vector 0x41, fixed, edge)")
    msi.add_argument("--count", type=_burst, default=1)

    dev = device_command("device", "run an emulated device raising interrupts at a rate", key="device")
    route_options(dev, required=False)
    dev.add_argument("--rate", type=positive_number("a positive rate"), required=True, metavar="HZ", help="interrupts per second")
    dev.add_argument("--count", type=_count, help="stop after this many interrupts (default: until stopped)")
    dev.add_argument("--burst", type=_burst, default=1, help="at most this many interrupts per request when behind (fast devices)")
    dev.add_argument("--guest-grace", type=seconds, default=DEFAULT_GUEST_GRACE_S, metavar="SECONDS",
                     help="after an irqbus restart, how long the new irqbus may go without the guest before the device "
                          f"takes it for gone and exits (default {DEFAULT_GUEST_GRACE_S:g})")
    dev.add_argument("--max-retry-delay", type=seconds, default=DEFAULT_MAX_RETRY_DELAY_S, metavar="SECONDS",
                     help=f"the cap of the backoff while irqbus is away (default {DEFAULT_MAX_RETRY_DELAY_S:g})")
    dev.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def serve(args: argparse.Namespace) -> int:
    log = logsetup.configure(args.log_level, "irqbus")
    endpoint = endpoints.endpoint(args.endpoint, endpoints.IRQBUS_ENV)
    if (failed := security.setup(args, None, [endpoint], "irqbus serve")) is not None:
        return failed
    log.info("keys", **security.current().describe())
    stop = stop_on_signals()
    stages = None
    if args.profile:
        from irqbus.stages import StageClock, install_irqbus

        stages = StageClock()
        install_irqbus(stages)
    bus = IrqBus(args.query_timeout, started=time.monotonic())
    service = IrqbusService(bus, endpoint, log, debug=args.log_level == "debug")
    # a new epoch: guests and devices re-declare their wiring here (docs/protocol.md, "irqbus restarts")
    log.info("serving", endpoint=endpoint, query_timeout_s=args.query_timeout, epoch=bus.epoch)
    try:
        service.serve(stop.is_set)
    finally:
        service.close()
        if stages is not None:
            stages.dump(args.profile)
        log.info("stopped", guests=len(service.bus.router))
    return 0


def _attach_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"guest": args.guest, "device": args.device}
    if args.msi:
        out["msi"] = True
    else:
        out["pin"] = args.pin
        out["trigger"] = "level" if args.level else "edge"
    return out


def device_key(text: str) -> str:
    """`--device-key`: a Z85 public key as it is, or a key NAME of this process's key directory
    (created on first use and authorized as a device key, as `irqbus device` would)."""
    try:
        return check_public(text)
    except KeyFileError:
        pass
    keys = security.current().keys
    if keys is None:
        raise KeyFileError("--device-key NAME needs a key directory: without CURVE (--insecure) no key drives a device")
    if keys.public_file_exists(text):
        return keys.public(text).decode()
    return keys.pair(text, role=Role.DEVICE).public.decode()


def _device_process(args: argparse.Namespace, client: RpcClient) -> int:
    if args.level and args.pin is None:
        print("irqbus device: --level is for pin devices (--pin N)", file=sys.stderr)
        return 2
    log = logsetup.configure(args.log_level, "device").bind(guest=args.guest, device=args.device)
    stop = stop_on_signals()
    route = Route(_attach_args(args), args.level) if args.pin is not None or args.msi else None
    pacer = Pacer(args.rate, time.monotonic(), args.burst, args.count)
    runner = DeviceRunner(client, args.guest, args.device, pacer, stop, log, route, args.guest_grace, device_backoff(args.max_retry_delay))
    log.info("device running", rate=args.rate, count=args.count, burst=args.burst, guest_grace_s=args.guest_grace)
    status = 0
    try:
        totals = runner.run()
    except DeviceGone as err:
        totals = runner.totals
        log.error("device gone", message=str(err))
        print(f"irqbus device: {for_terminal(str(err))}; exiting", file=sys.stderr)
        status = 1
    log.info("device stopped", raised=totals.raised, merged=totals.merged, delivered=totals.delivered,
             missed=totals.missed, reasserted=totals.reasserted)
    print(f"{args.device} on {args.guest}: {totals.raised} interrupts raised, {totals.merged} merged into one still pending")
    return status


def run_client(args: argparse.Namespace) -> int:
    endpoint = endpoints.endpoint(args.endpoint, endpoints.IRQBUS_ENV)
    role = Role.DEVICE if args.command == "device" else Role.TOOLSTACK  # a key created on first use gets this role
    if (failed := security.setup(args, role, [endpoint], f"irqbus {args.command}", (Server.IRQBUS,))) is not None:
        return failed
    client = RpcClient(endpoint, server=Server.IRQBUS, timeout=args.timeout, retries=1)
    try:
        if args.command == "show":
            result = fetch_show(client, args.guest)
            print(json.dumps(result, indent=2) if args.json else format_show(result))
        elif args.command == "attach":
            if args.level and args.msi:
                print("irqbus attach: --level is for pin devices", file=sys.stderr)
                return 2
            call_args = _attach_args(args)
            if args.device_key:
                try:
                    call_args["key"] = device_key(args.device_key)
                except KeyFileError as err:
                    print(f"irqbus attach: {err}", file=sys.stderr)
                    return 2
            r = client.call("attach_device", call_args)
            where = "MSI" if r["kind"] == "msi" else f"pin {r['pin']} ({r['trigger']})"
            print(f"{for_terminal(r['device'])} {'attached to' if r['created'] else 'already on'} {for_terminal(r['guest'])} (domid {r['domid']}) {where}")
        elif args.command == "detach":
            client.call("detach_device", {"guest": args.guest, "device": args.device})
        elif args.command in ("raise", "pulse"):
            call_args: dict[str, Any] = {"guest": args.guest, "device": args.device}
            if args.count > 1:
                call_args["count"] = args.count
            r = client.call(args.command, call_args)
            print(f"{args.device}: generation {r['gen']}, {r['delivered']} delivered, {r['merged']} merged")
        elif args.command == "lower":
            client.call("lower", {"guest": args.guest, "device": args.device})
        elif args.command == "msi":
            call_args = {"guest": args.guest}
            if args.device:
                call_args["device"] = args.device
            if (args.address is None) != (args.data is None):
                print("irqbus msi: --address and --data go together", file=sys.stderr)
                return 2
            if args.address is not None:
                call_args.update(address=args.address, data=args.data)
            elif not args.device:
                print("irqbus msi: name a DEVICE, or give --address and --data", file=sys.stderr)
                return 2
            if args.count > 1:
                call_args["count"] = args.count
            r = client.call("msi", call_args)
            print(f"{r['delivered']} message(s) delivered")
        elif args.command == "device":
            return _device_process(args, client)
    except (Unreachable, RemoteError) as err:
        return report_failure(err, f"irqbus {args.command}", "irqbus", endpoint)
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
