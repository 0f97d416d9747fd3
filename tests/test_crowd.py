"""A crowd of guests in a report: the aggregation's figures (nearest-rank percentiles of the
distance to target, the worst guests), and the text, plot and page that show them."""

from __future__ import annotations

import re

import pytest

from scenarios import report
from scenarios.aggregate import AGGREGATE_ABOVE, WORST_LISTED, WORST_SHOWN, percentile, ranked, spread, summary
from scenarios.recording import Recording, Sample, StepRecord
from scenarios.runner import Run
from scenarios.spec import parse

MIB = 256


# --- percentiles: nearest rank, P-th of N sorted values is the one at rank ceil(P/100 * N) ------
# Expected values from the definition (Hyndman & Fan 1996, definition 1; Wikipedia "Percentile",
# "The nearest-rank method", whose worked examples these are), worked by hand.


@pytest.mark.parametrize(
    "values, wanted",
    [
        # N = 5: ranks ceil(0.25) = 1, ceil(1.5) = 2, ceil(2.0) = 2, ceil(2.5) = 3, 5
        ([15, 20, 35, 40, 50], {5: 15, 30: 20, 40: 20, 50: 35, 100: 50}),
        # N = 10: ranks ceil(2.5) = 3, 5, ceil(7.5) = 8, 10
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], {25: 7, 50: 8, 75: 15, 100: 20}),
        # N = 11: ranks ceil(2.75) = 3, ceil(5.5) = 6, ceil(8.25) = 9, 11
        ([3, 6, 7, 8, 8, 9, 10, 13, 15, 16, 20], {25: 7, 50: 9, 75: 15, 100: 20}),
    ],
    ids=["five", "ten", "eleven"],
)
def test_percentiles_are_nearest_rank(values, wanted):
    shuffled = values[1::2] + values[0::2]  # the order they come in does not matter
    assert {p: percentile(shuffled, p) for p in wanted} == wanted


def test_percentile_edges():
    values = list(range(1, 11))  # 1..10
    assert percentile(values, 0) == 1  # the smallest
    assert percentile(values, 90) == 9  # rank ceil(9.0) = 9, exactly: no float 9.000000000000002
    assert percentile(values, 70) == 7  # 0.7 * 10 is 7.000000000000001 in floats; rank 7
    assert percentile([4], 50) == 4
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


def domain(current: int, target: int, state: str | None = "done") -> dict:
    return {"current_pages": current, "target_pages": target, "balloon": {"state": state} if state else {}, "reported_s": 0.1}


def test_spread_per_sample():
    rec = Recording([
        Sample(0.0, 100, {"a": domain(10, 10), "b": domain(20, 15, "retrying"), "c": domain(5, 9, None)}),
        Sample(0.5, 100, {"a": domain(10, 10), "b": domain(15, 15)}),  # c has no domain any more
    ])
    first, second = spread(rec)
    # distances 0, 5, 4: sorted 0 4 5; p50 rank ceil(1.5) = 2 -> 4, p90 rank ceil(2.7) = 3 -> 5
    assert (first.guests, first.p50, first.p90, first.max, first.at_target) == (3, 4, 5, 5, 1)
    assert first.states == {"done": 1, "retrying": 1, "-": 1}
    assert (second.guests, second.p50, second.max, second.at_target, second.states) == (2, 0, 0, 2, {"done": 2})


def test_the_worst_are_gone_first_then_furthest_at_the_end_then_over_the_run():
    rec = Recording([
        Sample(0.0, 0, {"far": domain(0, 8), "slow": domain(0, 40), "fine": domain(4, 4), "gone": domain(0, 1), "late": domain(0, 40)}),
        Sample(1.0, 0, {"far": domain(0, 8), "slow": domain(40, 40), "fine": domain(4, 4), "late": domain(0, 40)}),
        Sample(2.0, 0, {"far": domain(0, 8), "slow": domain(40, 40), "fine": domain(4, 4), "late": domain(38, 40)}),
    ])
    order = [r.name for r in ranked(rec)]
    # gone: no domain at the end; far and late 8 and 2 pages off at the end; slow and fine at
    # target, slow 40/3 pages off on average, fine never
    assert order == ["gone", "far", "late", "slow", "fine"]
    rest = summary(ranked(rec)[1:])
    assert rest.startswith("4 more guests; 2 at target; distance to target p50 0 / p90 0.03 / max 0.03 MiB"), rest


def crowd(guests: int = 200, samples: int = 30) -> Run:
    """A synthetic run of `guests` guests: squeezed at 1 s, each taking longer than the one before
    to get there, three never (stuck), one destroyed at 4 s."""
    names = [f"vm{i:03d}" for i in range(guests)]
    scenario = parse({"name": "crowd", "memory": "64g", "duration": 7.5, "guest": [{"name": n, "memory": "256m"} for n in names]})
    out = []
    for k in range(samples):
        t = k * 0.25
        domains = {}
        for i, name in enumerate(names):
            if name == "vm007" and t >= 4:
                continue
            target = 256 * MIB if t < 1 else 192 * MIB
            speed = (i % 50 + 1) * MIB  # pages per sample
            stuck = i in (3, 150, 151)
            current = 256 * MIB if stuck else max(target, 256 * MIB - int(max(0.0, t - 1) * 4 * speed))
            domains[name] = domain(current, target, "retrying" if stuck and t >= 1 else "done")
        used = sum(d["current_pages"] for d in domains.values())
        out.append(Sample(t, 64 * 1024 * MIB - used, domains, 64 * 1024 * MIB))
    steps = [StepRecord(1.0, "mem-set crowd 192m", "accepted", "", "accepted", 1.0, "mem-set", "crowd")]
    return Run(scenario, Recording(out, steps), audit_ok=True, audit_text="books balance")


def test_a_crowds_text_report_lists_the_worst_and_sums_up_the_rest():
    text = report.text(crowd())
    rows = [line.split()[0] for line in text.splitlines()[text.splitlines().index(next(x for x in text.splitlines() if "worst of 200" in x)) + 2:]][:WORST_LISTED]
    assert rows[:4] == ["vm007", "vm003", "vm150", "vm151"], text  # gone, then the three stuck (64m off)
    assert "vm007 no domain at the end" in " ".join(text.split()), text
    assert re.search(r"and 190 more guests; \d+ at target; distance to target p50 0 / p90 0 / max 0 MiB; states done 190", text), text
    assert sum(line.lstrip().startswith("vm") for line in text.splitlines()) == WORST_LISTED


def test_a_few_guests_are_shown_one_by_one_as_before(tmp_path):
    small = crowd(guests=AGGREGATE_ABOVE)
    text = report.text(small)
    assert "worst of" not in text and "more guests" not in text
    assert sum(line.lstrip().startswith("vm") for line in text.splitlines()) == AGGREGATE_ABOVE - 1  # vm007 gone at the end
    report.write(small, tmp_path)
    svg = (tmp_path / "plot.svg").read_text()
    assert svg.count("<polyline") == 1 + 2 * AGGREGATE_ABOVE  # the pool, and each guest's memory and target


@pytest.mark.timeout(120)
def test_a_crowds_page_opens_in_headless_chromium_with_aggregates(tmp_path):
    from tests.browser import chromium, dom, screenshot

    browser = chromium()
    run = crowd()
    (tmp_path / "logs").mkdir()
    for i in range(200):
        (tmp_path / "logs" / f"vm{i:03d}.log").write_text("{}\n")
    report.write(run, tmp_path)
    parsed = dom(browser, tmp_path / "report.html")
    assert parsed.count("<svg") == 2  # the crowd's distance and pool; its states, stacked
    assert "p50 of 200 guests" in parsed and "p90 of 200 guests" in parsed and "max of 200 guests" in parsed
    worst = [r.name for r in ranked(run.recording)[:WORST_SHOWN]]
    for name in worst:
        assert f">{name}<" in parsed, name  # named in the plot's legend
    assert parsed.count("<polyline") == 3 + WORST_SHOWN + 1  # p50, p90, max, the worst, the pool: not 200 lines
    table = parsed[parsed.index('id="guests"'):]
    table = table[: table.index("</table>")]
    assert table.count("<tr") == 1 + WORST_LISTED + 1, table  # the header, the worst, the rest in one row
    assert "and 190 more guests" in table
    assert "<summary>200 logs</summary>" in parsed
    svg = (tmp_path / "plot.svg").read_text()
    assert svg.count("<polyline") == 3 + WORST_SHOWN + 1 and "how far from their targets" in svg
    png = screenshot(browser, tmp_path / "report.html", tmp_path / "report.png", height=1600)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
