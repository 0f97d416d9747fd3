"""maxmem at its two layers, as Xen and libxl have them (no sockets).

XEN_DOMCTL_max_mem (xen/common/domctl.c) sets d->max_pages to anything, also below tot_pages:
"the domain will now be allowed to "ratchet" down to new_max. In the meantime, while tot > max,
all new allocations are disallowed." libxl_domain_setmaxmem (tools/libs/light/libxl_mem.c)
first reads memory/target and refuses `max_memkb < memorykb` ("memory_static_max must be
greater than or or equal to memory_dynamic_max", sic); it writes neither the target nor
anything else the guest watches. The expected figures below follow those two functions.
"""

from __future__ import annotations

import pytest

from hypervisor.dispatch import Hypervisor
from wire import envelope
from tests.test_dispatch import A, Peer, admin, guest, hv, snapshot  # noqa: F401 (admin, hv: fixtures)

pytestmark = pytest.mark.timeout(10)


def give_back(g: Peer, hv: Hypervisor, n: int) -> int:
    """The guest returns its n highest pages, as a balloon driver does."""
    start, count = hv.pool.extents_of(g.result["domid"])[-1]
    assert count >= n
    return g.ok("decrease_reservation", extents=[[start + count - n, n]])["released"]


def test_XEN_DOMCTL_max_mem_accepts_a_max_below_current_and_takes_nothing_away(hv, admin):
    g = guest(hv, "web", memory=1000, maxmem=2000)
    assert admin.ok("mem_max", domain="web", max_pages=600) == {"domid": 1, "max_pages": 600, "target_pages": 1000, "current_pages": 1000}
    assert hv.pool.owned_pages(1) == 1000 and hv.table.resolve("web").target_pages == 1000  # no page taken, target untouched
    assert admin.ok("audit")["ok"]  # above maxmem after a lowering is legal in Xen


def test_XEN_DOMCTL_max_mem_while_tot_above_max_all_new_allocations_are_disallowed(hv, admin):
    g = guest(hv, "web", memory=1000, maxmem=2000)
    admin.ok("mem_max", domain="web", max_pages=600)
    assert g.ok("increase_reservation", nr_pages=1)["granted"] == 0
    assert give_back(g, hv, 300) == 300  # 700: still over, still no grant
    assert g.ok("increase_reservation", nr_pages=512)["granted"] == 0
    give_back(g, hv, 110)  # 590: under the max again, it may grow back to it and no further
    assert g.ok("increase_reservation", nr_pages=512)["granted"] == 10
    assert hv.pool.owned_pages(1) == 600 and admin.ok("audit")["ok"]


def test_XEN_DOMCTL_max_mem_takes_a_max_of_zero(hv, admin):
    g = guest(hv, "web", memory=1000, maxmem=2000)
    assert admin.ok("mem_max", domain="web", max_pages=0)["max_pages"] == 0
    assert g.ok("increase_reservation", nr_pages=1)["granted"] == 0


def test_XEN_DOMCTL_max_mem_tells_the_guest_nothing(hv, admin):
    """Neither the domctl nor libxl writes memory/target, the only key Linux's driver watches
    (drivers/xen/xen-balloon.c, watch_target): no push, no virtual interrupt."""
    guest(hv, "web", memory=1000, maxmem=2000)
    for args in ({}, {"refuse_below_target": True}):
        out = hv.handle(A, admin_frame(admin, "mem_max", domain="web", max_pages=1500, **args), 0.0)
        assert out.error is None and list(out.notifications) == []


def admin_frame(admin: Peer, op: str, **args) -> bytes:
    admin.seq += 1
    return envelope.encode(envelope.request(op, admin.seq, admin.client, args))


def test_libxl_domain_setmaxmem_refuses_a_max_below_the_target_with_libxls_reason(hv, admin):
    guest(hv, "web", memory=1000, maxmem=2000)
    before = snapshot(hv)
    reply = admin.call("mem_max", domain="web", max_pages=999, refuse_below_target=True)
    assert reply["error"] == "EINVAL"
    assert "memory_static_max must be greater than or equal to memory_dynamic_max" in reply["message"]
    assert snapshot(hv) == before
    assert admin.ok("mem_max", domain="web", max_pages=1000, refuse_below_target=True)["max_pages"] == 1000  # equal: accepted


def test_libxl_domain_setmaxmem_compares_with_the_target_not_the_current_memory(hv, admin):
    """memory/target is what libxl reads: a lowered target lets the max go below what the
    domain still holds (it has not ballooned down yet)."""
    guest(hv, "web", memory=1000, maxmem=2000)
    admin.ok("mem_set", domain="web", target_pages=400)
    assert admin.ok("mem_max", domain="web", max_pages=400, refuse_below_target=True) == {
        "domid": 1, "max_pages": 400, "target_pages": 400, "current_pages": 1000,
    }
    assert admin.call("mem_max", domain="web", max_pages=399, refuse_below_target=True)["error"] == "EINVAL"
    assert admin.ok("audit")["ok"]


def test_libxl_domain_setmaxmem_may_raise_the_max_above_the_built_one(hv, admin):
    """"The specified memory size can even be above the configured maxmem size of the domain"."""
    g = guest(hv, "web", memory=1000, maxmem=1000)
    assert admin.ok("mem_max", domain="web", max_pages=3000, refuse_below_target=True)["max_pages"] == 3000
    assert g.ok("increase_reservation", nr_pages=512)["granted"] == 512


def test_audit_flags_a_domain_that_grew_while_over_its_max(hv, admin):
    """The audit's maxmem rule: over the max only by what it held when the max went below it,
    and that allowance only shrinks. A grant past it (a bug) is reported."""
    g = guest(hv, "web", memory=1000, maxmem=2000)
    admin.ok("mem_max", domain="web", max_pages=600)
    give_back(g, hv, 100)  # 900 now: the allowance follows it down
    hv.pool.allocate(1, 50)  # pages the hypervisor never granted through the rules
    problems = admin.ok("audit")["problems"]
    assert problems == ["web (domid 1) holds 950 pages, over its maxmem of 600 and more than the 900 it was down to since its maxmem was lowered"]


def test_audit_flags_a_domain_over_a_max_it_never_held_more_than(hv, admin):
    guest(hv, "web", memory=1000, maxmem=1000)
    hv.pool.allocate(1, 1)
    assert admin.ok("audit")["problems"] == ["web (domid 1) holds 1001 pages, over its maxmem of 1000"]
