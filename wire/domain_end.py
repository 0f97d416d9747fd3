"""Why a guest's domain is gone, as the hypervisor tells the guest (and both sides read).

A guest that gets `ESRCH` or a `destroyed` / `crashed` event learns which of these it was, and
its exit status follows from it (guest/cli.py GuestExit): a domain the toolstack destroyed ended
as asked; one the host reclaimed or kept as crashed ended because the host gave up on it.
"""

from __future__ import annotations

import enum


class DomainEnd(enum.StrEnum):
    DESTROYED = "destroyed"  # the toolstack destroyed it (`destroy`)
    RECLAIMED = "reclaimed"  # silent past --reclaim-after, on_crash=destroy: destroyed by the host
    CRASHED = "crashed"  # silent past --reclaim-after, on_crash=preserve: kept for inspection, not the guest's any more


class OnCrash(enum.StrEnum):
    """What the host does with a domain whose guest fell silent (xl.cfg's on_crash actions that
    need no restart: tools/xl/xl_vmcontrol.c handle_domain_death; xl's default is destroy,
    tools/xl/xl_parse.c parse_config_data)."""

    DESTROY = "destroy"  # LIBXL_ACTION_ON_SHUTDOWN_DESTROY: libxl_domain_destroy, its pages return
    PRESERVE = "preserve"  # LIBXL_ACTION_ON_SHUTDOWN_PRESERVE: left as it is, for `destroy` to free


def parse_domain_end(value: object) -> DomainEnd | None:
    """A `reason` from the wire; None when absent or not one this side knows."""
    try:
        return DomainEnd(value) if isinstance(value, str) else None
    except ValueError:
        return None
