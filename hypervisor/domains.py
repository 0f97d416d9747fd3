"""The domain table: who exists, what each may hold, and Xen's reservation rules.

Pages themselves live in the PagePool; a domain's current size is always read from it, so the
two can never disagree.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from hypervisor.pool import PagePool, PoolError, PoolErrorReason
from wire.domain_end import OnCrash
from wire.errors import ErrorCode, WireError
from wire.extent import Extent, total_pages
from wire.names import domain_ref_text
from wire.operations import MAX_DOMID
from wire.sizes import pages_to_mib

DEFAULT_LIVENESS_S = 10.0


class DomainState(enum.StrEnum):
    RUNNING = "running"  # its guest was heard from recently
    UNRESPONSIVE = "unresponsive"  # no request or heartbeat within the liveness period
    CRASHED = "crashed"  # silent past --reclaim-after with on_crash=preserve: kept, its guest cut off


@dataclass
class Domain:
    domid: int
    name: str
    client: str  # the guest's client id: guest requests act on this domain (DOMID_SELF)
    target_pages: int
    max_pages: int
    created: float
    last_seen: float
    balloon: dict[str, Any] = field(default_factory=dict)
    target_writes: int = 0  # counts mem-set calls, so a guest sees a write of the same value
    control: dict[str, Any] = field(default_factory=dict)  # the guest's control keys (wire/control.py), as set
    balloon_at: float | None = None  # when the guest last reported `balloon` (None: never)
    # While a max_mem below what the domain held is in force: the most it may hold now. It
    # only goes down (Xen's "ratchet", see DomainTable.set_max); None when not over its max.
    over_max_pages: int | None = None
    on_crash: OnCrash = OnCrash.DESTROY  # what the host does once its guest falls silent (--reclaim-after)
    liveness: DomainState = DomainState.RUNNING  # as last reported (Hypervisor.sweep), so each change is told once


class DomainTable:
    def __init__(self, pool: PagePool, liveness_s: float = DEFAULT_LIVENESS_S) -> None:
        self.pool = pool
        self.liveness_s = liveness_s
        self._by_id: dict[int, Domain] = {}
        self._by_name: dict[str, Domain] = {}
        self._by_client: dict[str, Domain] = {}
        self._crashed_by_client: dict[str, Domain] = {}  # preserved domains, by the client cut off from them
        # Domains whose last increase was granted short (not for maxmem), in the order they
        # came short: told when pages free up. Kept apart so a release looks at them only,
        # not at every domain.
        self._short: dict[int, Domain] = {}
        self._next_domid = 1
        # Since when this hypervisor has listened without a break (Hypervisor.sweep moves it on
        # a start and after a stall): a guest's silence is counted from here at the earliest, so
        # a hypervisor that was itself stopped or restarted does not blame its guests for it.
        self.listening_since = -math.inf
        # What a journal (hypervisor/journal.py) must write at its next commit, drained there:
        # domains whose fields changed, and domids destroyed. Marked here, in every method that
        # changes a domain, so any code path is journalled; a change made to a Domain from
        # outside says so with `touch`. `last_seen` alone does not mark: it is a monotonic
        # time, reset on recovery, and writing it per request would cost the hot path.
        self.dirty: set[int] = set()
        self.destroyed: set[int] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def domains(self) -> list[Domain]:
        return sorted(self._by_id.values(), key=lambda d: d.domid)

    def in_creation_order(self) -> list[Domain]:
        """Every domain, oldest first: a sweep's order, without domains()'s sort."""
        return list(self._by_id.values())

    @property
    def next_domid(self) -> int:
        """The domid the next `create` tries first (kept by a journal, so ids are not reused early)."""
        return self._next_domid

    def touch(self, domain: Domain) -> None:
        """`domain` was changed outside this table's methods: journal it at the next commit."""
        self.dirty.add(domain.domid)

    def restore(self, domains: list[Domain], next_domid: int) -> None:
        """Recovery: the domains a journal kept, in an empty table (its pool already rebuilt).
        Raises ValueError on two with one domid, name or client; the caller audits the books
        afterwards. Who was granted short is not journalled (it changes with every grant): each
        guest's domain below its target and its max is taken to be waiting for memory, so it is
        told when pages free up; one that was not loses nothing but a wake-up of its driver, which
        then asks again as on any wake."""
        if self._by_id:
            raise ValueError("restore needs an empty domain table")
        for domain in domains:
            if domain.liveness == DomainState.UNRESPONSIVE:  # a fresh liveness period (last_seen is now): no "back" news
                domain.liveness = DomainState.RUNNING
            indexes = [(self._by_id, domain.domid, "domid"), (self._by_name, domain.name, "name")]
            if domain.liveness != DomainState.CRASHED:  # a crashed domain's guest was cut off (crash())
                indexes.append((self._by_client, domain.client, "client"))
            else:
                self._crashed_by_client[domain.client] = domain
            for index, key, what in indexes:
                if key in index:
                    raise ValueError(f"two domains with {what} {key!r}")
                index[key] = domain  # type: ignore[index]
            if domain.liveness != DomainState.CRASHED and self.pool.owned_pages(domain.domid) < min(domain.target_pages, domain.max_pages):
                self._short[domain.domid] = domain
        self._next_domid = next_domid if 1 <= next_domid <= MAX_DOMID else 1

    def current_pages(self, domain: Domain) -> int:
        return self.pool.owned_pages(domain.domid)

    def silence(self, domain: Domain, now: float) -> float:
        """Seconds the domain's guest has been silent while this hypervisor listened."""
        return now - max(domain.last_seen, self.listening_since)

    def state(self, domain: Domain, now: float) -> DomainState:
        """Unresponsive: silent past the liveness period, counted while this hypervisor listened
        (or, once shown unresponsive, at all: a hypervisor that was stopped meanwhile does not
        make a silent guest look alive again; only its guest's word does)."""
        if domain.liveness == DomainState.CRASHED:
            return DomainState.CRASHED
        if now - domain.last_seen > self.liveness_s and (
            domain.liveness == DomainState.UNRESPONSIVE or self.silence(domain, now) > self.liveness_s
        ):
            return DomainState.UNRESPONSIVE
        return DomainState.RUNNING

    def exists(self, domain: Domain) -> bool:
        return self._by_id.get(domain.domid) is domain

    # --- lookups -------------------------------------------------------------------------

    def find_domid(self, domid: int) -> Domain | None:
        return self._by_id.get(domid)

    def find_client(self, client: str) -> Domain | None:
        return self._by_client.get(client)

    def guest(self, client: str, now: float) -> Domain:
        """The domain of the guest behind `client` (its DOMID_SELF), which was just heard from."""
        domain = self._by_client.get(client)
        if domain is None:
            return self.by_client(client)  # raises ESRCH
        domain.last_seen = now
        return domain

    def by_client(self, client: str) -> Domain:
        domain = self._by_client.get(client)
        if domain is None:
            raise WireError(ErrorCode.ESRCH, "this client has not registered a domain (send 'register' first)")
        return domain

    def resolve(self, ref: int | str) -> Domain:
        """A domain by domid or name, as xl takes either; ASCII digits are a domid."""
        if isinstance(ref, str):
            ref = domain_ref_text(ref)
        domain = self._by_id.get(ref) if isinstance(ref, int) else self._by_name.get(ref)
        if domain is None:
            raise WireError(ErrorCode.ESRCH, f"no domain {ref!r}")
        return domain

    # --- lifecycle -----------------------------------------------------------------------

    def create(
        self, name: str, memory_pages: int, max_pages: int, client: str, now: float, on_crash: OnCrash = OnCrash.DESTROY
    ) -> tuple[Domain, list[Extent]]:
        """Build a domain with all of its initial memory, or nothing at all."""
        if name in self._by_name:
            raise WireError(ErrorCode.EEXIST, f"a domain named {name!r} exists (domid {self._by_name[name].domid})")
        if client in self._by_client:
            raise WireError(ErrorCode.EEXIST, f"this client already registered domain {self._by_client[client].domid}")
        if memory_pages > max_pages:
            raise WireError(ErrorCode.EINVAL, f"memory ({memory_pages} pages) exceeds maxmem ({max_pages} pages)")
        if memory_pages > self.pool.free_pages:
            raise WireError(
                ErrorCode.ENOMEM,
                f"cannot build {name!r}: it needs {memory_pages} pages ({pages_to_mib(memory_pages)} MiB), "
                f"the host has {self.pool.free_pages} free of {self.pool.total_pages}",
            )
        domid = self._allocate_domid()
        domain = Domain(domid, name, client, memory_pages, max_pages, now, now, on_crash=OnCrash(on_crash))
        extents = self.pool.allocate(domid, memory_pages)
        self._by_id[domid] = domain
        self._by_name[name] = domain
        self._by_client[client] = domain
        self.dirty.add(domid)
        return domain, extents

    def destroy(self, domain: Domain) -> int:
        del self._by_id[domain.domid]
        del self._by_name[domain.name]
        if self._by_client.get(domain.client) is domain:  # a crashed domain's guest is cut off already
            del self._by_client[domain.client]
        if self._crashed_by_client.get(domain.client) is domain:
            del self._crashed_by_client[domain.client]
        self._short.pop(domain.domid, None)
        self.dirty.discard(domain.domid)
        self.destroyed.add(domain.domid)
        return self.pool.release_all(domain.domid)

    def crash(self, domain: Domain) -> None:
        """on_crash=preserve: the domain stays, with its pages and its name, for inspection until
        `destroy`, as xl leaves a crashed domain (tools/xl/xl_vmcontrol.c handle_domain_death,
        LIBXL_ACTION_ON_SHUTDOWN_PRESERVE); its guest no longer owns it."""
        if self._by_client.get(domain.client) is domain:
            del self._by_client[domain.client]
        self._crashed_by_client[domain.client] = domain
        self._short.pop(domain.domid, None)
        domain.liveness = DomainState.CRASHED
        self.dirty.add(domain.domid)

    def crashed_of(self, client: str) -> Domain | None:
        """The preserved domain `client`'s guest was cut off from, while it is kept (a journal
        keeps it too, where the tombstone saying so is not kept)."""
        return self._crashed_by_client.get(client)

    def is_guests(self, domain: Domain) -> bool:
        """Whether the domain still belongs to the guest that registered it (not crashed)."""
        return self._by_client.get(domain.client) is domain

    def _allocate_domid(self) -> int:
        for _ in range(MAX_DOMID):
            domid = self._next_domid
            self._next_domid = domid + 1 if domid < MAX_DOMID else 1
            if domid not in self._by_id:
                return domid
        raise WireError(ErrorCode.ENOMEM, "no free domain id")

    # --- reservation (Xen's memory_op, as seen from the guest) ----------------------------

    def increase_reservation(self, domain: Domain, nr_pages: int) -> tuple[list[Extent], int]:
        """Grant min(nr, free, max - current): a partial or empty grant is a normal answer.
        Returns the new extents and how many pages they hold."""
        want = min(nr_pages, max(0, domain.max_pages - self.pool.owned_pages(domain.domid)))
        extents = self.pool.allocate(domain.domid, want)
        granted = total_pages(extents)
        # short because the host is: worth a memory-available notification later (not maxmem)
        if granted < want:
            self._short[domain.domid] = domain
        elif self._short:
            self._short.pop(domain.domid, None)
        return extents, granted

    def decrease_reservation(self, domain: Domain, extents: list[Extent]) -> int:
        """Take back exactly these pages, which must all be the caller's; else change nothing."""
        try:
            released = self.pool.release(domain.domid, extents)
        except PoolError as err:
            code = ErrorCode.EPERM if err.reason is PoolErrorReason.NOT_OWNED else ErrorCode.EINVAL
            raise WireError(code, str(err)) from None
        if domain.over_max_pages is not None:
            self._ratchet(domain)
        return released

    def short_of_memory(self, domain: Domain) -> bool:
        """Whether the domain's last increase was granted short because the host was full."""
        return domain.domid in self._short

    def waiting_for_memory(self, freed_by: Domain | None) -> list[Domain]:
        """Pages were just freed: the domains that were granted short, told once per shortage."""
        if not self._short or self.pool.free_pages == 0:
            return []
        waiting = [d for d in self._short.values() if d is not freed_by]
        for domain in waiting:
            del self._short[domain.domid]
        return waiting

    # --- toolstack -----------------------------------------------------------------------

    def set_target(self, domain: Domain, target_pages: int) -> None:
        if target_pages > domain.max_pages:
            raise WireError(
                ErrorCode.EINVAL,
                f"target {target_pages} pages exceeds {domain.name}'s maxmem of {domain.max_pages} pages; raise mem-max first",
            )
        domain.target_pages = target_pages
        domain.target_writes += 1
        self.dirty.add(domain.domid)

    def set_control(self, domain: Domain, keys: dict[str, Any]) -> None:
        """A toolstack's control keys for the guest (wire/control.py): a later write of a key replaces it."""
        domain.control = {**domain.control, **keys}
        self.dirty.add(domain.domid)

    def set_max(self, domain: Domain, max_pages: int, refuse_below_target: bool = False) -> None:
        """XEN_DOMCTL_max_mem (xen/common/domctl.c): any max, also below what the domain holds.

        Xen dropped its check that new_max >= tot_pages: the domain keeps its pages and "ratchets"
        down to the new max, and while tot_pages > max_pages every allocation is refused
        (xen/common/page_alloc.c assign_pages: "Inconsistent allocation", and "Over-allocation"
        past the max; here increase_reservation grants max(0, max - current) = 0). Nothing is
        taken away and the target is not touched: it lives in xenstore, the toolstack's.

        `refuse_below_target` adds libxl_domain_setmaxmem's one check (tools/libs/light/
        libxl_mem.c), made atomically here as libxl makes it under the domain's lock: a max
        below memory/target (the balloon target; not the current memory, not static-max) is
        refused with libxl's reason. libxl also adds LIBXL_MAXMEM_CONSTANT (1024 KiB on x86,
        libxl__arch_extra_memory) for pages Xen assigns a domain beside its RAM; ballonet's
        domains have none, at build as here, so the max is set as asked.
        """
        if refuse_below_target and max_pages < domain.target_pages:
            raise WireError(
                ErrorCode.EINVAL,
                f"cannot set {domain.name}'s maxmem to {max_pages} pages, below its target of {domain.target_pages}: "
                "memory_static_max must be greater than or equal to memory_dynamic_max (libxl_domain_setmaxmem); "
                "lower the target with mem-set first",
            )
        domain.max_pages = max_pages
        current = self.current_pages(domain)
        domain.over_max_pages = current if current > max_pages else None
        self.dirty.add(domain.domid)

    def _ratchet(self, domain: Domain) -> None:
        """A domain over its max gave pages back: the most it may hold follows it down."""
        current = self.current_pages(domain)
        domain.over_max_pages = current if current > domain.max_pages else None
        self.dirty.add(domain.domid)

    def heard_from(self, domain: Domain, now: float, balloon: dict[str, Any] | None = None) -> None:
        domain.last_seen = now
        if balloon is not None:
            domain.balloon = balloon
            domain.balloon_at = now
            self.dirty.add(domain.domid)

    def audit(self) -> list[str]:
        """Every way the books can be wrong, in words; empty when they balance."""
        problems = list(self.pool.audit())
        for owner in self.pool.owners():
            if owner not in self._by_id and self.pool.owned_pages(owner):
                problems.append(f"pages owned by domid {owner}, which does not exist")
        for domain in self.domains():
            # Above maxmem is legal after a max_mem below what the domain held (Xen's ratchet):
            # what is wrong is a domain that grew past its max, or past what it held since.
            current = self.current_pages(domain)
            if current > domain.max_pages:
                if domain.over_max_pages is None:
                    problems.append(f"{domain.name} (domid {domain.domid}) holds {current} pages, over its maxmem of {domain.max_pages}")
                elif current > domain.over_max_pages:
                    problems.append(
                        f"{domain.name} (domid {domain.domid}) holds {current} pages, over its maxmem of {domain.max_pages} "
                        f"and more than the {domain.over_max_pages} it was down to since its maxmem was lowered"
                    )
        return problems
