"""Scenario files: what loads, and every mistake refused with the key at fault named."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest

from scenarios.recording import Recording, Sample
from scenarios.runner import evaluate, stale_after
from scenarios.spec import Action, Check, Expectation, ScenarioError, load, parse
from wire.sizes import size_to_pages

pytestmark = pytest.mark.timeout(10)
SHIPPED = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))

GOOD = {
    "name": "t",
    "memory": "1g",
    "duration": 5,
    "defaults": {"retry_delay": 0.5},
    "guest": [{"name": "a", "memory": "64m", "behaviour": "slow:100"}, {"name": "b", "memory": "64m", "driver": "pre-patch"}],
    "timeline": [{"at": 1, "action": "mem-set", "target": "a", "size": "32m"}, {"at": 0, "action": "kill", "target": "b"}],
    "expect": [{"check": "at-target", "by": 3, "guests": ["a"]}, {"check": "audit"}],
}


def with_change(path: tuple, value) -> dict:
    data = copy.deepcopy(GOOD)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path):
    s = load(path)
    assert s.guests and s.expectations and s.description
    assert all(g.driver for g in s.guests), "every shipped scenario names its driver"


def test_the_patch_scenarios_show_the_seed_commit_against_the_driver_before_it():
    directory = SHIPPED[0].parent
    assert {g.driver for g in load(directory / "patch.toml").guests} == {"seed"}
    assert {g.driver for g in load(directory / "patch-legacy.toml").guests} == {"pre-patch"}


def test_a_good_scenario_parses_with_defaults_and_sorted_timeline():
    s = parse(GOOD)
    assert [g.retry_delay for g in s.guests] == [0.5, 0.5]
    assert [st.action for st in s.timeline] == [Action.KILL, Action.MEM_SET]
    assert s.expectations[0] == Expectation(Check.AT_TARGET, ("a",), 3.0, 0)
    assert "--balloon-rate" in s.guests[0].cli_args("ipc://x", None)
    args_b = s.guests[1].cli_args("ipc://x", None)
    assert args_b[args_b.index("--driver") + 1] == "pre-patch"
    assert "--driver" not in s.guests[0].cli_args("ipc://x", None)  # guest run's default
    assert "--max-retries" not in args_b  # the driver's own default
    assert s.with_guests(retry_delay=1.0).guests[0].retry_delay == 1.0
    assert s.journal  # the runner gives the hypervisor a journal unless told not to
    assert not parse(with_change(("hypervisor",), {"journal": False})).journal


@pytest.mark.parametrize(
    "path, value, words",
    [
        (("name",), KeyError, "missing 'name'"),
        (("memory",), "lots", "memory"),
        (("duration",), "long", "duration"),
        (("colour",), "red", "unknown key"),
        (("guest", 0, "memory"), 64, "guest[0].memory"),
        (("guest", 0, "behaviour"), "sleepy", "behaviour"),
        (("guest", 0, "behaviour"), "slow", "behaviour"),
        (("guest", 0, "driver"), "2.6", "guest[0].driver"),
        (("guest", 0, "driver"), True, "driver"),
        (("defaults", "driver"), "newest", "driver"),
        (("guest", 0, "max_retries"), True, "max_retries"),
        (("guest", 1, "name"), "a", "unique"),
        (("timeline", 0, "action"), "explode", "action"),
        (("timeline", 0, "target"), "nobody", "not a guest"),
        (("timeline", 0, "size"), KeyError, "needs a 'size'"),
        (("expect", 0, "check"), "vibes", "check"),
        (("expect", 0, "by"), KeyError, "needs 'by'"),
        (("expect", 0, "guests"), ["zed"], "no guest"),
        (("hypervisor",), {"journal": "no"}, "hypervisor.journal"),
        (("hypervisor",), {"state": "x.db"}, "unknown key"),
    ],
)
def test_mistakes_are_refused_by_name(path, value, words):
    with pytest.raises(ScenarioError) as err:
        parse(with_change(path, value))
    assert words in str(err.value)


def test_a_file_that_is_not_toml_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ScenarioError):
        load(bad)


def dom(current: int, target: int) -> dict:
    return {"current_pages": current, "target_pages": target, "balloon": {}}


def test_recording_times_and_expectations():
    rec = Recording(
        [
            Sample(0.0, 10, {"a": dom(100, 300), "b": dom(300, 100)}),
            Sample(1.0, 150, {"a": dom(200, 300), "b": dom(100, 100)}),
            Sample(2.0, 50, {"a": dom(300, 300), "b": dom(100, 100)}),
        ]
    )
    assert rec.converged_at() == 2.0 and rec.reached_at("b") == 1.0
    assert rec.memory_free_at(("a",)) == 1.0 and rec.memory_free_at(("b",)) == 0.0
    s = parse(GOOD)
    assert evaluate(Expectation(Check.AT_TARGET, ("a",), 2.5), rec, s)[0]
    assert not evaluate(Expectation(Check.AT_TARGET, ("a",), 1.5), rec, s)[0]
    assert evaluate(Expectation(Check.AT_TARGET, ("a",), 1.5, pages=100), rec, s)[0]
    assert evaluate(Expectation(Check.OFF_TARGET, ("a",), 1.5), rec, s)[0]
    assert not evaluate(Expectation(Check.OFF_TARGET, ("a",), 3.0), rec, s)[0]  # the run ended before 3 s


def test_a_check_is_not_judged_on_a_sample_from_before_the_host_went_unseen():
    """The hypervisor was down from 1 s to 6 s: no sample in between. A check at 4 s must not
    pass on the 1 s sample (at target then); one at 6.5 s is judged on the 6 s sample."""
    s = parse(GOOD)
    rec = Recording([Sample(0.0, 10, {"a": dom(100, 300)}), Sample(1.0, 10, {"a": dom(300, 300)}), Sample(6.0, 10, {"a": dom(100, 300)}), Sample(7.0, 10, {"a": dom(300, 300)})])
    ok, said = evaluate(Expectation(Check.AT_TARGET, ("a",), 4.0), rec, s)
    assert not ok and "no sample between 1.0 s and 4 s" in said, said
    assert not evaluate(Expectation(Check.AT_TARGET, ("a",), 6.5), rec, s)[0]
    assert evaluate(Expectation(Check.OFF_TARGET, ("a",), 6.5), rec, s)[0]
    assert stale_after(s) < 3.0


def test_interrupt_expectations_need_irq_guests_and_irqbus():
    data = with_change(("expect",), [{"check": "line-disabled", "guests": ["a"]}])
    with pytest.raises(ScenarioError, match="needs 'irq'"):
        parse(data)
    data = with_change(("expect",), [{"check": "line-disabled", "guests": ["a"], "irq": 5}])
    with pytest.raises(ScenarioError, match="need irqbus"):
        parse(data)
    data["irqbus"] = True
    assert parse(data).expectations[0].irq == 5


def test_combined_behaviours_become_both_flags():
    g = parse(with_change(("guest", 0, "behaviour"), "slow:100+stuck-every:2")).guests[0]
    args = g.cli_args("ipc://x", None)
    assert args[args.index("--balloon-rate") + 1] == "100" and args[args.index("--stuck-every") + 1] == "2"
    with pytest.raises(ScenarioError, match="behaviour"):
        parse(with_change(("guest", 0, "behaviour"), "slow:100+lazy"))


def test_behave_steps_carry_control_keys_and_sticky_at_is_one():
    data = copy.deepcopy(GOOD)
    data["guest"][0].update(ceiling="48m", inaccuracy="4k", sticky_at=2.5)
    data["timeline"].append({"at": 1.5, "action": "behave", "target": "b", "rate": 200, "stuck": False, "floor": "16m",
                             "ceiling": "none", "max_schedule_delay": 4, "max_retry_count": 3})
    s = parse(data)
    behave = [st for st in s.timeline if st.action is Action.BEHAVE]
    assert [(st.at, st.target) for st in behave] == [(1.5, "b"), (2.5, "a")]
    assert behave[0].control == {"rate": 200, "stuck": False, "floor_pages": 4096, "ceiling_pages": None,
                                 "max_schedule_delay": 4.0, "max_retry_count": 3}
    assert behave[1].control == {"stuck": True}
    args = s.guests[0].cli_args("ipc://x", None)
    assert args[args.index("--ceiling") + 1] == "48m" and args[args.index("--inaccuracy") + 1] == "4k"


def test_on_crash_and_reclaim_after_reach_the_command_lines_and_bad_ones_are_refused():
    data = copy.deepcopy(GOOD)
    data["guest"][0]["on_crash"] = "preserve"
    data["reclaim_after"] = 5
    s = parse(data)
    args = s.guests[0].cli_args("ipc://x", None)
    assert args[args.index("--on-crash") + 1] == "preserve" and "--on-crash" not in s.guests[1].cli_args("ipc://x", None)
    assert s.reclaim_after == 5.0 and parse(GOOD).reclaim_after is None
    data["guest"][0]["on_crash"] = "restart"
    with pytest.raises(ScenarioError, match=r"guest\[0\]\.on_crash"):
        parse(data)
    with pytest.raises(ScenarioError, match="reclaim_after"):
        parse({**copy.deepcopy(GOOD), "reclaim_after": 0})


@pytest.mark.parametrize(
    "step, words",
    [
        ({"at": 1, "action": "behave", "target": "a"}, "needs at least one of"),
        ({"at": 1, "action": "behave", "target": "a", "rate": -3}, "timeline[2].rate"),
        ({"at": 1, "action": "behave", "target": "a", "stuck": "yes"}, "timeline[2].stuck"),
        ({"at": 1, "action": "behave", "target": "a", "floor": "lots"}, "timeline[2].floor"),
        ({"at": 1, "action": "behave", "target": "a", "ceiling": 5}, "timeline[2].ceiling"),
        ({"at": 1, "action": "behave", "target": "a", "max_retry_count": 1.5}, "timeline[2].max_retry_count"),
        ({"at": 1, "action": "behave", "target": "irqbus", "stuck": True}, "acts on a guest"),
        ({"at": 1, "action": "mem-set", "target": "a", "size": "8m", "stuck": True}, "belong to a 'behave' step"),
    ],
)
def test_bad_behave_steps_are_refused_by_name(step, words):
    data = copy.deepcopy(GOOD)
    data["timeline"].append(step)
    with pytest.raises(ScenarioError) as err:
        parse(data)
    assert words in str(err.value)


# --- issue 10: steps' outcomes, the new expectations, speed ------------------------------------

from scenarios.clock import ScenarioClock  # noqa: E402
from scenarios.recording import StepRecord  # noqa: E402
from scenarios.runner import last_error, unbalanced  # noqa: E402
from scenarios.spec import StepOutcome  # noqa: E402


def test_a_step_may_expect_to_be_refused():
    s = parse(with_change(("timeline", 0, "expect"), "refused"))
    assert [st.expect for st in s.timeline] == [StepOutcome.ACCEPTED, StepOutcome.REFUSED]
    with pytest.raises(ScenarioError, match=r"timeline\[0\].expect: expected one of \['accepted', 'refused'\]"):
        parse(with_change(("timeline", 0, "expect"), "maybe"))


NEW = {
    "state": {"check": "state", "at": 2, "guests": ["a"], "state": "retrying"},
    "retry-count": {"check": "retry-count", "at": 2, "min": 1, "max": 4},
    "schedule-delay": {"check": "schedule-delay", "at": 2, "max": 32},
    "free": {"check": "free", "at": 2, "min": "10m"},
    "sum": {"check": "sum", "at": 2, "guests": ["a", "b"], "min": "64m", "max": "128m"},
    "step": {"check": "step", "action": "mem-set", "target": "a", "outcome": "refused"},
}


@pytest.mark.parametrize("kind", NEW)
def test_the_new_expectations_parse(kind):
    exp = parse(with_change(("expect",), [NEW[kind]])).expectations[0]
    assert exp.check == kind
    if kind in ("free", "sum"):
        assert exp.low == size_to_pages(NEW[kind]["min"])
    if kind == "step":
        assert (exp.action, exp.target, exp.outcome, exp.moment) == (Action.MEM_SET, "a", StepOutcome.REFUSED, None)
    else:
        assert exp.moment == 2.0


@pytest.mark.parametrize(
    "kind, change, words",
    [
        ("state", {"state": "sleepy"}, "expected one of ['cancelled', 'done', 'hard-limited', 'retrying']"),
        ("state", {"at": None}, "'state' needs 'at'"),
        ("state", {"by": 2}, "unknown key(s) ['by']"),
        ("retry-count", {"min": None, "max": None}, "give 'min', 'max' or both"),
        ("retry-count", {"min": 5}, "'min' (5) is above 'max' (4)"),
        ("retry-count", {"min": "1"}, "expect[0].min: expected"),
        ("free", {"min": "lots"}, "expect[0].min"),
        ("free", {"guests": ["a"]}, "unknown key(s) ['guests']"),
        ("sum", {"guests": ["zed"]}, "no guest 'zed'"),
        ("sum", {"at": 9}, "after the scenario's duration"),
        ("step", {"outcome": "ignored"}, "expect[0].outcome"),
        ("step", {"target": "b"}, "no timeline step mem-set b"),
        ("step", {"at": 3}, "no timeline step mem-set a at 3 s"),
    ],
)
def test_the_new_expectations_refuse_mistakes_by_name(kind, change, words):
    data = dict(NEW[kind])
    for key, value in change.items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    with pytest.raises(ScenarioError) as err:
        parse(with_change(("expect",), [data]))
    assert words in str(err.value)


def test_an_expectation_without_check_is_refused():
    with pytest.raises(ScenarioError, match=r"expect\[0\]: missing 'check'"):
        parse(with_change(("expect",), [{"by": 2}]))


def test_speed_is_parsed_passed_to_guests_and_scales_the_clock():
    s = parse({**GOOD, "speed": 20})
    assert s.speed == 20.0
    args = s.guests[0].cli_args("ipc://x", None, speed=s.speed)
    assert args[args.index("--speed") + 1] == "20"
    assert "--speed" not in s.guests[0].cli_args("ipc://x", None)
    for bad in (0, -1, "fast"):
        with pytest.raises(ScenarioError, match="speed"):
            parse({**GOOD, "speed": bad})
    now = [100.0]
    clock = ScenarioClock(20, monotonic=lambda: now[0])
    now[0] = 100.25
    assert clock.now() == 5.0  # a quarter of a real second is 5 scenario seconds
    assert clock.real(32.0) == 1.6 and clock.scenario(0.1) == 2.0  # Linux's 32 s backoff; a report's age
    clock.restart()
    assert clock.now() == 0.0


def stats(state: str = "retrying", retry: int = 3, delay: float = 4.0) -> dict:
    return {"state": state, "retry_count": retry, "schedule_delay": delay}


def test_driver_expectations_are_judged_on_the_first_report_after_their_moment():
    def row(current, state, reported_s):
        return {"current_pages": current, "target_pages": 300, "balloon": stats(state), "reported_s": reported_s}

    rec = Recording(
        [
            Sample(1.0, 0, {"a": row(100, "retrying", 0.0)}, 100),
            Sample(2.1, 0, {"a": row(300, "retrying", 0.2)}, 300),  # reported at 1.9 s: before the moment
            Sample(2.3, 0, {"a": row(300, "done", 0.1)}, 300),  # reported at 2.2 s
        ]
    )
    s = parse(GOOD)
    exp = parse(with_change(("expect",), [dict(NEW["state"], state="done")])).expectations[0]
    ok, detail = evaluate(exp, rec, s)
    assert ok and "reported at 2.20 s" in detail
    assert not evaluate(replace(exp, at=2.25), rec, s)[0] and "no report from a" in evaluate(replace(exp, at=2.25), rec, s)[1]
    count = Expectation(Check.RETRY_COUNT, ("a",), at=2.0, low=1, high=2)
    assert not evaluate(count, rec, s)[0] and "expected 1..2" in evaluate(count, rec, s)[1]
    assert evaluate(replace(count, high=3), rec, s)[0]
    delay = Expectation(Check.SCHEDULE_DELAY, ("a",), at=2.0, low=8)
    assert not evaluate(delay, rec, s)[0]


def test_free_sum_and_step_expectations_judge_their_figures():
    rec = Recording(
        [Sample(t, 50, {"a": dom(100, 100), "b": dom(150, 150)}, 300) for t in (0.0, 1.5, 3.0)],
        [StepRecord(0.5, "mem-set a 32m", "refused", "EINVAL: no", "refused", 1.0, "mem-set", "a")],
    )
    s = parse(GOOD)
    assert evaluate(Expectation(Check.FREE, at=2.0, low=40, high=60), rec, s)[0]
    assert not evaluate(Expectation(Check.FREE, at=2.0, low=51), rec, s)[0]
    assert evaluate(Expectation(Check.SUM, ("a", "b"), at=2.0, low=250, high=250), rec, s)[0]
    assert not evaluate(Expectation(Check.SUM, ("a",), at=2.0, low=250), rec, s)[0]
    assert not evaluate(Expectation(Check.FREE, at=4.0, low=0), rec, s)[0]  # the run ended before 4 s
    step = Expectation(Check.STEP, action=Action.MEM_SET, target="a", outcome=StepOutcome.REFUSED)
    assert evaluate(step, rec, s) == (True, "at 0.50 s refused (EINVAL: no)")
    assert not evaluate(replace(step, outcome=StepOutcome.ACCEPTED), rec, s)[0]


def test_unbalanced_samples_are_named_with_their_time_and_figures():
    rec = Recording([Sample(0.5, 10, {"a": dom(80, 80)}, 100), Sample(1.25, 30, {"a": dom(70, 70)}, 100)])
    assert unbalanced(rec) == ["at 0.50 s: free 10 + domains 80 = 90 pages, not the total 100"]


def test_settled_since_is_the_last_arrival_at_target():
    rec = Recording(
        [Sample(0.0, 0, {"a": dom(1, 1)}), Sample(1.0, 0, {"a": dom(1, 2)}), Sample(2.0, 0, {"a": dom(2, 2)}), Sample(3.0, 0, {"a": dom(2, 2)})]
    )
    assert rec.converged_at() == 0.0 and rec.settled_since() == 2.0
    rec.samples.append(Sample(4.0, 0, {"a": dom(2, 3)}))
    assert rec.settled_since() is None


def test_last_error_is_the_last_error_line_else_the_last_words():
    log = '{"event": "registering", "level": "info"}\n{"event": "refused by the hypervisor", "level": "error", "error": "ENOMEM", "message": "cannot build"}\nguest x: ENOMEM: cannot build\n'
    assert last_error(log) == "refused by the hypervisor: ENOMEM: cannot build"
    assert last_error("usage: guest run ...\nguest: error: bad --memory\n") == "guest: error: bad --memory"
    assert last_error("") == "(its log is empty)"


@pytest.mark.timeout(60)  # five short-lived processes, on a loaded machine
def test_a_process_that_exits_on_its_own_with_an_error_misbehaved(tmp_path):
    from scenarios.runner import Runner

    s = parse(with_change(("expect",), [{"check": "exited", "guests": ["b"]}]))
    runner = Runner(s)
    try:
        procs = runner.procs
        failing = [procs.start(name, "json.tool", str(tmp_path / "missing.json")) for name in ("a", "a", "b", "c")]
        killed = procs.start("d", "json.tool", str(tmp_path / "missing.json"))
        runner._signalled.add(killed.pid)  # the runner's own kill
        for proc in [*failing, killed]:
            proc.wait(10)
        problems = runner._misbehaved()
    finally:
        runner.procs.stop_all()
    assert [p.split(" exited")[0] for p in problems] == ["a", "a (instance 1, a.1.log)", "c"]  # b may exit: an expectation says so
    assert all("with status 2: " in p and "No such file" in p for p in problems), problems


@pytest.mark.parametrize("action", ["restart", "kill", "stop", "start"])
def test_the_hypervisor_is_a_process_on_the_timeline(action):
    s = parse(with_change(("timeline", 0), {"at": 1, "action": action, "target": "hypervisor"}))
    assert (s.timeline[-1].action, s.timeline[-1].target) == (Action(action), "hypervisor")


@pytest.mark.parametrize("action", ["mem-set", "mem-max", "destroy"])
def test_the_hypervisor_is_not_a_domain(action):
    with pytest.raises(ScenarioError, match=r"timeline\[\d\]: the hypervisor is a process"):
        parse(with_change(("timeline", 0), {"at": 1, "action": action, "target": "hypervisor", "size": "1m"}))


def test_exited_takes_the_status_the_guests_must_end_with():
    s = parse(with_change(("expect",), [{"check": "exited", "guests": ["a"], "status": 3}]))
    assert s.expectations[0] == Expectation(Check.EXITED, ("a",), status=3)
    with pytest.raises(ScenarioError, match=r"'audit' takes .*unknown key\(s\) \['status'\]"):
        parse(with_change(("expect",), [{"check": "audit", "status": 3}]))


@pytest.mark.parametrize("driver", ["seed", "pre-patch"])
def test_max_retries_on_a_driver_without_a_retry_count_is_a_bad_file(driver):
    """guest run refuses --max-retries for seed and pre-patch (no such sysfs file): the file is
    refused before anything runs (exit 2), not reported as a guest that failed to start."""
    data = copy.deepcopy(GOOD)
    data["guest"][0].update(driver=driver, max_retries=4)
    with pytest.raises(ScenarioError, match=rf"guest\[0\].max_retries: the {driver} driver has no retry count"):
        parse(data)
    data["guest"][0]["driver"] = "3.1"
    assert parse(data).guests[0].max_retries == 4


@pytest.mark.timeout(60)
def test_exited_without_names_means_every_guest_and_kill_of_a_dead_process_is_refused(tmp_path):
    """`exited` with no `guests` is about every guest (it passed with none checked); a `kill` of a
    process that is no longer running did nothing, so the step is refused, as `start` of a
    running one is."""
    from hypervisor.toolstack import Toolstack
    from scenarios.runner import Run, Runner

    s = parse(with_change(("expect",), [{"check": "exited"}]))
    runner = Runner(s)
    runner.tool = Toolstack("ipc:///nonexistent/ballonet-admin", timeout=0.1, retries=0)
    try:
        procs = runner.procs
        procs.start("a", "json.tool", str(tmp_path / "missing.json")).wait(10)  # gone
        procs.start("b", "guest", "run", "--name", "b", "--memory", "1m", "--hypervisor", "ipc:///nonexistent/ballonet-hv")
        run = Run(s, Recording())
        runner._finish(run)
        (outcome,) = [o for o in run.outcomes if o.expectation.check is Check.EXITED]
        assert not outcome.passed and "still running: ['b']" in outcome.detail
        step = runner._play(replace(s.timeline[0], action=Action.KILL, target="a", size=None))
        assert (step.outcome, step.message) == ("refused", "not running")
    finally:
        runner.tool.close()
        runner.procs.stop_all()


# --- [[fleet]]: many guests from one table ---------------------------------------------------------

FLEET = {
    "name": "f",
    "memory": "1g",
    "duration": 5,
    "defaults": {"retry_delay": 0.5, "heartbeat": 0.3},
    "guest": [{"name": "solo", "memory": "64m"}],
    "fleet": [{"name": "web", "count": 3, "memory": "16m..32m", "maxmem": "64m", "behaviour": "slow:100", "heartbeat": 1.0}],
    "timeline": [
        {"at": 1, "action": "mem-set", "target": "web", "size": "8m..16m"},
        {"at": 2, "action": "kill", "target": "web2"},
        {"at": 2, "action": "behave", "target": "web", "stuck": True},
    ],
    "expect": [{"check": "at-target", "by": 3, "guests": ["web", "solo"]}, {"check": "sum", "at": 3, "guests": ["web"], "min": "1m"}],
}


def fleet_with(change: dict, fleet: int = 0) -> dict:
    data = copy.deepcopy(FLEET)
    data["fleet"][fleet].update(change)
    return data


def test_a_fleet_is_its_guests_sized_as_guest_fleet_sizes_them():
    s = parse(FLEET)
    assert [g.name for g in s.guests] == ["solo", "web1", "web2", "web3"]
    web = s.guests[1:]
    # guest i of 3 gets 16m + (32m - 16m) * i / 2: 16m, 24m, 32m (in KiB, as guest/fleet_plan.py writes them)
    assert [size_to_pages(g.memory) for g in web] == [16 * 256, 24 * 256, 32 * 256]
    assert {size_to_pages(g.maxmem) for g in web} == {64 * 256}
    assert {(g.behaviour, g.heartbeat, g.retry_delay) for g in web} == {("slow:100", 1.0, 0.5)}  # its own keys over [defaults]
    assert s.members("web") == ("web1", "web2", "web3") and s.members("solo") == ("solo",)
    assert s.fleet("solo") is None
    mem_set = next(st for st in s.timeline if st.action is Action.MEM_SET)
    assert (mem_set.target, mem_set.size) == ("web", "8m..16m")
    from scenarios.runner import _names

    assert _names(s.expectations[0], s) == ("web1", "web2", "web3", "solo")


def test_a_scenario_may_be_fleets_only_and_name_the_prefix():
    data = copy.deepcopy(FLEET)
    del data["guest"]
    data["fleet"][0].update(name_prefix="w-", first=0)
    data["expect"] = [{"check": "audit"}]
    data["timeline"] = []
    s = parse(data)
    assert [g.name for g in s.guests] == ["w-0", "w-1", "w-2"]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"count": 0}, "fleet[0]: --count must be 1..10000"),
        ({"memory": "32m..16m"}, "fleet[0].memory: range '32m..16m': the high end is below the low end"),
        ({"maxmem": "20m"}, "guest web2: maxmem 20480k is below its memory 24576k"),
        ({"name_prefix": "-x"}, "--name-prefix '-x'"),
        ({"behaviour": "sleepy"}, "fleet[0] (web1).behaviour"),
        ({"colour": "red"}, "fleet[0]: unknown key(s) ['colour']"),
        ({"name": "solo"}, "a fleet's name must differ"),
    ],
)
def test_fleet_mistakes_are_refused_by_name(change, words):
    data = fleet_with(change)
    with pytest.raises(ScenarioError) as err:
        parse(data)
    assert words in str(err.value)


def test_guest_names_a_fleet_makes_must_not_clash():
    data = copy.deepcopy(FLEET)
    data["guest"].append({"name": "web2", "memory": "8m"})
    with pytest.raises(ScenarioError, match=r"guest names must be unique, got \['web2'\] twice"):
        parse(data)


def test_a_fleet_on_the_timeline_takes_sizes_and_behaviour_but_no_process_action():
    data = copy.deepcopy(FLEET)
    data["timeline"][1] = {"at": 2, "action": "kill", "target": "web"}
    with pytest.raises(ScenarioError, match=r"timeline\[\d\]: a fleet \('web'\) can be mem-set, mem-max, behave as a whole, not kill"):
        parse(data)
    data["timeline"][1] = {"at": 2, "action": "mem-set", "target": "web2", "size": "8m..16m"}  # a range is for a fleet
    with pytest.raises(ScenarioError, match=r"timeline\[1\].size"):
        parse(data)
    data["timeline"][1] = {"at": 2, "action": "mem-max", "target": "web", "size": "lots..more"}
    with pytest.raises(ScenarioError, match=r"timeline\[1\].size: .*a size, or a range LO..HI"):
        parse(data)
