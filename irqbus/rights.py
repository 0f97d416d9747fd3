"""Who may do what on irqbus (docs/protocol.md, "Rights"), decided on the key a request came
with (wire.gate.Peer), never on anything the request says about itself.

Every check runs before the operation touches anything, and a refusal is EACCES naming the
key (its first 8 characters) and what would grant the right. On an --insecure server every
peer is wire.gate.INSECURE, which holds every role: nothing is refused here.
"""

from __future__ import annotations

from irqbus.machine import Device, GuestMachine
from irqbus.owners import Owners
from wire.errors import ErrorCode, WireError
from wire.gate import Peer
from wire.identity import key_of
from wire.keys import Role

_AUTHORIZE = "ballonet keys authorize NAME --role"


def refused(peer: Peer, what: str, grant: str) -> WireError:
    return WireError(ErrorCode.EACCES, f"key '{peer.short()}' {what}: {grant}")


def require_hypervisor(peer: Peer, op: str) -> None:
    """`send_virq` and `owners`: what only the hypervisor knows or may say."""
    if not peer.has(Role.HYPERVISOR):
        raise refused(peer, "is not the hypervisor's key", f"only the hypervisor sends '{op}' ({_AUTHORIZE} hypervisor)")


def require_toolstack(peer: Peer, what: str, grant: str) -> None:
    if not peer.has(Role.TOOLSTACK):
        raise refused(peer, "is not a toolstack key", f"{what} is for toolstack keys only{grant} ({_AUTHORIZE} toolstack)")


def attach_owner(peer: Peer, name: str, domid: int, owners: Owners) -> str | None:
    """Whether `peer` may attach a guest session as `name` for `domid`; the key the session is
    then attached as owner with (None: by the toolstack's right, which `owners` never takes
    away, though a key that loses the toolstack role loses the session's use: IrqBus._session).

    The name too must be the domain's, as the hypervisor registered it (when it said: an
    `owners` entry without a name leaves it unchecked): else a key that owns domain 7 could
    attach as `db` before db does, lock db out and take the devices plugged onto `db`.

    EAGAIN while irqbus has not heard which key owns the domain: a guest attaches right after
    it registered, and the hypervisor's word may be a moment behind it."""
    if peer.has(Role.TOOLSTACK):
        return None
    owner = owners.of(domid)
    if owner is None:
        raise WireError(ErrorCode.EAGAIN, f"irqbus has not heard from the hypervisor which key owns domain {domid} yet; retry shortly")
    if owner != peer.key:
        raise refused(peer, f"does not own domain {domid}",
                      "a guest session is attached with the key that registered its domain at the hypervisor, or a toolstack key")
    registered = owners.name_of(domid)
    if registered is not None and registered != name:
        raise refused(peer, f"may not attach as guest {name!r}: domain {domid} was registered under another name",
                      "a guest attaches under the name it registered its domain with at the hypervisor, or with a toolstack key")
    return peer.key


def may_replace(peer: Peer, machine: GuestMachine, owner: str | None, name: str, domid: int) -> None:
    """An attach replaces the session of a guest of the same name or domid (one that died
    without detaching): only its own, or one of a domain nobody else owns. The refusal
    repeats the caller's own name and domid, never the other session's."""
    if peer.has(Role.TOOLSTACK) or machine.owner_key == peer.key or key_of(machine.client) == peer.key or owner in (None, peer.key):
        return
    raise refused(peer, f"may not replace the guest attached as {name!r} or for domain {domid}: another key owns it",
                  "attach under your own domain's name, or with a toolstack key")


def device_key_for(peer: Peer, machine: GuestMachine) -> bool:
    """Whether `peer` is a device key whose scope includes `machine`'s domid (empty: any)."""
    scope = peer.device_scope
    return scope is not None and peer.has(Role.DEVICE) and (not scope or machine.domid in scope)


def scope_allows(peer: Peer, domid: int | None) -> bool:
    """Whether `peer` is a device key that may be told about guest `domid`, before the guest is
    looked up: one whose scope includes it (empty: any guest), or any device key when irqbus
    knows no guest by the caller's name (None: neither attached nor named by the hypervisor),
    as a scoped device process started before its guest registered must be told to wait.
    That answer is all a device key can learn of a guest outside its scope: that no guest of
    that name is known, where a known one is refused."""
    scope = peer.device_scope
    return scope is not None and peer.has(Role.DEVICE) and (not scope or domid is None or domid in scope)


def not_a_device_key_for(peer: Peer, ref: int | str) -> WireError:
    return refused(peer, f"is not a device key for guest {ref}",
                   f"{_AUTHORIZE} device [--guest DOMID], or attach it with a toolstack key")


def attach_device_key(peer: Peer, machine: GuestMachine, existing: Device | None, named: str | None, ref: int | str) -> str | None:
    """The key the device will be driven by, if `peer` may plug it into `machine` (and `named`
    is the toolstack's choice of another key). An existing device keeps its key unless the
    toolstack names another, or it has none yet (its guest declared it: `program_msi`).
    `ref`: the guest as the caller named it, the only name a refusal repeats."""
    if peer.has(Role.TOOLSTACK):
        if named is not None:
            return named
        return existing.key if existing is not None else peer.key
    if named is not None:
        raise refused(peer, "is not a toolstack key", f"only the toolstack names the key that drives a device ('key') ({_AUTHORIZE} toolstack)")
    if not device_key_for(peer, machine):
        raise not_a_device_key_for(peer, ref)
    if existing is not None and existing.key not in (None, peer.key):
        raise refused(peer, f"does not drive device {existing.name}: another key plugged it in",
                      "unplug it with that key or a toolstack key first")
    return peer.key


def require_driver(peer: Peer, machine: GuestMachine, device: Device, ref: int | str, op: str) -> None:
    """raise, lower, pulse, msi, detach_device, locate of a device: the toolstack, or the key
    the device was plugged in with while it is a device key for that guest (a revoked key
    loses the right at its next request). A device its guest declared (`program_msi`, as
    after an irqbus restart, before its device process plugs it in again) has no key yet:
    any device key for the guest may drive it, and the first that does keeps it (the caller
    records it). `ref`: the guest as the caller named it; a refusal never says which guest
    the device is on."""
    if peer.has(Role.TOOLSTACK):
        return
    if device.key is None:
        if device_key_for(peer, machine):
            return
        raise not_the_driver(peer, device.name, op)
    if device.key != peer.key:
        raise not_the_driver(peer, device.name, op)
    if not device_key_for(peer, machine):
        raise no_longer_a_device_key(peer, ref)


def not_the_driver(peer: Peer, device: str, op: str) -> WireError:
    """The same words whether the device is plugged in, and where, or not."""
    return refused(peer, f"does not drive device {device}",
                   f"'{op}' is for the key that plugged the device in (irqbus attach --device-key), or a toolstack key")


def no_longer_a_device_key(peer: Peer, ref: int | str) -> WireError:
    """For the key the device was plugged in with, once it lost the grant (or its scope)."""
    return refused(peer, f"is no longer a device key for guest {ref}", f"{_AUTHORIZE} device [--guest DOMID]")


def require_viewer(peer: Peer, machine: GuestMachine | None, owner: str | None, ref: int | str, op: str) -> None:
    """`show` or `interrupts` of one guest: the toolstack, or that guest's own key. `machine`
    None: no such guest is attached, which only the toolstack is told (ESRCH, by the caller);
    anyone else gets the same refusal whether the guest exists or not."""
    if peer.has(Role.TOOLSTACK) or (machine is not None and peer.key is not None and peer.key in (owner, machine.owner_key)):
        return
    raise refused(peer, f"does not own guest {ref}",
                  f"'{op}' of a guest is for its own key or a toolstack key ({_AUTHORIZE} toolstack)")
