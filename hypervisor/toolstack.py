"""The toolstack's side of the admin endpoint: xl-like commands and how they print."""

from __future__ import annotations

import math
from typing import Any

from wire.client import RpcClient
from wire.security import Security, Server
from wire.extent import PAGE_KIB
from wire.pages import every_page
from wire.shown import for_terminal
from wire.sizes import pages_to_mib


class Toolstack:
    def __init__(self, endpoint: str, timeout: float = 1.0, retries: int = 2, security: Security | None = None) -> None:
        """`security`: whose key to call with (None: the process's, wire.security.current())."""
        self.client = RpcClient(endpoint, server=Server.HYPERVISOR, timeout=timeout, retries=retries, security=security)

    def close(self) -> None:
        self.client.close()

    def list(self) -> list[dict[str, Any]]:
        """Every domain, read page by page."""
        return every_page(self.client.call, "list", "domains")["domains"]

    def snapshot(self) -> dict[str, Any]:
        """The pool (`total_pages`, `free_pages`) and every domain at one instant, page by page."""
        first = self.client.call("snapshot")
        return every_page(self.client.call, "snapshot", "domains", {"snapshot": first["snapshot"]}, first=first)

    def info(self) -> dict[str, Any]:
        return self.client.call("info")

    def mem_set(self, domain: int | str, target_pages: int) -> dict[str, Any]:
        return self.client.call("mem_set", {"domain": domain, "target_pages": target_pages})

    def mem_max(self, domain: int | str, max_pages: int, *, domctl: bool = False) -> dict[str, Any]:
        """`xl mem-max`: libxl_domain_setmaxmem, which refuses a max below the domain's target;
        `domctl=True` is the bare XEN_DOMCTL_max_mem, which takes any max (see docs/protocol.md)."""
        args: dict[str, Any] = {"domain": domain, "max_pages": max_pages}
        if not domctl:
            args["refuse_below_target"] = True
        return self.client.call("mem_max", args)

    def destroy(self, domain: int | str) -> dict[str, Any]:
        return self.client.call("destroy", {"domain": domain})

    def on_crash(self, domain: int | str, action: str) -> dict[str, Any]:
        """What the host does once the domain's guest falls silent: `destroy` or `preserve`."""
        return self.client.call("on_crash", {"domain": domain, "on_crash": action})

    def guest_set(self, domain: int | str, keys: dict[str, Any]) -> dict[str, Any]:
        """Control keys for a running guest (wire/control.py)."""
        return self.client.call("guest_set", {"domain": domain, "keys": keys})

    def audit(self) -> dict[str, Any]:
        return self.client.call("audit")


def figure(value: Any) -> str:
    """A driver statistic as printed: '-' when not reported, '?' when not a number."""
    if value is None:
        return "-"
    if type(value) is int:
        return str(value)
    if type(value) is float and math.isfinite(value):
        return f"{value:g}"
    return "?"


def format_list(domains: list[dict[str, Any]]) -> str:
    """xl list's table; every peer's text escaped for the terminal."""
    header = f"{'Name':<20} {'ID':>5} {'Mem':>7} {'Target':>7} {'MaxMem':>7} {'State':<12} {'Balloon':<13} {'Delay':>5} {'Retry':>5}"
    lines = [header]
    for d in domains:
        balloon = d.get("balloon") or {}
        lines.append(
            f"{for_terminal(d['name'])[:20]:<20} {d['domid']:>5} {pages_to_mib(d['current_pages']):>7} "
            f"{pages_to_mib(d['target_pages']):>7} {pages_to_mib(d['max_pages']):>7} {for_terminal(d['state']):<12} "
            f"{for_terminal(balloon.get('state', '-')):<13} {figure(balloon.get('schedule_delay')):>5} "
            f"{figure(balloon.get('retry_count')):>5}"
        )
    return "\n".join(lines)


def format_info(info: dict[str, Any]) -> str:
    rows = [
        ("total_memory", f"{pages_to_mib(info['total_pages'])} MiB ({info['total_pages']} pages)"),
        ("free_memory", f"{pages_to_mib(info['free_pages'])} MiB ({info['free_pages']} pages)"),
        ("allocated_memory", f"{pages_to_mib(info['allocated_pages'])} MiB ({info['allocated_pages']} pages)"),
        ("page_size", f"{PAGE_KIB} KiB"),
        ("nr_domains", str(info["domains"])),
    ]
    return "\n".join(f"{name:<20}: {value}" for name, value in rows)


def format_snapshot(snap: dict[str, Any]) -> str:
    """The pool's figures over xl list's table, all of one instant."""
    owned = sum(d["current_pages"] for d in snap["domains"])
    head = (
        f"snapshot {snap['snapshot']}: total {pages_to_mib(snap['total_pages'])} MiB, free {pages_to_mib(snap['free_pages'])} MiB, "
        f"domains {pages_to_mib(owned)} MiB ({snap['free_pages']} + {owned} = {snap['free_pages'] + owned} of {snap['total_pages']} pages)"
    )
    return head + "\n" + format_list(snap["domains"])
