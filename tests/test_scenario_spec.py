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
    "guest": [{"name": "a", "memory": "64m", "behaviour": "slow:100"}, {"name": "b", "memory": "64m", "legacy": True}],
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


def test_a_good_scenario_parses_with_defaults_and_sorted_timeline():
    s = parse(GOOD)
    assert [g.retry_delay for g in s.guests] == [0.5, 0.5]
    assert [st.action for st in s.timeline] == [Action.KILL, Action.MEM_SET]
    assert s.expectations[0] == Expectation(Check.AT_TARGET, ("a",), 3.0, 0)
    assert "--balloon-rate" in s.guests[0].cli_args("ipc://x", None)
    assert "--legacy-hard-limit" in s.guests[1].cli_args("ipc://x", None)
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
        (("guest", 0, "legacy"), "yes", "legacy"),
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
    with pytest.raises(ScenarioError, match="'status' belongs to 'exited' only"):
        parse(with_change(("expect",), [{"check": "audit", "status": 3}]))
