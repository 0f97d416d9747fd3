"""Scenario files: what loads, and every mistake refused with the key at fault named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from scenarios.recording import Recording, Sample
from scenarios.runner import evaluate
from scenarios.spec import Action, Check, Expectation, ScenarioError, load, parse

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
