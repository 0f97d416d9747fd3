"""`guest run`: one guest domain's balloon driver as a process."""

from __future__ import annotations

import argparse
import enum
import functools
import os
import socket
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from guest import fleet_plan
from guest.balloon import BalloonConfig
from guest.fleet import NICE, STOP_TIMEOUT_S, ControlReader, Fleet, prepare_for_fork, supervise
from guest.fleet_plan import MAX_FLEET, GuestLaunch, PlanError, SizeRange
from guest.generations import DEFAULT_GENERATION, RULES, DriverGeneration, parse_generation
from guest.interrupts_cli import interrupt_attachments, interrupts_options, show_interrupts
from guest.pace import parse_pace
from guest.service import DEFAULT_HEARTBEAT_S, GuestService, GuestSettings, HypervisorRestarted
from wire.domain_end import DomainEnd
from wire.operations import ON_CRASH
from wire import endpoints, logsetup, security
from wire.keys import KeyDir, KeyFileError, Role, default_dir, key_name_for
from wire.security import Server
from wire.arguments import domain, positive_number, seconds, whole_number
from wire.errors import RemoteError, Unreachable
from wire.heartbeat import MAX_COUNT, MAX_DELAY_S
from wire.shown import for_terminal
from wire.signals import StopFlag, stop_on_signals
from wire.sizes import size_to_pages


GUEST_NAME_ENV = "BALLONET_GUEST_NAME"
MAX_NAME = 64  # the protocol's limit on a domain name


class GuestExit(enum.IntEnum):
    """`guest run`'s exit statuses (README, "The guest")."""

    OK = 0  # stopped by a signal, or its domain was destroyed by the toolstack
    REFUSED = 1  # the hypervisor refused it (at registration: e.g. more memory than the host's)
    USAGE = 2  # bad flags
    HYPERVISOR_RESTARTED = 3  # the hypervisor it registered with restarted and knows nothing of its domain
    RECLAIMED = 4  # the host gave up on it after a silence (serve --reclaim-after): reclaimed, or kept as crashed


def default_name() -> str:
    """The domain name when `--name` is omitted: $BALLONET_GUEST_NAME, else guest-HOSTNAME (in a
    container the hostname is the container's id, so every replica of a scaled service differs)."""
    return os.environ.get(GUEST_NAME_ENV) or f"guest-{socket.gethostname()}"[:MAX_NAME]


def _size(text: str) -> int:
    try:
        return size_to_pages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_retry_delay = positive_number("a positive number of seconds", MAX_DELAY_S)  # what a heartbeat may report
_count = whole_number(0, MAX_COUNT)
_speed = positive_number("a positive time-scale factor", 10_000.0)


def _generation(text: str) -> DriverGeneration:
    try:
        return parse_generation(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _kernel_floor(text: str) -> int | None:
    """SIZE, `none` (0: no floor) or `auto` (None: guest/floor.py's function of the boot maxmem)."""
    if text == "auto":
        return None
    if text == "none":
        return 0
    return _size(text)


class UsageError(ValueError):
    """A `guest run` command line that would be refused, met while planning a fleet."""


class _RaisingParser(argparse.ArgumentParser):
    """A parser that raises UsageError instead of printing usage and exiting: the fleet checks
    each guest's flags before it forks, and names the guest that is wrong."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def build_parser(raising: bool = False) -> argparse.ArgumentParser:
    parser = (_RaisingParser if raising else argparse.ArgumentParser)(prog="guest", description="a ballonet guest domain: its balloon driver")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="register a domain and run its balloon driver until stopped")
    run.add_argument("--name", help=f"domain name, unique on the host (default: env {GUEST_NAME_ENV}, else guest-HOSTNAME)")
    run.add_argument("--memory", type=_size, required=True, help="initial memory, xl-style size (a bare number is KiB)")
    run.add_argument("--maxmem", type=_size, help="maximum memory (default: --memory)")
    run.add_argument("--workload", type=_size, default=0, help="memory the guest itself uses and cannot give back")
    run.add_argument("--hypervisor", help=f"hypervisor guest endpoint (env {endpoints.HYPERVISOR_ENV}, default {endpoints.DEFAULT_HYPERVISOR})")
    driver = run.add_argument_group("the balloon driver (Linux's, by generation)")
    driver.add_argument(
        "--driver", type=_generation, default=DEFAULT_GENERATION,
        metavar="GEN", help=f"which Linux driver: {', '.join(g.value for g in DriverGeneration)} (default {DEFAULT_GENERATION})",
    )
    driver.add_argument(
        "--legacy-hard-limit", dest="driver", action="store_const", const=DriverGeneration.PRE_PATCH,
        help="an alias of --driver pre-patch (kept for old command lines)",
    )
    driver.add_argument("--speed", type=_speed, default=1.0, metavar="FACTOR", help="run the driver's timers and pace FACTOR times faster (figures stay in Linux seconds; default 1)")
    driver.add_argument("--kernel-floor", type=_kernel_floor, default=None, metavar="SIZE|none|auto", help="memory the guest's kernel keeps and never balloons out (default auto: classic XenLinux's minimum_target() of the boot maxmem)")
    driver.add_argument("--hotplug", action="store_true", help="memory hotplug: the guest may grow past the balloon it sized at boot (up to maxmem)")
    timing = run.add_argument_group("retry timer (Linux xen-balloon defaults)")
    timing.add_argument("--retry-delay", type=_retry_delay, default=1.0, help="schedule_delay's reset value, and the seed/pre-patch timer, seconds (default 1)")
    timing.add_argument("--max-retry-delay", type=_retry_delay, default=32.0, help="max_schedule_delay, seconds (3.1, current; default 32)")
    timing.add_argument("--max-retries", type=_count, default=None, help="max_retry_count (3.1, current): cancel after this many failed steps; 0 = unlimited (default: 0 for 3.1, 4 for current)")
    timing.add_argument("--heartbeat", type=seconds, default=DEFAULT_HEARTBEAT_S, help="seconds between status reports (real time)")
    behaviour = run.add_argument_group("behaviour")
    behaviour.add_argument("--balloon-rate", type=positive_number("a positive rate"), metavar="PAGES_PER_S", help="a slow driver: move at most this many pages per second")
    behaviour.add_argument("--stuck", action="store_true", help="a stuck driver: never moves")
    behaviour.add_argument("--ceiling", type=_size, help="the most the guest can hold, below maxmem (a memory hotplug limit): it never asks past it")
    behaviour.add_argument("--inaccuracy", type=_size, default=0, help="settle this much short of each target (squeezed's inaccurate guest), e.g. 4k")
    behaviour.add_argument("--stuck-every", type=seconds, metavar="SECONDS", help="alternately moving and stuck, SECONDS each (combines with --balloon-rate)")
    run.add_argument(
        "--on-crash", choices=ON_CRASH,
        help="what the host does with this domain if it falls silent (hypervisor serve --reclaim-after): "
        "destroy it and take its pages back (the host's default) or preserve it as crashed until `hypervisor destroy`",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    interrupts_options(run)
    security.add_arguments(run, "guest-NAME")

    show = sub.add_parser("interrupts", help="print a running guest's /proc/interrupts (asked through irqbus)")
    show.add_argument("name", type=domain, help="guest name or domid")
    show.add_argument("--json", action="store_true", help="the rows as JSON, with per-action counts")
    show.add_argument("--irqbus", help=f"irqbus endpoint (env {endpoints.IRQBUS_ENV}, default {endpoints.DEFAULT_IRQBUS})")
    show.add_argument("--timeout", type=seconds, default=1.0, help="seconds to wait for each of 3 attempts")
    security.add_arguments(show, "toolstack")
    fleet_options(sub)
    return parser


def fleet_options(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser(
        "fleet", help="start many guests, each its own process, forked from one interpreter",
        description="Start many guests, each its own process (forked: cheap to start, sharing memory "
        "copy-on-write), and stop them all on SIGTERM or Ctrl-C. Flags after `--` go to every "
        "guest's `guest run`, e.g. `-- --speed 10 --heartbeat 5`.",
    )
    fleet.add_argument("--count", type=whole_number(1, MAX_FLEET), help="how many guests (with --memory)")
    fleet.add_argument("--name-prefix", default="g", help="guest names are PREFIX1..PREFIXN (default g)")
    fleet.add_argument("--first", type=whole_number(0, 1_000_000), default=1, help="the first guest's number (default 1)")
    fleet.add_argument("--memory", type=_size_range, metavar="SIZE|LO..HI", help="each guest's initial memory; a range spreads the sizes evenly over the fleet")
    fleet.add_argument("--maxmem", type=_size_range, metavar="SIZE|LO..HI", help="each guest's maximum memory (default: its --memory)")
    fleet.add_argument("--workload", type=_size_range, metavar="SIZE|LO..HI", help="memory each guest uses and cannot give back")
    fleet.add_argument("--from", dest="from_file", type=Path, metavar="FILE", help="one guest per line: NAME and its `guest run` flags (instead of --count/--memory)")
    fleet.add_argument("--log-dir", type=Path, metavar="DIR", help="each guest logs to DIR/NAME.log (default: all to this process's stderr)")
    fleet.add_argument("--start-rate", type=positive_number("a positive rate"), metavar="PER_S", help="start at most this many guests a second (default: as fast as they fork)")
    fleet.add_argument("--nice", type=whole_number(0, 19), default=NICE, help=f"each guest's niceness over the fleet's, so that hundreds of busy guests leave the hypervisor the CPU it needs (default {NICE}; 0: as the fleet)")
    fleet.add_argument("--stop-timeout", type=seconds, default=STOP_TIMEOUT_S, help=f"on stop, seconds all guests together get before SIGKILL (default {STOP_TIMEOUT_S:g})")
    fleet.add_argument("--control", action="store_true", help="also take `start`/`stop` commands as JSON lines on stdin, and print events on stdout (for launchers)")
    fleet.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="the fleet's own log level (a guest's: `-- --log-level`)")


def _size_range(text: str) -> SizeRange:
    try:
        return SizeRange.parse(text)
    except PlanError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def refusal(args: argparse.Namespace) -> str | None:
    """Why `guest run` would refuse these flags, or None: checks across flags, past argparse."""
    max_pages = args.maxmem if args.maxmem is not None else args.memory
    if max_pages < args.memory:
        return "--maxmem must not be below --memory"
    if args.max_retry_delay < args.retry_delay:
        return "--max-retry-delay must not be below --retry-delay"
    if args.max_retries is not None and not RULES[args.driver].backoff:
        return f"the {args.driver} driver has no retry count; --max-retries needs --driver 3.1 or current"
    if args.stuck and (args.balloon_rate or args.stuck_every):
        return "--stuck never moves; it does not combine with --balloon-rate or --stuck-every"
    return None


def run(args: argparse.Namespace, stop: StopFlag | None = None) -> int:
    """`guest run`. `stop`: a flag the caller installed already (a fleet's child does, the
    moment it is forked, so a SIGTERM that comes while the guest starts is a stop, not a death)."""
    if not args.name:
        args.name = default_name()
    log = logsetup.configure(args.log_level, "guest")
    if args.key == "guest-NAME":
        args.key = key_name_for(args.name)
    hypervisor_ep = endpoints.endpoint(args.hypervisor, endpoints.HYPERVISOR_ENV)
    irqbus_ep = getattr(args, "irqbus", None) or os.environ.get(endpoints.IRQBUS_ENV)
    if (failed := security.setup(args, Role.GUEST, [hypervisor_ep, *([irqbus_ep] if irqbus_ep else [])], "guest run",
                                 (Server.HYPERVISOR, *((Server.IRQBUS,) if irqbus_ep else ())))) is not None:
        return failed
    if (problem := refusal(args)) is not None:
        print(f"guest run: {problem}", file=sys.stderr)
        return 2
    max_pages = args.maxmem if args.maxmem is not None else args.memory
    spec = "+".join(
        ["stuck"] * args.stuck
        + ([f"slow:{args.balloon_rate}"] if args.balloon_rate else [])
        + ([f"stuck-every:{args.stuck_every}"] if args.stuck_every else [])
    ) or "normal"
    settings = GuestSettings(
        name=args.name,
        memory_pages=args.memory,
        max_pages=max_pages,
        hypervisor=endpoints.endpoint(args.hypervisor, endpoints.HYPERVISOR_ENV),
        workload_pages=args.workload,
        balloon=BalloonConfig(args.driver, args.retry_delay, args.max_retry_delay, args.max_retries),
        pace=lambda now: parse_pace(spec, now),
        heartbeat_s=args.heartbeat,
        speed=args.speed,
        kernel_floor_pages=args.kernel_floor,
        hotplug=args.hotplug,
        ceiling_pages=args.ceiling,
        inaccuracy_pages=args.inaccuracy,
        on_crash=args.on_crash,
    )
    attachments, problem = interrupt_attachments(args, log)
    if problem:
        print(f"guest run: {problem}", file=sys.stderr)
        return 2
    stop = stop or stop_on_signals()
    service = GuestService(settings, log, attachments=attachments)
    try:
        service.run(stop.is_set)
    except Unreachable:
        if not stop.is_set():
            raise
        log.info("stopped before registering")  # asked to stop while the hypervisor was silent
        return 0
    except RemoteError as err:
        log.error("refused by the hypervisor", error=err.code, message=err.message)
        print(f"guest {for_terminal(args.name)}: {for_terminal(err.code)}: {for_terminal(err.message)}", file=sys.stderr)
        return GuestExit.REFUSED
    except HypervisorRestarted as lost:
        log.error("hypervisor restarted", registered_boot_id=lost.registered_boot_id, boot_id=lost.boot_id, status=int(GuestExit.HYPERVISOR_RESTARTED))
        print(f"guest {for_terminal(args.name)}: {for_terminal(str(lost))}; exiting with status {int(GuestExit.HYPERVISOR_RESTARTED)}", file=sys.stderr)
        return GuestExit.HYPERVISOR_RESTARTED
    finally:
        service.close()
    if service.gone is not None:  # never a silent exit: say how the domain ended, and what follows
        status = GuestExit.OK if service.gone.end is DomainEnd.DESTROYED else GuestExit.RECLAIMED
        print(f"guest {for_terminal(args.name)}: {for_terminal(service.gone.message)}; exiting with status {int(status)}", file=sys.stderr)
        log.info("stopped", status=int(status))
        return status
    log.info("stopped")
    return 0


@functools.cache
def _fleet_parser() -> argparse.ArgumentParser:
    """Built once per process: building the parser costs ~25 times parsing one command line
    with it, and a fleet parses one per guest."""
    return build_parser(raising=True)


def parse_run(argv: Sequence[str]) -> tuple[GuestLaunch, argparse.Namespace]:
    """One fleet guest's `guest run` flags, checked as `guest run` checks them; UsageError if
    they would be refused."""
    args = _fleet_parser().parse_args(["run", *argv])
    if not args.name:
        raise UsageError("--name is required in a fleet")
    if (problem := refusal(args)) is not None:
        raise UsageError(problem)
    return GuestLaunch(args.name, tuple(argv)), args


def fleet(args: argparse.Namespace, common: Sequence[str]) -> int:
    """`guest fleet`: plan, check every guest's flags, then fork them (guest/fleet.py)."""
    try:
        if args.from_file is not None:
            if args.count is not None or args.memory is not None:
                raise PlanError("--from names every guest: it does not combine with --count or --memory")
            try:
                lines = args.from_file.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise PlanError(f"{args.from_file}: {err}") from None
            plan = fleet_plan.from_lines(lines, common, str(args.from_file))
        elif args.count is not None or args.memory is not None:
            if args.count is None or args.memory is None:
                raise PlanError("--count and --memory go together (or name every guest with --from FILE)")
            plan = fleet_plan.from_ranges(args.count, args.name_prefix, args.memory, args.maxmem, args.workload, args.first, common)
        elif args.control:
            plan = []
        else:
            raise PlanError("say which guests: --count N --memory SIZE, or --from FILE (or --control)")
        launches = []
        for launch in plan:
            try:
                launches.append(parse_run(launch.argv))
            except UsageError as err:
                raise PlanError(f"guest {launch.name}: {err}") from None
    except PlanError as err:
        print(f"guest fleet: {for_terminal(str(err))}", file=sys.stderr)
        return 2
    if (problem := _make_keys([a for _, a in launches])) is not None:
        print(f"guest fleet: {problem}", file=sys.stderr)
        return 2
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    log = logsetup.configure(args.log_level, "fleet")
    prepare_for_fork()
    stop = stop_on_signals()
    guests = Fleet(run, log, args.log_dir, args.nice)
    control = ControlReader(sys.stdin.fileno()) if args.control else None

    def parse_control(argv: list[str]) -> tuple[GuestLaunch, argparse.Namespace]:
        return parse_run([*argv, *common])

    return supervise(guests, launches, stop.is_set, parse_control, args.start_rate, args.stop_timeout, control, sys.stdout if args.control else None)


def _make_keys(guests: Sequence[argparse.Namespace]) -> str | None:
    """The guests' own keys (guest-NAME), made before the first fork, at once (KeyDir.ensure_pairs);
    what went wrong, or None. Each guest then finds its pair, as `guest run` does on a second start."""
    wanted: dict[Path, list[str]] = {}
    for args in guests:
        if not args.insecure:
            name = key_name_for(args.name) if args.key == "guest-NAME" else args.key
            wanted.setdefault(default_dir(args.key_dir), []).append(name)
    try:
        for path, names in wanted.items():
            keys = KeyDir(path)
            keys.ensure_pairs(names, Role.GUEST)
            keys.vet_authorized()  # once here: each guest's own check then finds it vetted (wire.keys)
    except KeyFileError as err:
        return str(err)
    except OSError as err:
        return f"key directory: {err.strerror or err} ({err.filename or ''})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    common: list[str] = []
    if words[:1] == ["fleet"] and "--" in words:
        at = words.index("--")
        words, common = words[:at], words[at + 1:]
    args = build_parser().parse_args(words)
    if args.command == "interrupts":
        return show_interrupts(args)
    if args.command == "fleet":
        return fleet(args, common)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
