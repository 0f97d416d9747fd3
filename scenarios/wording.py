"""How a step and an expectation read, in report.txt, report.html and the live progress alike."""

from __future__ import annotations

from scenarios.recording import StepRecord
from scenarios.runner import Outcome
from scenarios.spec import Check


def step_line(step: StepRecord) -> str:
    """`mem-max a 16m: refused (EINVAL: ...)`, and whether that is what the file expected."""
    said = f" ({step.message})" if step.message else ""
    verdict = "" if step.as_expected else f"  [FAIL: expected {step.expected}]"
    return f"{step.label}: {step.outcome}{said}{verdict}"


def expectation_line(o: Outcome) -> str:
    e = o.expectation
    what = str(e.check)
    if e.check is Check.STEP:
        what += f" {e.action} {e.target}" + (f" at {e.at:g} s" if e.at is not None else "") + f" {e.outcome}"
    elif e.by is not None:
        what += f" by {e.by:g} s"
    elif e.at is not None:
        what += f" at {e.at:g} s"
    if e.check is Check.STATE:
        what += f" {e.state}"
    if e.check is Check.AT_TARGET:
        what += f" within {e.pages} pages"
    if e.check is Check.OFF_TARGET:
        what += f" more than {e.pages} pages away"
    guests = f" {list(e.guests)}" if e.guests else ""
    return f"[{'ok' if o.passed else 'FAIL'}] {what}{guests}: {o.detail}"
