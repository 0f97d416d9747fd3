"""The guest control interface: `guest_set` at the hypervisor core, the key table, and each
behaviour applied to the guest's driver core (guest/control.py)."""

from __future__ import annotations

import msgpack
import pytest

from guest.balloon import Balloon, BalloonConfig, Decrease, DriverState, Increase
from guest.generations import DriverGeneration
from guest.control import GuestControl, aim
from guest.memory import GuestMemory
from guest.pace import Both, Slow, Stuck, StuckEvery
from hypervisor.dispatch import Hypervisor
from tests.test_dispatch import Peer, snapshot
from wire import envelope
from wire.control import from_human, parse_assignments
from wire.extent import Extent
from wire.operations import Endpoint

pytestmark = pytest.mark.timeout(10)
G, A = Endpoint.GUEST, Endpoint.ADMIN


# --- the hypervisor keeps the keys with the domain and pushes them --------------------------------


@pytest.fixture
def host():
    hv = Hypervisor(total_pages=10_000)
    guest = Peer(hv, G, "guest-vm1")
    guest.ok("register", name="vm1", memory_pages=1000, max_pages=2000)
    return hv, guest, Peer(hv, A, "toolstack")


def test_guest_set_is_kept_merged_and_pushed_to_the_guest(host):
    hv, guest, admin = host
    out = hv.handle(A, envelope.encode(envelope.request("guest_set", 1, "xl-2", {"domain": "vm1", "keys": {"rate": 50, "stuck": True}})), 0.0)
    assert msgpack.unpackb(out.reply)["result"] == {"domid": 1, "control": {"rate": 50.0, "stuck": True}}
    [note] = out.notifications
    assert note.client == "guest-vm1" and note.virq is None
    assert note.event == {"v": 1, "event": "control", "args": {"control": {"rate": 50.0, "stuck": True}}}
    # a later write replaces its keys and keeps the others; nil removes a ceiling
    assert admin.ok("guest_set", domain=1, keys={"stuck": False, "ceiling_pages": None})["control"] == {
        "rate": 50.0, "stuck": False, "ceiling_pages": None}
    # the heartbeat reply carries the map (the fallback for a lost push), and list shows it
    assert guest.ok("status")["control"] == {"rate": 50.0, "stuck": False, "ceiling_pages": None}
    assert admin.ok("list")["domains"][0]["control"] == {"rate": 50.0, "stuck": False, "ceiling_pages": None}


def test_a_domain_without_keys_has_an_empty_map(host):
    _, guest, admin = host
    assert guest.ok("status")["control"] == {}
    assert admin.ok("list")["domains"][0]["control"] == {}


@pytest.mark.parametrize(
    "keys, words",
    [
        ({}, "a map of 1..7 control keys"),
        ([], "a map of 1..7 control keys"),
        ({"speed": 3}, "unknown key(s) ['speed']"),
        ({"rate": -1}, "'keys.rate': expected a number of pages a second"),
        ({"rate": float("nan")}, "'keys.rate'"),
        ({"rate": float("inf")}, "'keys.rate'"),
        ({"rate": True}, "'keys.rate'"),
        ({"stuck": 1}, "'keys.stuck': expected true or false"),
        ({"floor_pages": -1}, "'keys.floor_pages': expected an integer number of pages"),
        ({"ceiling_pages": 1.5}, "'keys.ceiling_pages'"),
        ({"inaccuracy_pages": "4k"}, "'keys.inaccuracy_pages'"),
        ({"max_schedule_delay": 0}, "'keys.max_schedule_delay': expected a number of seconds above 0"),
        ({"max_schedule_delay": 86_401}, "'keys.max_schedule_delay'"),
        ({"max_retry_count": 1 << 63}, "'keys.max_retry_count'"),
        ({"stuck": True, "x" * 5000: 1}, "unknown key(s)"),
    ],
)
def test_bad_keys_are_refused_whole_and_change_nothing(host, keys, words):
    hv, _, admin = host
    before = snapshot(hv), dict(hv.table.resolve(1).control)
    reply = admin.call("guest_set", domain="vm1", keys=keys)
    assert not reply["ok"] and reply["error"] == "EINVAL", reply
    assert words in reply["message"] and len(reply["message"]) < 400, reply["message"]
    assert (snapshot(hv), hv.table.resolve(1).control) == before


def test_guest_set_names_a_domain_and_is_the_toolstacks(host):
    _, guest, admin = host
    assert admin.call("guest_set", domain="nobody", keys={"stuck": True})["error"] == "ESRCH"
    assert admin.call("guest_set", keys={"stuck": True})["error"] == "EINVAL"
    assert guest.call("guest_set", domain="vm1", keys={"stuck": True})["error"] == "EPERM"


# --- the key table as people write it -------------------------------------------------------------


def test_keys_as_people_write_them():
    assert parse_assignments(["rate=500", "stuck=on", "floor=180m", "ceiling=1g", "inaccuracy=4k"]) == {
        "rate": 500, "stuck": True, "floor_pages": 46080, "ceiling_pages": 262144, "inaccuracy_pages": 1}
    assert parse_assignments(["ceiling=none", "stuck=off", "max_schedule_delay=0.5", "max_retry_count=4"]) == {
        "ceiling_pages": None, "stuck": False, "max_schedule_delay": 0.5, "max_retry_count": 4}
    assert from_human("stuck", True) == ("stuck", True)  # a scenario file's TOML bool
    assert from_human("rate", 2.5) == ("rate", 2.5)


@pytest.mark.parametrize(
    "texts, words",
    [
        ([], "nothing to set"),
        (["rate"], "expected KEY=VALUE"),
        (["rate="], "expected KEY=VALUE"),
        (["speed=3"], "unknown key 'speed'"),
        (["rate=fast"], "expected a number"),
        (["rate=٣"], "ASCII digits"),
        (["rate=nan"], "a number of pages a second"),
        (["stuck=maybe"], "expected on or off"),
        (["floor=lots"], "invalid size"),
        (["max_retry_count=1.5"], "a whole number"),
        (["max_schedule_delay=0"], "above 0"),
    ],
)
def test_bad_assignments_say_what_was_wanted(texts, words):
    with pytest.raises(ValueError, match=None) as err:
        parse_assignments(texts)
    assert words in str(err.value), str(err.value)


# --- each behaviour in the guest's core ---------------------------------------------------------


def make(current: int = 1000, maxmem: int = 4000, workload: int = 0, pace=None, **config) -> Balloon:
    memory = GuestMemory([Extent(0, current)], workload)
    return Balloon(memory, maxmem, config=BalloonConfig(**config), pace=pace)


def serve(b: Balloon, now: float, grant: bool = True) -> Increase | Decrease | None:
    """Carry out the action the driver wants now, as a hypervisor with room would."""
    action = b.poll(now)
    if isinstance(action, Increase):
        b.increase_done([Extent(100_000 + b.current_pages, action.nr)] if grant else [], now)
    elif isinstance(action, Decrease):
        b.decrease_done(now)
    return action


def run(b: Balloon, start: float, end: float, step: float = 0.05) -> list[Increase | Decrease]:
    actions, now = [], start
    while now <= end:
        while (action := serve(b, now)) is not None:
            actions.append(action)
        now = round(now + step, 6)
    return actions


def test_a_stuck_guest_moves_again_when_unstuck_and_stops_when_stuck():
    b = make(pace=Stuck())
    control = GuestControl(b, 0.0)
    control.set_target(2000, 0.0)
    assert run(b, 0.0, 1.0) == [] and b.current_pages == 1000
    assert control.apply({"stuck": False}, 1.0).applied == {"stuck": False}
    run(b, 1.0, 1.0)
    assert b.current_pages == 2000 and b.state is DriverState.DONE
    control.apply({"stuck": True}, 2.0)
    control.set_target(500, 2.0)
    assert run(b, 2.0, 4.0) == [] and b.current_pages == 2000
    assert b.state is DriverState.RETRYING  # still chasing the target, as a stuck guest reports


def test_rate_change_paces_a_running_guest():
    b = make()
    control = GuestControl(b, 0.0)
    control.apply({"rate": 100}, 0.0)
    control.set_target(2000, 0.0)
    run(b, 0.0, 2.0)
    # a token bucket of 100 pages/s from empty at 0.0: 200 pages by 2.0 s, give or take a step
    assert 180 <= b.current_pages - 1000 <= 200
    control.apply({"rate": 0}, 2.0)  # 0: no limit
    run(b, 2.0, 2.0)
    assert b.current_pages == 2000


def test_rate_keeps_an_intermittent_pause_the_guest_started_with():
    pause = StuckEvery(1.0, created=0.0)
    b = make(pace=pause)
    control = GuestControl(b, 0.0)
    control.apply({"rate": 50}, 0.0)
    assert isinstance(b.pace, Both) and b.pace.second is pause and isinstance(b.pace.first, Slow)
    control.apply({"rate": 0}, 0.0)
    assert b.pace is pause
    control.apply({"stuck": True}, 0.0)
    assert isinstance(b.pace, Stuck)
    control.apply({"stuck": False}, 0.0)
    assert b.pace is pause


def test_a_value_seen_again_is_not_applied_again():
    b = make()
    control = GuestControl(b, 0.0)
    assert control.apply({"rate": 0.0, "stuck": False, "ceiling_pages": None}, 0.0).applied == {}
    assert control.apply({"stuck": True}, 0.0).applied == {"stuck": True}
    assert control.apply({"stuck": True}, 1.0).applied == {}


def test_raising_the_floor_stops_a_decrease_at_it():
    b = make(current=1000)
    control = GuestControl(b, 0.0)
    control.apply({"floor_pages": 800}, 0.0)
    control.set_target(500, 0.0)
    run(b, 0.0, 0.5)
    assert b.current_pages == 800 and b.state is DriverState.RETRYING
    control.apply({"floor_pages": 0}, 0.5)  # the guest's own use went away: the next retry frees it
    run(b, 0.5, 3.0)
    assert b.current_pages == 500 and b.state is DriverState.DONE


def test_a_ceiling_stops_growth_without_asking_the_hypervisor():
    """Linux current_target(): min(target, current + balloon_low + balloon_high). A guest never
    asks past the memory it can address, so no request goes out; a 3.1 driver is idle (done)."""
    b = make(current=1000, maxmem=4000, generation=DriverGeneration.V3_1)
    control = GuestControl(b, 0.0, ceiling_pages=1500)
    control.set_target(3000, 0.0)
    asked = run(b, 0.0, 2.0)
    assert sum(a.nr for a in asked if isinstance(a, Increase)) == 500
    assert b.current_pages == 1500 and b.state is DriverState.DONE and b.next_wakeup() is None
    assert b.stats().target_kb == 3000 * 4 and b.stats().current_kb == 1500 * 4  # the gap is the toolstack's to see
    control.apply({"ceiling_pages": None}, 2.0)  # memory hotplugged: it grows to the target
    run(b, 2.0, 2.0)
    assert b.current_pages == 3000


def test_a_ceiling_cancels_the_current_driver_until_the_target_is_written():
    """Today's driver: reserve_additional_memory() without memory hotplug sets target_pages =
    current_pages and returns BP_ECANCELED once the balloon is empty; lifting the ceiling then
    does not resume it, a new target write does."""
    b = make(current=1000, maxmem=4000, generation=DriverGeneration.CURRENT)
    control = GuestControl(b, 0.0, ceiling_pages=1500)
    control.set_target(3000, 0.0)
    run(b, 0.0, 2.0)
    assert (b.current_pages, b.target_pages, b.state) == (1500, 1500, DriverState.CANCELLED)
    control.apply({"ceiling_pages": None}, 2.0)
    run(b, 2.0, 2.0)
    assert b.current_pages == 1500
    control.set_target(3000, 2.0)
    run(b, 2.0, 2.0)
    assert b.current_pages == 3000


def test_a_ceiling_below_the_guest_gives_back_down_to_it():
    """squeezed's guest with an upper limit (squeeze_test.ml `idealised_vm_with_upper_limit`)
    clips memory_actual to the limit; ours balloons down to a ceiling set below it."""
    b = make(current=2000)
    control = GuestControl(b, 0.0)
    control.apply({"ceiling_pages": 1200}, 0.0)
    run(b, 0.0, 0.5)
    assert b.current_pages == 1200


@pytest.mark.parametrize(
    "written, current, inaccuracy, expected",
    [
        (1500, 1000, 1, 1499),  # growing: stops one page below
        (500, 1000, 1, 501),  # shrinking: stops one page above
        (1000, 1000, 1, 1000),
        (1001, 1000, 1, 1000),  # within the inaccuracy already: stays
        (999, 1000, 2, 1000),
        (1500, 1000, 0, 1500),
    ],
)
def test_aim_of_an_inaccurate_guest(written, current, inaccuracy, expected):
    # squeeze_test.ml compute_memory_actual_delta: distance' = max 0 (distance - inaccuracy_kib)
    assert aim(written, current, inaccuracy) == expected


def test_an_inaccurate_guest_settles_off_its_target_and_reports_done():
    b = make(current=1000)
    control = GuestControl(b, 0.0, inaccuracy_pages=2)
    control.set_target(1500, 0.0)
    run(b, 0.0, 1.0)
    assert b.current_pages == 1498 and b.state is DriverState.DONE
    control.set_target(600, 1.0)
    run(b, 1.0, 2.0)
    assert b.current_pages == 602
    control.apply({"inaccuracy_pages": 0}, 2.0)  # accurate again: it aims at the written target
    run(b, 2.0, 2.0)
    assert b.current_pages == 600


def test_driver_tunables_and_a_value_the_driver_refuses():
    b = make(retry_delay=1.0, max_retry_delay=32.0, max_retries=0)
    control = GuestControl(b, 0.0)
    out = control.apply({"max_schedule_delay": 4, "max_retry_count": 3}, 0.0)
    assert out.applied == {"max_schedule_delay": 4, "max_retry_count": 3} and not out.refused
    assert (b.stats().max_schedule_delay, b.stats().max_retry_count) == (4.0, 3)
    out = control.apply({"max_schedule_delay": 0.5}, 0.0)  # below the retry delay: the driver keeps 4
    assert "max_schedule_delay" in out.refused and b.stats().max_schedule_delay == 4.0
    assert control.seen["max_schedule_delay"] == 4.0  # what the driver runs with, not what was refused
    assert control.apply({"max_schedule_delay": 0.5}, 1.0).refused == {}  # refused once, not every heartbeat


def test_tuned_max_retry_count_cancels_a_failing_driver():
    b = make(retry_delay=1.0, max_retry_delay=32.0)
    control = GuestControl(b, 0.0)
    control.apply({"max_retry_count": 2}, 0.0)
    control.set_target(2000, 0.0)
    now = 0.0
    for _ in range(2):  # update_schedule(): retry_count 2, then 3 > max_retry_count 2: cancelled
        assert isinstance(b.poll(now), Increase)
        b.increase_done([], now)
        now = b.next_wakeup()
    assert b.state is DriverState.CANCELLED and b.failed_steps == 2


def test_a_new_inaccuracy_is_not_a_target_write():
    """A 3.1 driver waiting out a backoff keeps waiting: schedule_delayed_work(.., 0) is what a
    *write* of memory/target would do (and it too leaves a pending backoff alone); a change in
    where the guest aims is no write at all."""
    b = make(current=1000, maxmem=4000, generation=DriverGeneration.V3_1)
    control = GuestControl(b, 0.0)
    control.set_target(2000, 0.0)
    assert isinstance(b.poll(0.0), Increase)
    b.increase_done([], 0.0)
    assert b.next_wakeup() == 2.0  # update_schedule(): 2 s
    control.apply({"inaccuracy_pages": 10}, 0.5)
    assert b.target_pages == 1990 and b.next_wakeup() == 2.0 and b.poll(0.5) is None


def test_a_new_inaccuracy_does_not_revive_a_cancelled_driver():
    """Only a write of memory/target resumes today's driver after BP_ECANCELED
    (balloon_thread_cond() on a changed credit); a new inaccuracy moves the aim, writes nothing."""
    b = make(current=1000, maxmem=4000, generation=DriverGeneration.CURRENT, max_retries=1)
    control = GuestControl(b, 0.0)
    control.set_target(2000, 0.0)
    assert isinstance(b.poll(0.0), Increase)
    b.increase_done([], 0.0)
    assert b.state is DriverState.CANCELLED
    control.apply({"inaccuracy_pages": 10}, 1.0)
    assert b.state is DriverState.CANCELLED and b.poll(1.0) is None
    control.set_target(2000, 2.0)  # a write: the credit changed, the thread runs
    assert isinstance(b.poll(2.0), Increase)
