"""Scenario files (TOML): the host, its guests and devices, a timeline, and what must hold.

Every key is checked when the file is loaded, with a message that names the key, so a typo
fails before any process starts.
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


PROCESS_ACTIONS = (Action.KILL, Action.STOP, Action.START, Action.RESTART)


class Check(enum.StrEnum):
    AT_TARGET = "at-target"  # every named guest within `pages` of its target by time `by`, and still at `by`
    OFF_TARGET = "off-target"  # every named guest still more than `pages` from its target at time `by`
    AUDIT = "audit"  # `hypervisor audit` is clean at the end
    EXITED = "exited"  # the named processes are gone at the end (e.g. nothing left running); `status`: with that exit status
    LINE_DISABLED = "line-disabled"  # the named guests' genirq disabled `irq` (nobody cared)
    LINE_ENABLED = "line-enabled"  # ...or did not


@dataclass(frozen=True)
class GuestSpec:
    name: str
    memory: str
    maxmem: str | None = None
    workload: str | None = None
    behaviour: str = "normal"  # normal | slow:PAGES_PER_S | stuck | stuck-every:SECONDS | slow:N+stuck-every:S
    legacy: bool = False
    max_retries: int = 0
    retry_delay: float = 1.0
    max_retry_delay: float = 32.0
    heartbeat: float = 0.2
    memory_interrupt: bool = True  # bind the hypervisor's memory-available interrupt (with irqbus)
    devices: tuple[str, ...] = ()  # --device specs, e.g. "nic0:pin=5"
    args: tuple[str, ...] = ()  # further `guest run` flags, passed through

    def cli_args(self, hypervisor: str, irqbus: str | None) -> list[str]:
        out = ["run", "--name", self.name, "--memory", self.memory, "--hypervisor", hypervisor]
        out += ["--maxmem", self.maxmem] if self.maxmem else []
        out += ["--workload", self.workload] if self.workload else []
        for part in self.behaviour.split("+"):
            kind, _, value = part.partition(":")
            out += {"normal": [], "stuck": ["--stuck"], "slow": ["--balloon-rate", value], "stuck-every": ["--stuck-every", value]}[kind]
        out += ["--legacy-hard-limit"] if self.legacy else []
        out += ["--max-retries", str(self.max_retries), "--retry-delay", str(self.retry_delay)]
        out += ["--max-retry-delay", str(self.max_retry_delay), "--heartbeat", str(self.heartbeat)]
        if irqbus:
            out += ["--irqbus", irqbus]
            out += [] if self.memory_interrupt else ["--no-memory-interrupt"]
            for device in self.devices:
                out += ["--device", device]
        return out + list(self.args)


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


@dataclass(frozen=True)
class Expectation:
    check: Check
    guests: tuple[str, ...] = ()  # empty: every guest
    by: float | None = None
    pages: int = 0
    irq: int | None = None
    status: int | None = None  # `exited`: the exit status each named guest must have ended with


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

    def guest(self, name: str) -> GuestSpec:
        return next(g for g in self.guests if g.name == name)

    def with_guests(self, **changes: Any) -> Scenario:
        """The same scenario with every guest changed alike (e.g. legacy=True, Linux timings)."""
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
_GUEST_KEYS = {
    "name": str, "memory": str, "maxmem": str, "workload": str, "behaviour": str, "legacy": bool,
    "max_retries": int, "retry_delay": _NUM, "max_retry_delay": _NUM, "heartbeat": _NUM, "devices": list, "args": list,
    "memory_interrupt": bool,
}


def _guest(data: dict[str, Any], where: str, defaults: dict[str, Any]) -> GuestSpec:
    merged = {**defaults, **data}
    _table(merged, where, _GUEST_KEYS, ("name", "memory"))
    for key in ("memory", "maxmem", "workload"):
        if key in merged:
            _size(merged[key], f"{where}.{key}")
    for part in merged.get("behaviour", "normal").split("+"):
        kind, _, value = part.partition(":")
        if kind not in {"normal", "stuck", "slow", "stuck-every"} or (kind in {"slow", "stuck-every"}) != bool(value):
            raise ScenarioError(
                f"{where}.behaviour: expected normal, stuck, slow:PAGES_PER_S, stuck-every:SECONDS, or slow:N+stuck-every:S"
            )
    for key in ("devices", "args"):
        if not all(isinstance(x, str) for x in merged.get(key, [])):
            raise ScenarioError(f"{where}.{key}: expected a list of strings")
        if key in merged:
            merged[key] = tuple(merged[key])
    return GuestSpec(**merged)


def _device(data: dict[str, Any], where: str) -> DeviceSpec:
    _table(
        data, where,
        {"name": str, "guest": str, "rate": _NUM, "pin": int, "level": bool, "msi": bool, "count": int, "burst": int},
        ("name", "guest", "rate"),
    )
    if ("pin" in data) == bool(data.get("msi")):
        raise ScenarioError(f"{where}: give either 'pin' or 'msi = true'")
    return DeviceSpec(**data)


def _step(data: dict[str, Any], where: str) -> Step:
    _table(data, where, {"at": _NUM, "action": str, "target": str, "size": str}, ("at", "action", "target"))
    try:
        action = Action(data["action"])
    except ValueError:
        raise ScenarioError(f"{where}.action: expected one of {[a.value for a in Action]}") from None
    if action in {Action.MEM_SET, Action.MEM_MAX}:
        if "size" not in data:
            raise ScenarioError(f"{where}: '{action}' needs a 'size'")
        _size(data["size"], f"{where}.size")
    return Step(float(data["at"]), action, data["target"], data.get("size"))


def _expectation(data: dict[str, Any], where: str) -> Expectation:
    _table(data, where, {"check": str, "guests": list, "by": _NUM, "pages": int, "irq": int, "status": int}, ("check",))
    try:
        check = Check(data["check"])
    except ValueError:
        raise ScenarioError(f"{where}.check: expected one of {[c.value for c in Check]}") from None
    if check in {Check.AT_TARGET, Check.OFF_TARGET} and "by" not in data:
        raise ScenarioError(f"{where}: '{check}' needs 'by' (seconds after the timeline starts)")
    if check in {Check.LINE_DISABLED, Check.LINE_ENABLED} and ("irq" not in data or not data.get("guests")):
        raise ScenarioError(f"{where}: '{check}' needs 'irq' and 'guests'")
    if "status" in data and check is not Check.EXITED:
        raise ScenarioError(f"{where}: 'status' belongs to 'exited' only")
    by = float(data["by"]) if "by" in data else None
    return Expectation(check, tuple(data.get("guests", ())), by, data.get("pages", 0), data.get("irq"), data.get("status"))


def parse(data: dict[str, Any], path: Path | None = None) -> Scenario:
    where = str(path or "scenario")
    _table(
        data, where,
        {"name": str, "description": str, "memory": str, "duration": _NUM, "irqbus": bool, "sample_interval": _NUM,
         "defaults": dict, "guest": list, "device": list, "timeline": list, "expect": list},
        ("name", "memory", "duration", "guest"),
    )
    _size(data["memory"], f"{where}.memory")
    defaults = data.get("defaults", {})
    guests = tuple(_guest(g, f"guest[{i}]", defaults) for i, g in enumerate(data["guest"]))
    names = [g.name for g in guests]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}: guest names must be unique, got {names}")
    devices = tuple(_device(d, f"device[{i}]") for i, d in enumerate(data.get("device", [])))
    timeline = tuple(sorted((_step(s, f"timeline[{i}]") for i, s in enumerate(data.get("timeline", []))), key=lambda s: s.at))
    expectations = tuple(_expectation(e, f"expect[{i}]") for i, e in enumerate(data.get("expect", [])))
    processes = set(names) | {d.process for d in devices} | {"irqbus", "hypervisor"}
    for i, step in enumerate(timeline):
        if step.target not in processes:
            raise ScenarioError(f"timeline[{i}].target: {step.target!r} is not a guest, a device (GUEST.DEVICE), irqbus or hypervisor")
        if step.target == "hypervisor" and step.action not in PROCESS_ACTIONS:
            raise ScenarioError(f"timeline[{i}]: the hypervisor is a process: it can be {', '.join(PROCESS_ACTIONS)}, not {step.action}")
    for i, exp in enumerate(expectations):
        for name in exp.guests:
            if name not in names:
                raise ScenarioError(f"expect[{i}].guests: no guest {name!r}")
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
        sample_interval=float(data.get("sample_interval", 0.1)), path=path,
    )


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ScenarioError(f"{path}: {err}") from None
    return parse(data, path)
