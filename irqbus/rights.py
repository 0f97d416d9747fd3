"""Who may do what on irqbus (docs/protocol.md, "Rights"), decided on the key a request came
with (wire.gate.Peer), never on anything the request says about itself.

Every check runs before the operation touches anything, and a refusal is EACCES naming the
key (its first 8 characters) and what would grant the right. On an --insecure server every
peer is wire.gate.INSECURE, which holds every role: nothing is refused here.
"""

from __future__ import annotations

from irqbus.machine import Device, GuestMachine
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


def attach_owner(peer: Peer, domid: int, owner: str | None) -> str | None:
    """Whether `peer` may attach a guest session for `domid`; the key the session is then
    attached as owner with (None: by the toolstack's right, which `owners` never takes away).

    EAGAIN while irqbus has not heard which key owns the domain: a guest attaches right after
    it registered, and the hypervisor's word may be a moment behind it."""
    if peer.has(Role.TOOLSTACK):
        return None
    if owner is None:
        raise WireError(ErrorCode.EAGAIN, f"irqbus has not heard from the hypervisor which key owns domain {domid} yet; retry shortly")
    if owner != peer.key:
        raise refused(peer, f"does not own domain {domid}",
                      "a guest session is attached with the key that registered its domain at the hypervisor, or a toolstack key")
    return peer.key


def may_replace(peer: Peer, machine: GuestMachine, owner: str | None) -> None:
    """An attach replaces the session of a guest of the same name or domid (one that died
    without detaching): only its own, or one of a domain nobody else owns."""
    if peer.has(Role.TOOLSTACK) or machine.owner_key == peer.key or key_of(machine.client) == peer.key or owner in (None, peer.key):
        return
    raise refused(peer, f"may not replace guest {machine.name} (domain {machine.domid}): another key owns that domain",
                  "attach under your own domain's name, or with a toolstack key")


def device_key_for(peer: Peer, machine: GuestMachine) -> bool:
    """Whether `peer` is a device key whose scope includes `machine`'s domid (empty: any)."""
    scope = peer.device_scope
    return scope is not None and peer.has(Role.DEVICE) and (not scope or machine.domid in scope)


def attach_device_key(peer: Peer, machine: GuestMachine, existing: Device | None, named: str | None) -> str | None:
    """The key the device will be driven by, if `peer` may plug it into `machine` (and `named`
    is the toolstack's choice of another key). An existing device keeps its key unless the
    toolstack names another, or it has none yet (its guest declared it: `program_msi`)."""
    if peer.has(Role.TOOLSTACK):
        if named is not None:
            return named
        return existing.key if existing is not None else peer.key
    if named is not None:
        raise refused(peer, "is not a toolstack key", f"only the toolstack names the key that drives a device ('key') ({_AUTHORIZE} toolstack)")
    if not device_key_for(peer, machine):
        raise refused(peer, f"is not a device key for guest {machine.name} (domain {machine.domid})",
                      f"{_AUTHORIZE} device [--guest {machine.domid}], or attach it with a toolstack key")
    if existing is not None and existing.key not in (None, peer.key):
        raise refused(peer, f"does not drive device {existing.name}: another key plugged it in",
                      "unplug it with that key or a toolstack key first")
    return peer.key


def require_driver(peer: Peer, machine: GuestMachine, device: Device, op: str) -> None:
    """raise, lower, pulse, msi, detach_device, locate of a device: the toolstack, or the key
    the device was plugged in with while it is a device key for that guest (a revoked key
    loses the right at its next request). A device its guest declared (`program_msi`, as
    after an irqbus restart, before its device process plugs it in again) has no key yet:
    any device key for the guest may drive it, and the first that does keeps it (the caller
    records it)."""
    if peer.has(Role.TOOLSTACK):
        return
    if device.key is None:
        if device_key_for(peer, machine):
            return
        raise refused(peer, f"is not a device key for guest {machine.name} (domain {machine.domid})",
                      f"{_AUTHORIZE} device [--guest {machine.domid}]")
    if device.key != peer.key:
        raise refused(peer, f"does not drive device {device.name}",
                      f"'{op}' is for the key that plugged the device in (irqbus attach --device-key), or a toolstack key")
    if not device_key_for(peer, machine):
        raise refused(peer, f"is no longer a device key for guest {machine.name} (domain {machine.domid})",
                      f"{_AUTHORIZE} device [--guest {machine.domid}]")


def require_viewer(peer: Peer, machine: GuestMachine, owner: str | None, op: str) -> None:
    """`show` or `interrupts` of one guest: the toolstack, or that guest's own key."""
    if peer.has(Role.TOOLSTACK) or (peer.key is not None and peer.key in (owner, machine.owner_key)):
        return
    raise refused(peer, f"does not own guest {machine.name} (domain {machine.domid})",
                  f"'{op}' of a guest is for its own key or a toolstack key ({_AUTHORIZE} toolstack)")
