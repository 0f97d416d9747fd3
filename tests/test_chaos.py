"""bench/chaos.py's core without processes: the fault choice and the invariants over figures."""

from __future__ import annotations

import random

import pytest

from bench.chaos_checks import (
    IrqFigures,
    Ledger,
    book_violations,
    interrupt_violations,
    irq_figures,
    ledger_from_log,
    settle_problems,
)
from bench.chaos_plan import ALL_KINDS, Action, Kind, Role, Support, choose_fault, choose_targets, supported_kinds

TARGETS = {Role.HYPERVISOR: ["hypervisor"], Role.IRQBUS: ["irqbus"], Role.GUEST: ["g0", "g1"], Role.DEVICE: ["nic"]}


def domain(current: int, target: int, reported: int | None = None, state: str = "done", run: str = "running", domid: int = 1) -> dict:
    kb = (current if reported is None else reported) * 4
    return {"domid": domid, "current_pages": current, "target_pages": target, "state": run, "balloon": {"current_kb": kb, "state": state}}


# --- the plan ------------------------------------------------------------------------------------


def test_without_state_or_irqbus_restarts_only_stops_reach_those_two() -> None:
    kinds = supported_kinds(Support(hypervisor_restart=False, irqbus_restart=False))
    assert Kind(Action.STOP, Role.HYPERVISOR) in kinds and Kind(Action.STOP, Role.IRQBUS) in kinds
    for action in (Action.KILL, Action.RESTART):
        assert Kind(action, Role.HYPERVISOR) not in kinds and Kind(action, Role.IRQBUS) not in kinds
        assert Kind(action, Role.GUEST) in kinds and Kind(action, Role.DEVICE) in kinds
    assert supported_kinds(Support(True, True)) == list(ALL_KINDS)


def test_the_same_seed_chooses_the_same_faults_and_every_kind_comes_up() -> None:
    kinds = supported_kinds(Support(True, True))
    first = [choose_fault(random.Random(7), kinds, TARGETS) for _ in range(1)]
    rng_a, rng_b = random.Random(7), random.Random(7)
    run_a = [choose_fault(rng_a, kinds, TARGETS) for _ in range(300)]
    run_b = [choose_fault(rng_b, kinds, TARGETS) for _ in range(300)]
    assert run_a == run_b and run_a[0] == first[0]
    assert {f.kind for f in run_a} == set(ALL_KINDS)
    for fault in run_a:
        assert fault.target in TARGETS[fault.kind.role]
        assert (0.2 <= fault.pause_s <= 1.5) if fault.kind.action is Action.STOP else fault.pause_s == 0


def test_a_role_without_targets_is_never_chosen() -> None:
    kinds = supported_kinds(Support(True, True))
    targets = dict(TARGETS, **{Role.DEVICE: []})
    rng = random.Random(1)
    assert all(choose_fault(rng, kinds, targets).kind.role is not Role.DEVICE for _ in range(200))
    with pytest.raises(ValueError):
        choose_fault(rng, kinds, {})


def test_targets_keep_every_claim_within_the_pool() -> None:
    rng = random.Random(3)
    for _ in range(500):
        held = {"g0": 2048, "g1": 2048, "g2": 2048, "g3": 2048}
        chosen = choose_targets(rng, ["g0", "g1", "g2"], held, 16384, 1024, 6144, 2, restart_pages=2048)
        assert 1 <= len(chosen) <= 2 and "g3" not in chosen
        claims = dict(held, **{n: max(t, 2048) for n, t in chosen.items()})
        assert sum(claims.values()) <= 16384
        assert all(1024 <= t <= 6144 for t in chosen.values())


def test_no_target_when_the_pool_has_no_room() -> None:
    # the others claim 15000 of 16384: at most 1384 for g0, below what a restart registers with
    held = {"g0": 2048, "g1": 15000}
    assert choose_targets(random.Random(1), ["g0"], held, 16384, 1024, 6144, 1, restart_pages=2048) == {}


# --- settling --------------------------------------------------------------------------------------


def test_settled_when_every_guest_holds_its_target_and_reports_it() -> None:
    domains = {"g0": domain(100, 100), "g3": domain(50, 80, state="retrying")}
    assert settle_problems(domains, {"g0": False, "g3": True}) == []


def test_not_settled_while_a_guest_moves_is_missing_unresponsive_or_reports_stale_pages() -> None:
    assert settle_problems({"g0": domain(90, 100, state="retrying")}, {"g0": False}) == ["g0: 90 of 100 pages, driver retrying"]
    assert settle_problems({}, {"g0": False}) == ["g0: no domain"]
    assert settle_problems({"g0": domain(100, 100, run="unresponsive")}, {"g0": False}) == ["g0: unresponsive"]
    assert settle_problems({"g3": domain(100, 200, reported=90)}, {"g3": True}) == ["g3: reports 90 pages, booked 100"]
    # at target, but the driver has not said done yet
    assert settle_problems({"g0": domain(100, 100, state="retrying")}, {"g0": False}) == ["g0: 100 of 100 pages, driver retrying"]


# --- the books -------------------------------------------------------------------------------------


def log(*events: tuple) -> list[dict]:
    out = []
    for e in events:
        if e[0] == "registered":
            out.append({"event": "registered", "pages": e[1], "domid": e[2] if len(e) > 2 else 1})
        elif e[0] == "increase":
            out.append({"event": "increase", "seq": e[1], "granted": e[2], "current_pages": e[3]})
        else:
            out.append({"event": "decrease", "seq": e[1], "released": e[2], "current_pages": e[3]})
    return out


def test_the_ledger_sums_grants_and_releases_since_the_latest_registration() -> None:
    events = log(("registered", 10), ("increase", 5, 4, 14), ("registered", 20), ("increase", 3, 8, 28), ("decrease", 4, 5, 23))
    events.insert(2, {"event": "balloon done"})
    ledger = ledger_from_log(events)
    assert (ledger.registered_pages, ledger.granted, ledger.released, ledger.requests, ledger.pages) == (20, 8, 5, 2, 23)
    assert ledger.registrations == 2
    assert ledger.last_logged_pages == 23 and ledger.repeated_seqs == []
    assert ledger_from_log([{"event": "increase", "seq": 1, "granted": 3, "current_pages": 3}]) is None


def test_books_above_the_guests_sum_are_a_request_executed_twice() -> None:
    # the guest logged one grant of 512; the hypervisor booked it twice
    ledger = ledger_from_log(log(("registered", 2048), ("increase", 7, 512, 2560)))
    out = book_violations({"ok": True}, {"g0": domain(3072, 3072, reported=2560)}, {"g0": ledger})
    assert out == [
        "g0: its report says 2560 pages, the books 3072",
        "g0: its log accounts for 2560 pages (registered 2048, granted 512, released 0 in 1 requests), the books 3072: a request executed twice?",
    ]


def test_balanced_books_and_agreeing_views_are_no_violation() -> None:
    ledger = ledger_from_log(log(("registered", 2048), ("increase", 7, 512, 2560), ("decrease", 8, 60, 2500)))
    assert book_violations({"ok": True, "problems": []}, {"g0": domain(2500, 2500)}, {"g0": ledger}) == []


def test_audit_failures_missing_domains_and_repeated_seqs_are_violations() -> None:
    ledger = ledger_from_log(log(("registered", 10), ("increase", 7, 2, 12), ("increase", 7, 2, 14)))
    out = book_violations({"ok": False, "problems": ["free list overlaps domain 1"]}, {"g0": domain(14, 14)}, {"g0": ledger, "g1": Ledger()})
    assert out == [
        "audit: the books do not balance: ['free list overlaps domain 1']",
        "g0: seqs logged twice: [7]",
        "g1: running, but the hypervisor books no domain to it",
    ]
    assert book_violations(None, {}, {}) == ["audit: no answer"]


# --- interrupts ------------------------------------------------------------------------------------


def rows(count: int, nic: int, other: int = 0) -> list[dict]:
    return [
        {"irq": 2, "count": 0, "actions": [{"name": "cascade", "handled": 0}]},
        {"irq": 11, "count": count, "actions": [{"name": "nic", "handled": nic}, {"name": "snd", "handled": other}]},
    ]


def test_irq_figures_pick_the_devices_line() -> None:
    assert irq_figures(rows(30, 20, 10), "nic") == IrqFigures(11, 30, 20, 30)
    assert irq_figures(rows(30, 20, 10), "disk") is None


def test_interrupts_handled_with_none_unclaimed_are_fine() -> None:
    before, after = irq_figures(rows(30, 20, 10), "nic"), irq_figures(rows(45, 33, 12), "nic")
    assert interrupt_violations("nic", "g1", before, after) == []


def test_a_line_whose_interrupts_go_unhandled_is_a_violation() -> None:
    # the irqbus restart: every new interrupt looks stale to the driver
    before, after = irq_figures(rows(30, 30), "nic"), irq_figures(rows(130, 30), "nic")
    assert interrupt_violations("nic", "g1", before, after) == [
        "device nic on g1: irq 11: no interrupt handled in the window (100 delivered)",
        "device nic on g1: irq 11: 100 of 100 interrupts unhandled in the window",
    ]
    # some handled, some not
    assert interrupt_violations("nic", "g1", before, irq_figures(rows(40, 35), "nic")) == [
        "device nic on g1: irq 11: 5 of 10 interrupts unhandled in the window"
    ]
    assert interrupt_violations("nic", "g1", None, None) == ["device nic on g1: its guest has no driver for it"]


def test_a_guest_that_lost_its_domain_across_a_restart_is_a_violation() -> None:
    # the first finding: a restarted hypervisor without its books, the guest registers anew
    ledger = ledger_from_log(log(("registered", 2048, 3), ("increase", 4, 512, 2560), ("registered", 2048, 1)))
    assert book_violations({"ok": True}, {"g0": domain(2048, 2048, domid=1)}, {"g0": ledger}) == [
        "g0: registered 2 times (it lost its domain and took a new one)"
    ]
    ledger = ledger_from_log(log(("registered", 2048, 3)))
    assert book_violations({"ok": True}, {"g0": domain(2048, 2048, domid=4)}, {"g0": ledger}) == [
        "g0: registered as domain 3, the books have it as 4"
    ]
