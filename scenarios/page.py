"""report.html: the whole story of a run in one self-contained page (no server, no scripts, no
fetches): the verdict, what misbehaved, the plot and the driver-state strips inline, every
timeline step and expectation with its verdict, each guest at the end, and links to the logs
and series beside it."""

from __future__ import annotations

from html import escape
from pathlib import Path

from scenarios.aggregate import WORST_LISTED, many, ranked, summary
from scenarios.crowd_plot import render_crowd, render_state_counts
from scenarios.plot import STATE_COLOURS, render, render_states
from scenarios.wording import expectation_line
from scenarios.runner import Run
from wire.sizes import pages_to_mib

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1000px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.verdict { font-weight: bold; padding: 0.1em 0.5em; border-radius: 4px; color: white; }
.pass { background: #2ca02c; } .fail { background: #d62728; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.bad td { background: #fde4e4; }
.note { color: #555; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _verdict(ok: bool) -> str:
    return f'<span class="verdict {"pass" if ok else "fail"}">{"ok" if ok else "FAIL"}</span>'


def render_page(run: Run, logs: list[str]) -> str:
    s, rec = run.scenario, run.recording
    e = escape
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(s.name)}: {"PASSED" if run.passed else "FAILED"}</title><style>{STYLE}</style></head><body>',
        f'<h1>scenario {e(s.name)} <span class="verdict {"pass" if run.passed else "fail"}" id="verdict">{"PASSED" if run.passed else "FAILED"}</span></h1>',
        f"<p>{e(s.description)}</p>" if s.description else "",
        '<p class="note">Times are scenario seconds after the timeline started'
        + (f" (speed &times;{s.speed:g}: {run.real_seconds:.1f} s of real time)" if s.speed != 1 else "")
        + (f"; ran {rec.samples[-1].t:.1f} s, {len(rec.samples)} samples, each one snapshot of the host." if rec.samples else ".")
        + "</p>",
    ]
    if run.problems:
        out.append("<h2>Processes that misbehaved</h2><ul>" + "".join(f"<li>{_verdict(False)} {e(p)}</li>" for p in run.problems) + "</ul>")
    crowd = many(rec.names())
    if rec.samples and crowd:
        out.append("<h2>Memory</h2>")
        out.append(f'<p class="note">{len(rec.names())} guests: the crowd\'s distance to its targets, and the few worst by name.</p>')
        out.append(render_crowd(rec, f"{s.name}: {len(rec.names())} guests, how far from their targets"))
        out.append("<h2>Driver state</h2>")
        out.append(render_state_counts(rec))
    elif rec.samples:
        out.append("<h2>Memory</h2>")
        out.append(render(rec, f"{s.name}: memory per domain over time"))
        out.append("<h2>Driver state</h2>")
        out.append(render_states(rec))
    out.append("<h2>Timeline</h2>")
    if rec.steps:
        out.append("<table id=\"steps\"><tr><th></th><th>at (s)</th><th>played (s)</th><th>step</th><th>outcome</th><th>expected</th><th>message</th></tr>")
        for st in rec.steps:
            out.append(
                f'<tr class="{"" if st.as_expected else "bad"}"><td>{_verdict(st.as_expected)}</td><td class="num">{st.at:.2f}</td>'
                f'<td class="num">{st.t:.2f}</td><td>{e(st.label)}</td><td>{e(st.outcome)}</td><td>{e(st.expected)}</td><td>{e(st.message)}</td></tr>'
            )
        out.append("</table>")
    else:
        out.append("<p>no steps played</p>")
    out.append("<h2>Expectations</h2>")
    if run.outcomes:
        out.append('<table id="expectations"><tr><th></th><th>expectation and what was seen</th></tr>')
        for o in run.outcomes:
            line = expectation_line(o).split("] ", 1)[1]
            out.append(f'<tr class="{"" if o.passed else "bad"}"><td>{_verdict(o.passed)}</td><td>{e(line)}</td></tr>')
        out.append("</table>")
    else:
        out.append("<p>not judged: the timeline was not played</p>")
    books = "free + owned = total on every sample" if not run.books else "free + owned != total on: " + "; ".join(run.books)
    out.append(f"<p>{_verdict(not run.books)} books: {e(books)}</p>")
    out.append(f"<p>{_verdict(bool(run.audit_ok))} audit: {e(run.audit_text)}</p>")
    if rec.samples:
        last = rec.samples[-1]
        records = ranked(rec) if crowd else None
        out.append("<h2>Guests at the end</h2>")
        if records is not None:
            out.append(f'<p class="note">The {WORST_LISTED} worst of {len(records)} guests: furthest from their targets at the end, then over the run.</p>')
        out.append("<table id=\"guests\"><tr><th>guest</th><th>memory (MiB)</th><th>target (MiB)</th><th>driver state</th><th>at target since (s)</th></tr>")
        shown = [r.name for r in records[:WORST_LISTED]] if records is not None else list(last.domains)
        for name in shown:
            d = last.domains.get(name)
            if d is None:
                out.append(f'<tr class="bad"><td>{e(name)}</td><td colspan="4">no domain at the end</td></tr>')
                continue
            since = rec.reached_at(name)
            state = str(d.get("balloon", {}).get("state", "-"))
            swatch = f'<span style="color:{STATE_COLOURS.get(state, "#999")}">&#9632;</span> '
            out.append(
                f"<tr><td>{e(name)}</td><td class=\"num\">{pages_to_mib(d['current_pages'])}</td><td class=\"num\">{pages_to_mib(d['target_pages'])}</td>"
                f"<td>{swatch}{e(state)}</td><td class=\"num\">{'-' if since is None else f'{since:.1f}'}</td></tr>"
            )
        if records is not None and len(records) > WORST_LISTED:
            out.append(f'<tr id="rest"><td colspan="5">and {e(summary(records[WORST_LISTED:]))}</td></tr>')
        out.append("</table>")
        first, settled = rec.converged_at(), rec.settled_since()
        out.append(
            f"<p>every guest at target: first {'never' if first is None else f'{first:.1f} s'}, "
            f"settled since {'-' if settled is None else f'{settled:.1f} s'}</p>"
        )
    out.append("<h2>Files</h2><ul id=\"logs\">")
    for name in ("report.txt", "series.csv", "series.json", "plot.svg"):
        out.append(f'<li><a href="{e(name)}">{e(name)}</a></li>')
    links = [f'<li><a href="logs/{e(name)}">logs/{e(name)}</a></li>' for name in logs]
    if crowd and len(links) > WORST_LISTED:  # a thousand guests' logs, folded
        out.append("</ul>")
        out.append(f"<details><summary>{len(links)} logs</summary><ul>" + "".join(links) + "</ul></details>")
    else:
        out += links
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(part for part in out if part)


def write_page(run: Run, out_dir: Path) -> Path:
    logs_dir = out_dir / "logs"
    logs = sorted(p.name for p in logs_dir.glob("*.log")) if logs_dir.is_dir() else []
    path = out_dir / "report.html"
    path.write_text(render_page(run, logs))
    return path
