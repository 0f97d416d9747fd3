"""Who is who on the bus: attached guests (by name, domid and session) and which guest each
device is plugged into.

Device names are host-wide, like a PCI address: a device is passed through to exactly one
guest, so naming it together with another guest is a refusal (EPERM), never a delivery there.
That is what keeps one guest's interrupts from ever reaching another.
"""

from __future__ import annotations

from irqbus.machine import Delivery, Device, DeviceKind, GuestMachine
from wire.errors import ErrorCode, WireError
from wire.names import domain_ref_text

MAX_GUESTS = 1024
MAX_DEVICES = 4096


class Router:
    def __init__(self) -> None:
        self.guests: dict[str, GuestMachine] = {}
        self._by_client: dict[str, GuestMachine] = {}
        self._owner: dict[str, GuestMachine] = {}  # device name -> the guest it is plugged into

    def __len__(self) -> int:
        return len(self.guests)

    # -- guests ------------------------------------------------------------------------------------

    def attach(self, name: str, domid: int, client: str, now: float) -> tuple[GuestMachine, list[GuestMachine]]:
        """Attach a guest's session; returns the machine and the stale ones it replaced.

        A retried attach of the same session is a no-op. A guest of the same name or domid
        from another session replaces the old one: domids are unique among live domains, so the
        old entry belongs to a guest that died without detaching.
        """
        existing = self.guests.get(name)
        if existing is not None and existing.client == client and existing.domid == domid:
            existing.last_seen = now
            return existing, []
        mine = self._by_client.get(client)
        if mine is not None and mine.name != name:
            raise WireError(ErrorCode.EEXIST, f"this client is attached as guest {mine.name}; detach first")
        stale = self.replaced_by(name, domid, client)
        if not stale and len(self.guests) >= MAX_GUESTS:
            raise WireError(ErrorCode.ENOSPC, f"{MAX_GUESTS} guests are attached already")
        for old in stale:
            self.detach(old)
        machine = GuestMachine(name, domid, client, now)
        self.guests[name] = machine
        self._by_client[client] = machine
        return machine, stale

    def replaced_by(self, name: str, domid: int, client: str) -> list[GuestMachine]:
        """The sessions an attach of `name`/`domid` by `client` would replace (none for a retry)."""
        existing = self.guests.get(name)
        if existing is not None and existing.client == client and existing.domid == domid:
            return []
        return [m for m in self.guests.values() if m.name == name or m.domid == domid]

    def detach(self, machine: GuestMachine) -> list[str]:
        """Remove a guest with every device plugged into it; returns the devices' names."""
        names = list(machine.devices)
        for device in names:
            self._owner.pop(device, None)
        self.guests.pop(machine.name, None)
        if self._by_client.get(machine.client) is machine:
            del self._by_client[machine.client]
        return names

    def resolve(self, ref: int | str) -> GuestMachine:
        """A guest by name or domid, as the CLI names it; ASCII digits are a domid (no guest's
        name is a number, so a name is looked up first)."""
        machine = self.guests.get(ref) if isinstance(ref, str) else None
        if machine is None:
            domid = domain_ref_text(ref) if isinstance(ref, str) else ref
            if isinstance(domid, int):
                machine = next((m for m in self.guests.values() if m.domid == domid), None)
        if machine is None:
            raise WireError(ErrorCode.ESRCH, f"no guest {ref!r} is attached to irqbus")
        return machine

    @staticmethod
    def names(machine: GuestMachine, ref: int | str) -> bool:
        """Whether `ref` (a name or domid, as `resolve` takes it) names `machine`."""
        if type(ref) is str:
            return ref == machine.name or domain_ref_text(ref) == machine.domid
        return ref == machine.domid

    def session(self, client: str) -> GuestMachine:
        """The guest this client attached; guest operations act on it only."""
        machine = self._by_client.get(client)
        if machine is None:
            raise WireError(ErrorCode.ESRCH, "this client has not attached a guest; send 'attach' first")
        return machine

    def is_guest(self, client: str) -> bool:
        return client in self._by_client

    # -- devices -----------------------------------------------------------------------------------

    def device(self, machine: GuestMachine, name: str, ref: int | str | None = None) -> Device:
        """`machine`'s device `name`. `ref`: the guest as the caller named it, which the
        refusals repeat (default: its name, for its own session); they never name another
        guest, nor the name or domid behind the caller's `ref`."""
        owner = self._owner.get(name)
        shown = machine.name if ref is None else ref
        if owner is None:
            raise WireError(ErrorCode.ESRCH, f"no device {name!r} is attached (to guest {shown} or any other)")
        if owner is not machine:
            raise WireError(ErrorCode.EPERM, f"device {name!r} is attached to another guest, not to {shown}")
        return machine.devices[name]

    def owner(self, name: str) -> GuestMachine | None:
        return self._owner.get(name)

    def plug(self, machine: GuestMachine, name: str, kind: DeviceKind, pin: int | None, level: bool) -> tuple[Device, bool]:
        """Attach a device; attaching it again as it is returns it (created=False)."""
        owner = self._owner.get(name)
        if owner is not None and owner is not machine:
            raise WireError(ErrorCode.EBUSY, f"device {name!r} is attached to another guest; detach it there first")
        if owner is machine:
            device = machine.devices[name]
            if not device.matches(kind, pin, level):
                where = f"pin {device.pin} ({device.trigger})" if device.kind is DeviceKind.PIN else "MSI"
                raise WireError(ErrorCode.EBUSY, f"device {name!r} is attached to guest {machine.name} on {where}; detach it first")
            return device, False
        if len(self._owner) >= MAX_DEVICES:
            raise WireError(ErrorCode.ENOSPC, f"{MAX_DEVICES} devices are attached already")
        device = machine.add_device(name, kind, pin, level)
        self._owner[name] = machine
        return device, True

    def unplug(self, machine: GuestMachine, device: Device) -> list[Delivery]:
        del self._owner[device.name]
        return machine.remove_device(device)
