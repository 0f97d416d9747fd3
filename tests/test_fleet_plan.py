"""guest/fleet_plan.py: which guests a fleet starts, and the checks made before any fork."""

from __future__ import annotations

import pytest

from guest.cli import UsageError, parse_run
from guest.fleet_plan import MAX_FLEET, PlanError, SizeRange, from_lines, from_ranges

pytestmark = pytest.mark.timeout(10)
MIB = 256  # pages


def test_a_range_spreads_sizes_evenly_from_low_to_high():
    sizes = SizeRange.parse("64m..128m")
    assert [sizes.pages_for(i, 5) for i in range(5)] == [64 * MIB, 80 * MIB, 96 * MIB, 112 * MIB, 128 * MIB]


def test_a_single_size_is_every_guests_size():
    assert {SizeRange.parse("256m").pages_for(i, 7) for i in range(7)} == {256 * MIB}


@pytest.mark.parametrize("text", ["128m..64m", "x..1g", "1g..", "..1g", "١٢m"])
def test_a_bad_range_is_a_plan_error(text):
    with pytest.raises(PlanError):
        SizeRange.parse(text)


def test_ranges_name_guests_from_the_prefix_and_put_common_flags_last():
    plan = from_ranges(3, "web", SizeRange.parse("64m..128m"), SizeRange.parse("256m"), first=7, common=("--speed", "10"))
    assert [g.name for g in plan] == ["web7", "web8", "web9"]
    assert plan[1].argv == ("--name", "web8", "--memory", "98304k", "--maxmem", "262144k", "--speed", "10")


def test_a_maxmem_below_a_guests_memory_names_that_guest():
    with pytest.raises(PlanError, match="guest g2: maxmem 131072k is below its memory 163840k"):
        from_ranges(3, "g", SizeRange.parse("64m..256m"), SizeRange.parse("128m"))


@pytest.mark.parametrize("count", [0, MAX_FLEET + 1])
def test_the_count_is_bounded(count):
    with pytest.raises(PlanError, match="--count"):
        from_ranges(count, "g", SizeRange.parse("64m"))


@pytest.mark.parametrize("prefix", ["", "1g", "a b", "x" * 49, "-g"])
def test_a_prefix_that_makes_bad_names_is_refused(prefix):
    with pytest.raises(PlanError, match="--name-prefix"):
        from_ranges(2, prefix, SizeRange.parse("64m"))


def test_the_common_flags_may_not_name_the_guests():
    with pytest.raises(PlanError, match="--name is set per guest"):
        from_ranges(2, "g", SizeRange.parse("64m"), common=("--name=x",))


def test_a_fleet_file_has_a_guest_per_line_with_comments_and_quoting():
    lines = ["# the host", "", "db --memory 600m --maxmem 768m --workload 300m  # slow", "'web 1' --memory 256m"]
    plan = from_lines(lines, common=("--speed", "5"))
    assert [(g.name, g.argv) for g in plan] == [
        ("db", ("--name", "db", "--memory", "600m", "--maxmem", "768m", "--workload", "300m", "--speed", "5")),
        ("web 1", ("--name", "web 1", "--memory", "256m", "--speed", "5")),
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["db --memory 1g", "db --memory 2g"], "line 2: guest 'db' is named twice"),
        (["--memory 1g"], "line 1: a line starts with the guest's name"),
        (["db --name x --memory 1g"], "line 1: --name is set per guest"),
        (["db 'unclosed"], "line 1"),
        (["# nothing"], "names no guest"),
    ],
)
def test_a_bad_fleet_file_says_which_line(lines, message):
    with pytest.raises(PlanError, match=message):
        from_lines(lines)


def test_each_guests_flags_are_checked_as_guest_run_checks_them():
    launch, args = parse_run(["--name", "a", "--memory", "64m", "--maxmem", "128m"])
    assert (launch.name, args.memory, args.maxmem) == ("a", 64 * MIB, 128 * MIB)
    for bad, message in [
        (["--name", "a", "--memory", "128m", "--maxmem", "64m"], "--maxmem must not be below --memory"),
        (["--name", "a", "--memory", "64m", "--stuck", "--balloon-rate", "5"], "--stuck never moves"),
        (["--name", "a", "--memory", "lots"], "invalid size"),
        (["--memory", "64m"], "--name is required"),
        (["--name", "a", "--memory", "64m", "--no-such-flag"], "unrecognized arguments"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_run(bad)
