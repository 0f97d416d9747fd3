"""The chaos benchmark's invariants, as pure functions over figures gathered from the host.

- settled: every live guest's domain runs, its own report agrees with the books, and (unless
  it is the stuck one) it holds its target with its driver done;
- the books: `audit` balances, each guest instance still has the domain it registered (the
  same domid, registered once: a hypervisor restart must not cost it its domain), and its view of its pages (its heartbeat's balloon
  report, and the sum of its log: the pages it registered with, plus every grant, minus every
  release) equals the pages the hypervisor books to its domain. A retried request executed
  twice shows as books above the log's sum: the guest logs one grant per request, whatever
  the number of tries;
- interrupts: over a window after recovery, each device's driver handles interrupts and the
  line's unhandled count (interrupts no action claimed) does not grow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wire.extent import PAGE_KIB


@dataclass
class Ledger:
    """One guest instance's own account of its pages, from its debug log."""

    registered_pages: int = 0
    domid: int | None = None  # the domain it registered (latest registration)
    registrations: int = 0  # more than one: it lost its domain and registered a new one
    granted: int = 0
    released: int = 0
    requests: int = 0
    last_logged_pages: int | None = None  # current_pages on its latest grant or release line
    repeated_seqs: list[int] = field(default_factory=list)  # a seq logged twice: one reply applied twice

    @property
    def pages(self) -> int:
        return self.registered_pages + self.granted - self.released


def ledger_from_log(events: Iterable[dict[str, Any]]) -> Ledger | None:
    """The account since the instance's latest registration (None before it registered)."""
    ledger: Ledger | None = None
    seen: set[int] = set()
    registrations = 0
    for event in events:
        name = event.get("event")
        if name == "registered":
            registrations += 1
            ledger, seen = Ledger(int(event["pages"]), event.get("domid"), registrations), set()
        elif ledger is None or name not in ("increase", "decrease"):
            continue
        else:
            seq = event.get("seq")
            if seq in seen:
                ledger.repeated_seqs.append(seq)
            seen.add(seq)
            ledger.requests += 1
            if name == "increase":
                ledger.granted += int(event["granted"])
            else:
                ledger.released += int(event["released"])
            ledger.last_logged_pages = int(event["current_pages"])
    return ledger


def _reported_pages(domain: dict[str, Any]) -> int | None:
    balloon = domain.get("balloon") or {}
    kb = balloon.get("current_kb")
    return kb // PAGE_KIB if isinstance(kb, int) else None


def settle_problems(domains: dict[str, dict[str, Any]], live: dict[str, bool]) -> list[str]:
    """Why the host has not settled yet (empty: settled). `live`: each running guest's name,
    True for the stuck one (it never moves, so only its report is waited for)."""
    problems = []
    for name, stuck in sorted(live.items()):
        domain = domains.get(name)
        if domain is None:
            problems.append(f"{name}: no domain")
            continue
        if domain.get("state") != "running":
            problems.append(f"{name}: {domain.get('state')}")
        books, reported = domain["current_pages"], _reported_pages(domain)
        if reported != books:
            problems.append(f"{name}: reports {reported} pages, booked {books}")
        state = (domain.get("balloon") or {}).get("state")
        if not stuck and (books != domain["target_pages"] or state != "done"):
            problems.append(f"{name}: {books} of {domain['target_pages']} pages, driver {state}")
    return problems


def book_violations(
    audit: dict[str, Any] | None,
    domains: dict[str, dict[str, Any]],
    ledgers: dict[str, Ledger | None],
) -> list[str]:
    """What is wrong with the books once settled: `audit` (None: it did not answer), and each
    live guest's own view (its report, its log's sum) against the pages booked to it."""
    out = []
    if audit is None:
        out.append("audit: no answer")
    elif not audit.get("ok"):
        out.append(f"audit: the books do not balance: {audit.get('problems')}")
    for name, ledger in sorted(ledgers.items()):
        domain = domains.get(name)
        if domain is None:
            out.append(f"{name}: running, but the hypervisor books no domain to it")
            continue
        books = domain["current_pages"]
        reported = _reported_pages(domain)
        if reported != books:
            out.append(f"{name}: its report says {reported} pages, the books {books}")
        if ledger is None:
            out.append(f"{name}: its log has no registration")
            continue
        if ledger.domid != domain.get("domid"):
            out.append(f"{name}: registered as domain {ledger.domid}, the books have it as {domain.get('domid')}")
        if ledger.registrations > 1:
            out.append(f"{name}: registered {ledger.registrations} times (it lost its domain and took a new one)")
        if ledger.pages != books:
            out.append(
                f"{name}: its log accounts for {ledger.pages} pages (registered {ledger.registered_pages}, "
                f"granted {ledger.granted}, released {ledger.released} in {ledger.requests} requests), "
                f"the books {books}" + (": a request executed twice?" if books > ledger.pages else "")
            )
        if ledger.last_logged_pages is not None and ledger.last_logged_pages != ledger.pages:
            out.append(f"{name}: its last grant or release left {ledger.last_logged_pages} pages, its log's sum is {ledger.pages}")
        if ledger.repeated_seqs:
            out.append(f"{name}: seqs logged twice: {ledger.repeated_seqs[:10]}")
    return out


@dataclass(frozen=True)
class IrqFigures:
    """One device's line as its guest's /proc/interrupts shows it."""

    irq: int
    count: int  # interrupts the line delivered
    handled: int  # of them, claimed by the device's driver
    claimed: int  # of them, claimed by any action on the line

    @property
    def unclaimed(self) -> int:
        return self.count - self.claimed


def irq_figures(rows: Iterable[dict[str, Any]], device: str) -> IrqFigures | None:
    """The row whose actions include the device's driver (None: no such driver)."""
    for row in rows:
        actions = row.get("actions") or []
        mine = [a for a in actions if a.get("name") == device]
        if mine:
            return IrqFigures(row["irq"], row["count"], mine[0]["handled"], sum(a["handled"] for a in actions))
    return None


def interrupt_violations(device: str, guest: str, before: IrqFigures | None, after: IrqFigures | None) -> list[str]:
    """Over the window from `before` to `after`: the driver handled some, and none went unclaimed."""
    where = f"device {device} on {guest}"
    if before is None or after is None:
        return [f"{where}: its guest has no driver for it"]
    if after.irq != before.irq:
        return []  # the guest was started again in between: no window to judge
    out = []
    if after.handled <= before.handled:
        out.append(f"{where}: irq {after.irq}: no interrupt handled in the window ({after.count - before.count} delivered)")
    grown = after.unclaimed - before.unclaimed
    if grown > 0:
        out.append(f"{where}: irq {after.irq}: {grown} of {after.count - before.count} interrupts unhandled in the window")
    return out
