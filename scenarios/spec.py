"""Scenario files (TOML): the host, its guests and devices, a timeline, and what must hold.

Every key is checked when the file is loaded, with a message that names the key, so a typo
fails before any process starts.
"""

from __future__ import annotations

import enum
import tomllib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from guest import fleet_plan
from guest.fleet_plan import PlanError, SizeRange
from guest.generations import DEFAULT_GENERATION, RULES, DriverGeneration
from wire import heartbeat
from wire.control import from_human
from wire.operations import ON_CRASH
from wire.sizes import size_to_pages


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with the key at fault in the message."""


class Action(enum.StrEnum):
    MEM_SET = "mem-set"  # toolstack: target SIZE of a domain
    MEM_MAX = "mem-max"  # toolstack: maxmem SIZE of a domain
    DESTROY = "destroy"  # toolstack: destroy a domain
    KILL = "kill"  # SIGKILL a process (a guest, a device, "irqbus", "hypervisor")
    STOP = "stop"  # SIGTERM a process
    START = "start"  # start a stopped process again, as the file describes it
    RESTART = "restart"  # stop, then start
    BEHAVE = "behave"  # change a running guest's control keys (wire/control.py): rate, stuck, floor, ceiling, ...


class StepOutcome(enum.StrEnum):
    ACCEPTED = "accepted"  # done: the toolstack's operation succeeded, the signal sent, the process started
    REFUSED = "refused"  # the hypervisor refused the toolstack's operation (or could not be reached)


PROCESS_ACTIONS = (Action.KILL, Action.STOP, Action.START, Action.RESTART)
# What a step may do to a whole fleet at once (each of its guests in turn; a size may be a
# range LO..HI, spread over the fleet as its sizes are: guest/fleet_plan.py)
FLEET_ACTIONS = (Action.MEM_SET, Action.MEM_MAX, Action.BEHAVE)


class Check(enum.StrEnum):
    AT_TARGET = "at-target"  # every named guest within `pages` of its target by time `by`, and still at `by`
    OFF_TARGET = "off-target"  # every named guest still more than `pages` from its target at time `by`
    AUDIT = "audit"  # `hypervisor audit` is clean at the end
    EXITED = "exited"  # the named processes are gone at the end (e.g. nothing left running); `status`: with that exit status
    LINE_DISABLED = "line-disabled"  # the named guests' genirq disabled `irq` (nobody cared)
    LINE_ENABLED = "line-enabled"  # ...or did not
    STATE = "state"  # every named guest's driver reports `state` in its first report at or after `at`
    RETRY_COUNT = "retry-count"  # ...its retry_count in [min, max]
    SCHEDULE_DELAY = "schedule-delay"  # ...its schedule_delay (seconds, Linux's) in [min, max]
    FREE = "free"  # the pool's free memory at `at` is in [min, max] (sizes)
    SUM = "sum"  # the named guests' memory together at `at` is in [min, max] (sizes)
    STEP = "step"  # the timeline's `action` on `target` (at `at`, if given) had `outcome`


# The driver's states a `state` expectation may name: those the heartbeat schema accepts.
DRIVER_STATES = tuple(sorted(heartbeat.DRIVER_STATES))
# Checks judged on one moment `at` of the run; the driver's figures on its first report after it.
MOMENT_CHECKS = frozenset({Check.STATE, Check.RETRY_COUNT, Check.SCHEDULE_DELAY, Check.FREE, Check.SUM})
DRIVER_CHECKS = frozenset({Check.STATE, Check.RETRY_COUNT, Check.SCHEDULE_DELAY})


@dataclass(frozen=True)
class GuestSpec:
    name: str
    memory: str
    maxmem: str | None = None
    workload: str | None = None
    behaviour: str = "normal"  # normal | slow:PAGES_PER_S | stuck | stuck-every:SECONDS | slow:N+stuck-every:S
    driver: str | None = None  # pre-patch | seed | 3.1 | current (None: guest run's default, current)
    max_retries: int | None = None  # None: the driver's own default (3.1: 0, current: 4)
    retry_delay: float = 1.0
    max_retry_delay: float = 32.0
    heartbeat: float = 0.2
    memory_interrupt: bool = True  # bind the hypervisor's memory-available interrupt (with irqbus)
    devices: tuple[str, ...] = ()  # --device specs, e.g. "nic0:pin=5"
    ceiling: str | None = None  # the most it can hold, below maxmem (never asks past it)
    inaccuracy: str | None = None  # settles this much short of each target, e.g. "4k"
    sticky_at: float | None = None  # stops moving for good at this time (a `behave` step: stuck = true)
    on_crash: str | None = None  # destroy | preserve: what the host does if it falls silent (None: destroy)
    args: tuple[str, ...] = ()  # further `guest run` flags, passed through

    def cli_args(self, hypervisor: str, irqbus: str | None, speed: float = 1.0) -> list[str]:
        out = ["run", "--name", self.name, "--memory", self.memory, "--hypervisor", hypervisor]
        out += ["--speed", f"{speed:g}"] if speed != 1.0 else []  # the guest's clock runs `speed` times faster
        out += ["--maxmem", self.maxmem] if self.maxmem else []
        out += ["--workload", self.workload] if self.workload else []
        out += ["--ceiling", self.ceiling] if self.ceiling else []
        out += ["--inaccuracy", self.inaccuracy] if self.inaccuracy else []
        out += ["--on-crash", self.on_crash] if self.on_crash else []
        for part in self.behaviour.split("+"):
            kind, _, value = part.partition(":")
            out += {"normal": [], "stuck": ["--stuck"], "slow": ["--balloon-rate", value], "stuck-every": ["--stuck-every", value]}[kind]
        out += ["--driver", self.driver] if self.driver else []
        out += ["--max-retries", str(self.max_retries)] if self.max_retries is not None else []
        out += ["--retry-delay", str(self.retry_delay)]
        out += ["--max-retry-delay", str(self.max_retry_delay), "--heartbeat", str(self.heartbeat)]
        if irqbus:
            out += ["--irqbus", irqbus]
            out += [] if self.memory_interrupt else ["--no-memory-interrupt"]
            for device in self.devices:
                out += ["--device", device]
        return out + list(self.args)


@dataclass(frozen=True)
class FleetSpec:
    """Many guests from one table: `count` guests named PREFIX1..PREFIXN, sizes spread over
    ranges, every other key shared. Its name stands for all of them in a timeline step's
    `target` and an expectation's `guests`."""

    name: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    guest: str
    rate: float
    pin: int | None = None
    level: bool = False
    msi: bool = False
    count: int | None = None
    burst: int | None = None  # a fast device fires this many per request when behind

    @property
    def process(self) -> str:
        return f"{self.guest}.{self.name}"

    def cli_args(self, irqbus: str) -> list[str]:
        out = ["device", self.guest, self.name, "--endpoint", irqbus, "--rate", str(self.rate)]
        out += ["--msi"] if self.msi else ["--pin", str(self.pin)] + (["--level"] if self.level else [])
        out += ["--burst", str(self.burst)] if self.burst is not None else []
        return out + (["--count", str(self.count)] if self.count is not None else [])


@dataclass(frozen=True)
class Step:
    at: float
    action: Action
    target: str
    size: str | None = None
    keys: tuple[tuple[str, Any], ...] = ()  # behave: (wire key, value) pairs for guest_set
    expect: StepOutcome = StepOutcome.ACCEPTED  # any other outcome fails the scenario

    @property
    def control(self) -> dict[str, Any]:
        return dict(self.keys)

    @property
    def label(self) -> str:
        keys = " ".join(f"{k}={v}" for k, v in self.keys)
        return " ".join(x for x in (str(self.action), self.target, self.size or "", keys) if x)


@dataclass(frozen=True)
class Expectation:
    check: Check
    guests: tuple[str, ...] = ()  # empty: every guest
    by: float | None = None
    pages: int = 0
    irq: int | None = None
    at: float | None = None  # the moment of a MOMENT_CHECKS check, or (optionally) of a step
    state: str | None = None  # Check.STATE
    low: float | None = None  # `min`: retry_count, schedule_delay seconds, or pages (free, sum)
    high: float | None = None  # `max`, likewise
    action: Action | None = None  # Check.STEP: which steps
    target: str | None = None
    outcome: StepOutcome | None = None
    status: int | None = None  # `exited`: the exit status each named guest must have ended with

    @property
    def moment(self) -> float | None:
        """The scenario time the expectation is about, if it is about one."""
        return self.by if self.by is not None else self.at if self.check in MOMENT_CHECKS else None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    memory: str
    duration: float
    guests: tuple[GuestSpec, ...]
    devices: tuple[DeviceSpec, ...] = ()
    timeline: tuple[Step, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    irqbus: bool = False
    sample_interval: float = 0.1
    path: Path | None = field(default=None, compare=False)
    # Every timer and the timeline run `speed` times faster; times in the file and the report
    # stay scenario seconds (the guests' figures stay Linux seconds).
    speed: float = 1.0
    # hypervisor serve --reclaim-after, in scenario seconds (None: off, serve's default)
    reclaim_after: float | None = None
    # The hypervisor keeps its books in a journal (`--state OUTDIR/hypervisor.db`), so a restart
    # on the timeline recovers them; `[hypervisor] journal = false` models one without (a
    # restart is a host reboot).
    journal: bool = True
    # [[fleet]] tables; their guests are in `guests` too, after the [[guest]] ones
    fleets: tuple[FleetSpec, ...] = ()

    def guest(self, name: str) -> GuestSpec:
        return next(g for g in self.guests if g.name == name)

    def fleet(self, name: str) -> FleetSpec | None:
        return next((f for f in self.fleets if f.name == name), None)

    def members(self, name: str) -> tuple[str, ...]:
        """The guests a name stands for: a fleet's, or the one guest."""
        fleet = self.fleet(name)
        return fleet.members if fleet is not None else (name,)

    def with_guests(self, **changes: Any) -> Scenario:
        """The same scenario with every guest changed alike (e.g. driver="3.1", Linux timings)."""
        return replace(self, guests=tuple(replace(g, **changes) for g in self.guests))


# --- loading ------------------------------------------------------------------------------------


def _table(data: dict[str, Any], where: str, known: dict[str, type | tuple[type, ...]], required: tuple[str, ...]) -> dict[str, Any]:
    unknown = set(data) - set(known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in required:
        if key not in data:
            raise ScenarioError(f"{where}: missing '{key}'")
    for key, value in data.items():
        kinds = known[key]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise ScenarioError(f"{where}.{key}: expected {kinds}, got a boolean")
        if not isinstance(value, kinds):
            raise ScenarioError(f"{where}.{key}: expected {getattr(kinds, '__name__', kinds)}, got {value!r}")
    return data


def _size(value: str, where: str) -> str:
    try:
        size_to_pages(value)
    except ValueError as err:
        raise ScenarioError(f"{where}: {err}") from None
    return value


_NUM = (int, float)
DRIVERS = tuple(g.value for g in DriverGeneration)
_GUEST_KEYS = {
    "name": str, "memory": str, "maxmem": str, "workload": str, "behaviour": str, "driver": str,
    "max_retries": int, "retry_delay": _NUM, "max_retry_delay": _NUM, "heartbeat": _NUM, "devices": list, "args": list,
    "memory_interrupt": bool, "ceiling": str, "inaccuracy": str, "sticky_at": _NUM, "on_crash": str,
}


def _guest(data: dict[str, Any], where: str, defaults: dict[str, Any]) -> GuestSpec:
    merged = {**defaults, **data}
    _table(merged, where, _GUEST_KEYS, ("name", "memory"))
    for key in ("memory", "maxmem", "workload", "ceiling", "inaccuracy"):
        if key in merged:
            _size(merged[key], f"{where}.{key}")
    for part in merged.get("behaviour", "normal").split("+"):
        kind, _, value = part.partition(":")
        if kind not in {"normal", "stuck", "slow", "stuck-every"} or (kind in {"slow", "stuck-every"}) != bool(value):
            raise ScenarioError(
                f"{where}.behaviour: expected normal, stuck, slow:PAGES_PER_S, stuck-every:SECONDS, or slow:N+stuck-every:S"
            )
    if "on_crash" in merged and merged["on_crash"] not in ON_CRASH:
        raise ScenarioError(f"{where}.on_crash: expected one of {', '.join(ON_CRASH)}, got {merged['on_crash']!r}")
    if "driver" in merged and merged["driver"] not in DRIVERS:
        raise ScenarioError(f"{where}.driver: expected one of {', '.join(DRIVERS)}, got {merged['driver']!r}")
    driver = DriverGeneration(merged.get("driver", DEFAULT_GENERATION))
    if "max_retries" in merged and not RULES[driver].backoff:  # guest run would refuse it (exit 2)
        raise ScenarioError(f"{where}.max_retries: the {driver} driver has no retry count (only 3.1 and current have)")
    for key in ("devices", "args"):
        if not all(isinstance(x, str) for x in merged.get(key, [])):
            raise ScenarioError(f"{where}.{key}: expected a list of strings")
        if key in merged:
            merged[key] = tuple(merged[key])
    return GuestSpec(**merged)


_FLEET_KEYS = {
    **{k: v for k, v in _GUEST_KEYS.items() if k not in ("name", "memory", "maxmem", "workload")},
    "name": str, "count": int, "name_prefix": str, "first": int, "memory": str, "maxmem": str, "workload": str,
}
_FLEET_OWN = ("name", "count", "name_prefix", "first", "memory", "maxmem", "workload")


def _range_of(value: str, where: str) -> SizeRange:
    try:
        return SizeRange.parse(value)
    except PlanError as err:
        raise ScenarioError(f"{where}: {err} (a size, or a range LO..HI)") from None


def _fleet(data: dict[str, Any], where: str, defaults: dict[str, Any]) -> tuple[FleetSpec, list[GuestSpec]]:
    """A [[fleet]] table: its guests planned as `guest fleet` plans them (guest/fleet_plan.py:
    guest i of N gets LO + (HI - LO) * i / (N - 1) of each range), each then checked as a
    [[guest]] table is, with [defaults] under the fleet's shared keys."""
    _table(data, where, _FLEET_KEYS, ("name", "count", "memory"))
    ranges = {k: _range_of(data[k], f"{where}.{k}") if k in data else None for k in ("memory", "maxmem", "workload")}
    try:
        plan = fleet_plan.from_ranges(
            data["count"], data.get("name_prefix", data["name"]), ranges["memory"], ranges["maxmem"], ranges["workload"], data.get("first", 1),
        )
    except PlanError as err:
        raise ScenarioError(f"{where}: {err}") from None
    shared = {k: v for k, v in data.items() if k not in _FLEET_OWN}
    guests = []
    for launch in plan:
        flags = dict(zip(launch.argv[0::2], launch.argv[1::2]))  # --name N --memory Xk [--maxmem Yk] [--workload Zk]
        sizes = {k: flags[f"--{k}"] for k in ("memory", "maxmem", "workload") if f"--{k}" in flags}
        guests.append(_guest({**shared, "name": launch.name, **sizes}, f"{where} ({launch.name})", defaults))
    return FleetSpec(data["name"], tuple(g.name for g in guests)), guests


def _device(data: dict[str, Any], where: str) -> DeviceSpec:
    _table(
        data, where,
        {"name": str, "guest": str, "rate": _NUM, "pin": int, "level": bool, "msi": bool, "count": int, "burst": int},
        ("name", "guest", "rate"),
    )
    if ("pin" in data) == bool(data.get("msi")):
        raise ScenarioError(f"{where}: give either 'pin' or 'msi = true'")
    return DeviceSpec(**data)


_BEHAVE_KEYS: dict[str, type | tuple[type, ...]] = {
    "rate": _NUM, "stuck": bool, "floor": str, "ceiling": str, "inaccuracy": str, "max_schedule_delay": _NUM, "max_retry_count": int,
}


def _behave_keys(data: dict[str, Any], where: str) -> tuple[tuple[str, Any], ...]:
    """A behave step's keys as the guest_set operation takes them (wire/control.py)."""
    keys = []
    for key in _BEHAVE_KEYS:
        if key in data:
            try:
                keys.append(from_human(key, data[key]))
            except ValueError as err:
                raise ScenarioError(f"{where}.{key}: {err}") from None
    if not keys:
        raise ScenarioError(f"{where}: 'behave' needs at least one of {sorted(_BEHAVE_KEYS)}")
    return tuple(keys)


def _enum(kind: type[enum.StrEnum], value: str, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ScenarioError(f"{where}: expected one of {[k.value for k in kind]}, got {value!r}") from None


def _step(data: dict[str, Any], where: str, fleets: frozenset[str] = frozenset()) -> Step:
    _table(
        data, where, {"at": _NUM, "action": str, "target": str, "size": str, "expect": str, **_BEHAVE_KEYS},
        ("at", "action", "target"),
    )
    action = _enum(Action, data["action"], f"{where}.action")
    expect = _enum(StepOutcome, data.get("expect", "accepted"), f"{where}.expect")
    if action is Action.BEHAVE:
        return Step(float(data["at"]), action, data["target"], keys=_behave_keys(data, where), expect=expect)
    if set(data) & set(_BEHAVE_KEYS):
        raise ScenarioError(f"{where}: {sorted(set(data) & set(_BEHAVE_KEYS))} belong to a 'behave' step")
    if action in {Action.MEM_SET, Action.MEM_MAX}:
        if "size" not in data:
            raise ScenarioError(f"{where}: '{action}' needs a 'size'")
        if data["target"] in fleets:
            _range_of(data["size"], f"{where}.size")
        else:
            _size(data["size"], f"{where}.size")
    return Step(float(data["at"]), action, data["target"], data.get("size"), expect=expect)


# The keys each check takes beside `check`: (required, optional). The checks written before the
# per-check tables keep their common set, so older files load unchanged.
_COMMON = {"guests": list, "by": _NUM, "pages": int, "irq": int}
_RANGE = {"min": _NUM, "max": _NUM}
_SIZES = {"min": str, "max": str}
_CHECK_KEYS: dict[Check, tuple[tuple[str, ...], dict[str, Any]]] = {
    Check.AT_TARGET: (("by",), _COMMON),
    Check.OFF_TARGET: (("by",), _COMMON),
    Check.AUDIT: ((), _COMMON),
    Check.EXITED: ((), {**_COMMON, "status": int}),
    Check.LINE_DISABLED: (("irq", "guests"), _COMMON),
    Check.LINE_ENABLED: (("irq", "guests"), _COMMON),
    Check.STATE: (("at", "state"), {"at": _NUM, "guests": list, "state": str}),
    Check.RETRY_COUNT: (("at",), {"at": _NUM, "guests": list, **_RANGE}),
    Check.SCHEDULE_DELAY: (("at",), {"at": _NUM, "guests": list, **_RANGE}),
    Check.FREE: (("at",), {"at": _NUM, **_SIZES}),
    Check.SUM: (("at",), {"at": _NUM, "guests": list, **_SIZES}),
    Check.STEP: (("action", "target", "outcome"), {"action": str, "target": str, "outcome": str, "at": _NUM}),
}
_WHY = {
    "by": "seconds after the timeline starts", "at": "seconds after the timeline starts", "irq": "an IRQ number",
    "guests": "a list of guest names", "state": f"one of {list(DRIVER_STATES)}", "action": "a timeline action",
    "target": "the step's target", "outcome": "accepted or refused",
}


def _range(data: dict[str, Any], where: str, sizes: bool) -> tuple[float | None, float | None]:
    if "min" not in data and "max" not in data:
        raise ScenarioError(f"{where}: give 'min', 'max' or both")
    low, high = (
        (size_to_pages(_size(data[k], f"{where}.{k}")) if sizes else float(data[k])) if k in data else None for k in ("min", "max")
    )
    if low is not None and high is not None and low > high:
        raise ScenarioError(f"{where}: 'min' ({data['min']}) is above 'max' ({data['max']})")
    return low, high


def _expectation(data: dict[str, Any], where: str) -> Expectation:
    if "check" not in data:
        raise ScenarioError(f"{where}: missing 'check' (one of {[c.value for c in Check]})")
    check = _enum(Check, data["check"], f"{where}.check")
    required, optional = _CHECK_KEYS[check]
    unknown = set(data) - set(optional) - {"check"}
    if unknown:
        raise ScenarioError(f"{where}: '{check}' takes {sorted(optional)}; unknown key(s) {sorted(unknown)}")
    for key in required:
        if key not in data:
            raise ScenarioError(f"{where}: '{check}' needs '{key}' ({_WHY.get(key, key)})")
    _table(data, where, {"check": str, **optional}, ())
    extra: dict[str, Any] = {}
    if check is Check.STATE:
        if data["state"] not in DRIVER_STATES:
            raise ScenarioError(f"{where}.state: expected one of {list(DRIVER_STATES)}, got {data['state']!r}")
        extra["state"] = data["state"]
    if check in {Check.RETRY_COUNT, Check.SCHEDULE_DELAY, Check.FREE, Check.SUM}:
        extra["low"], extra["high"] = _range(data, where, sizes=check in {Check.FREE, Check.SUM})
    if check is Check.STEP:
        extra["action"] = _enum(Action, data["action"], f"{where}.action")
        extra["target"] = data["target"]
        extra["outcome"] = _enum(StepOutcome, data["outcome"], f"{where}.outcome")
    by = float(data["by"]) if "by" in data else None
    at = float(data["at"]) if "at" in data else None
    if "status" in data:
        extra["status"] = data["status"]
    return Expectation(check, tuple(data.get("guests", ())), by, data.get("pages", 0), data.get("irq"), at=at, **extra)


def parse(data: dict[str, Any], path: Path | None = None) -> Scenario:
    where = str(path or "scenario")
    _table(
        data, where,
        {"name": str, "description": str, "memory": str, "duration": _NUM, "irqbus": bool, "sample_interval": _NUM,
         "defaults": dict, "guest": list, "fleet": list, "device": list, "timeline": list, "expect": list, "speed": _NUM,
         "reclaim_after": _NUM, "hypervisor": dict},
        ("name", "memory", "duration"),
    )
    if not data.get("guest") and not data.get("fleet"):
        raise ScenarioError(f"{where}: missing 'guest' (a [[guest]] table, or a [[fleet]] of them)")
    _size(data["memory"], f"{where}.memory")
    for key in ("duration", "sample_interval", "speed", "reclaim_after"):
        if key in data and not data[key] > 0:
            raise ScenarioError(f"{where}.{key}: expected a number above 0, got {data[key]!r}")
    hypervisor = _table(data.get("hypervisor", {}), f"{where}.hypervisor", {"journal": bool}, ())
    defaults = data.get("defaults", {})
    guests = tuple(_guest(g, f"guest[{i}]", defaults) for i, g in enumerate(data.get("guest", [])))
    fleets = []
    for i, f in enumerate(data.get("fleet", [])):
        fleet, members = _fleet(f, f"fleet[{i}]", defaults)
        fleets.append(fleet)
        guests += tuple(members)
    names = [g.name for g in guests]
    if len(set(names)) != len(names):
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ScenarioError(f"{where}: guest names must be unique, got {twice[:10]} twice")
    fleet_names = frozenset(f.name for f in fleets)
    if len(fleet_names) != len(fleets) or fleet_names & set(names):
        raise ScenarioError(f"{where}: a fleet's name must differ from every other fleet's and every guest's")
    devices = tuple(_device(d, f"device[{i}]") for i, d in enumerate(data.get("device", [])))
    steps = [_step(s, f"timeline[{i}]", fleet_names) for i, s in enumerate(data.get("timeline", []))]
    steps += [Step(float(g.sticky_at), Action.BEHAVE, g.name, keys=(("stuck", True),)) for g in guests if g.sticky_at is not None]
    timeline = tuple(sorted(steps, key=lambda s: s.at))
    expectations = tuple(_expectation(e, f"expect[{i}]") for i, e in enumerate(data.get("expect", [])))
    processes = set(names) | {d.process for d in devices} | {"irqbus", "hypervisor"}
    for i, step in enumerate(timeline):
        if step.target in fleet_names:
            if step.action not in FLEET_ACTIONS:
                raise ScenarioError(f"timeline[{i}]: a fleet ({step.target!r}) can be {', '.join(FLEET_ACTIONS)} as a whole, not {step.action}: name one of its guests")
            continue
        if step.target not in processes:
            raise ScenarioError(f"timeline[{i}].target: {step.target!r} is not a guest, a fleet, a device (GUEST.DEVICE), irqbus or hypervisor")
        if step.target == "hypervisor" and step.action not in PROCESS_ACTIONS:
            raise ScenarioError(f"timeline[{i}]: the hypervisor is a process: it can be {', '.join(PROCESS_ACTIONS)}, not {step.action}")
        if step.action is Action.BEHAVE and step.target not in names:
            raise ScenarioError(f"timeline[{i}].target: 'behave' acts on a guest, not {step.target!r}")
    for i, exp in enumerate(expectations):
        for name in exp.guests:
            if name not in names and name not in fleet_names:
                raise ScenarioError(f"expect[{i}].guests: no guest {name!r} (nor a fleet of that name)")
        if exp.moment is not None and exp.moment > float(data["duration"]):
            raise ScenarioError(f"expect[{i}]: its time ({exp.moment:g} s) is after the scenario's duration ({data['duration']} s)")
        if exp.check is Check.STEP and not any(
            st.action is exp.action and st.target == exp.target and exp.at in (None, st.at) for st in timeline
        ):
            raise ScenarioError(f"expect[{i}]: no timeline step {exp.action} {exp.target}" + (f" at {exp.at:g} s" if exp.at is not None else ""))
    for d in devices:
        if d.guest not in names:
            raise ScenarioError(f"device {d.name!r}: no guest {d.guest!r}")
    irqbus = data.get("irqbus", bool(devices) or any(g.devices for g in guests))
    if devices and not irqbus:
        raise ScenarioError(f"{where}: devices need irqbus = true")
    if not irqbus and any(e.check in {Check.LINE_DISABLED, Check.LINE_ENABLED} for e in expectations):
        raise ScenarioError(f"{where}: interrupt expectations need irqbus = true")
    return Scenario(
        name=data["name"], description=data.get("description", ""), memory=data["memory"], duration=float(data["duration"]),
        guests=guests, devices=devices, timeline=timeline, expectations=expectations, irqbus=irqbus,
        sample_interval=float(data.get("sample_interval", 0.1)), path=path, speed=float(data.get("speed", 1.0)),
        reclaim_after=float(data["reclaim_after"]) if "reclaim_after" in data else None,
        journal=hypervisor.get("journal", True), fleets=tuple(fleets),
    )


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ScenarioError(f"{path}: {err}") from None
    return parse(data, path)
