"""SVG pictures of a crowd (more than AGGREGATE_ABOVE guests), where a line per guest would be
a smear: how far the crowd is from its targets (the p50, p90 and max of every guest's distance,
scenarios/aggregate.py) with the few worst guests by name, the pool's free memory under it,
and how many drivers are in each state, stacked.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from scenarios.aggregate import NO_REPORT, WORST_SHOWN, Spread, distance, ranked, spread
from scenarios.plot import (
    AXIS, LEFT, LEGEND_COLUMNS, LEGEND_ROW, NO_DOMAIN, PAGES_PER_MIB, RIGHT, STATE_COLOURS, TOP, UNKNOWN_STATE, WIDTH,
    polyline, state_legend, tick_text, time_axis, nice_ticks,
)
from scenarios.recording import Recording

DISTANCE_H, POOL_H, GAP = 300, 130, 46  # the two panels' plot heights, and the room between them
FIGURES = (("p50", "#1f77b4", 2.5), ("p90", "#ff7f0e", 2.5), ("max", "#d62728", 1.5))
WORST_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


class _Panel:
    """One plot area: scenario time across, a value up."""

    def __init__(self, top: float, height: float, t_max: float, v_max: float) -> None:
        self.top, self.height, self.t_max, self.v_max = top, height, t_max, v_max
        self.width = WIDTH - LEFT - RIGHT

    def x(self, t: float) -> float:
        return LEFT + self.width * t / self.t_max

    def y(self, value: float) -> float:
        return self.top + self.height * (1 - value / self.v_max)

    def frame(self, seconds: list[float], ticks: list[float], label: str) -> list[str]:
        parts = []
        for value in ticks:
            yy = self.y(value)
            parts.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + self.width}" y2="{yy:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{tick_text(value)}</text>')
        bottom = self.top + self.height
        for value in seconds:
            xx = self.x(value)
            parts.append(f'<line x1="{xx:.1f}" y1="{self.top}" x2="{xx:.1f}" y2="{bottom}" stroke="#eee"/>')
            parts.append(f'<text x="{xx:.1f}" y="{bottom + 16}" text-anchor="middle">{tick_text(value)}</text>')
        mid = self.top + self.height / 2
        parts += [
            f'<line x1="{LEFT}" y1="{bottom}" x2="{LEFT + self.width}" y2="{bottom}" stroke="black"/>',
            f'<line x1="{LEFT}" y1="{self.top}" x2="{LEFT}" y2="{bottom}" stroke="black"/>',
            f'<text x="16" y="{mid:.1f}" transform="rotate(-90 16 {mid:.1f})" text-anchor="middle">{escape(label)}</text>',
        ]
        return parts

    def steps(self, rec: Recording) -> list[str]:
        out = []
        for step in rec.steps:
            tip = escape(f"{step.t:.2f} s {step.label}: {step.outcome}")
            xx = self.x(step.t)
            out.append(f'<line x1="{xx:.1f}" y1="{self.top}" x2="{xx:.1f}" y2="{self.top + self.height}" stroke="#999" stroke-dasharray="2 3"><title>{tip}</title></line>')
        return out


def render_crowd(rec: Recording, title: str) -> str:
    """Distance to target (p50, p90, max, and the worst guests), then the pool's free memory."""
    figures = spread(rec)
    worst = [r.name for r in ranked(rec)[:WORST_SHOWN]]
    seconds = time_axis(rec)
    t_max = seconds[-1]
    peak = max([f.max for f in figures] + [1]) / PAGES_PER_MIB
    gap_ticks = nice_ticks(max(peak, 1 / 4))
    free_ticks = nice_ticks(max([f.free_pages for f in figures] + [PAGES_PER_MIB]) / PAGES_PER_MIB, 3)
    gaps = _Panel(TOP + 10, DISTANCE_H, t_max, gap_ticks[-1])
    pool = _Panel(gaps.top + DISTANCE_H + GAP, POOL_H, t_max, free_ticks[-1])
    legend = [(f"{name} of {_guests(figures)}", colour) for name, colour, _ in FIGURES]
    legend += [(name, colour) for name, colour in zip(worst, WORST_COLOURS)]
    legend.append(("free pool", "#000"))
    legend_top = pool.top + POOL_H + AXIS
    legend_rows = -(-len(legend) // LEGEND_COLUMNS)
    height = legend_top + LEGEND_ROW * (legend_rows + 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15">{escape(title)}</text>',
        *gaps.frame(seconds, gap_ticks, "MiB from target"),
        *gaps.steps(rec),
        *pool.frame(seconds, free_ticks, "free MiB"),
        *pool.steps(rec),
        f'<text x="{LEFT + gaps.width / 2}" y="{pool.top + POOL_H + 34}" text-anchor="middle">seconds after the timeline started (scenario time)</text>',
    ]
    for name, colour in zip(worst, WORST_COLOURS):  # under the percentiles: the crowd's figures stay readable
        rows = [(s.t, s.domains[name]) for s in rec.samples if name in s.domains]
        line = [(gaps.x(t), gaps.y(distance(d) / PAGES_PER_MIB)) for t, d in rows]
        parts.append(polyline(line, colour, dashed=True, width=1.2))
    for name, colour, width in FIGURES:
        parts.append(polyline([(gaps.x(f.t), gaps.y(getattr(f, name) / PAGES_PER_MIB)) for f in figures], colour, width=width))
    parts.append(polyline([(pool.x(f.t), pool.y(f.free_pages / PAGES_PER_MIB)) for f in figures], "#000", width=1.5))
    column_w = (WIDTH - LEFT) / LEGEND_COLUMNS
    for i, (label, colour) in enumerate(legend):
        lx, ly = LEFT + column_w * (i % LEGEND_COLUMNS), legend_top + LEGEND_ROW * (i // LEGEND_COLUMNS)
        parts.append(f'<line x1="{lx:.1f}" y1="{ly}" x2="{lx + 25:.1f}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{lx + 31:.1f}" y="{ly + 4}">{escape(label[:24])}</text>')
    parts.append(
        f'<text x="{LEFT}" y="{legend_top + LEGEND_ROW * legend_rows + 4}" fill="#666">solid: the p50, p90 and max of every guest\'s '
        f"distance to its target (nearest rank); dashed: the {len(worst)} worst guests; dotted grey: timeline steps</text>"
    )
    parts.append("</svg>")
    return "\n".join(p for p in parts if p)


def _guests(figures: list[Spread]) -> str:
    most = max((f.guests for f in figures), default=0)
    return f"{most} guests"


def render_state_counts(rec: Recording) -> str:
    """How many drivers reported each state, sample by sample, stacked (guests with no domain
    on top), on the plot's time axis."""
    figures = spread(rec)
    total = len(rec.names()) or 1
    seconds = time_axis(rec)
    panel = _Panel(TOP + 10, 200, seconds[-1], total)
    order = [*STATE_COLOURS, NO_REPORT]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{panel.top + panel.height + AXIS + 2 * LEGEND_ROW}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15">driver state over time: how many of the {total} guests reported each</text>',
        *panel.frame(seconds, [v for v in nice_ticks(total, 4) if v <= total], "guests"),
    ]
    for j, f in enumerate(figures):
        end = figures[j + 1].t if j + 1 < len(figures) else f.t
        if end <= f.t:
            continue
        below = 0
        others = sum(n for state, n in f.states.items() if state not in order)
        for state, n in [*((s, f.states.get(s, 0)) for s in order), ("other", others), ("no domain", total - f.guests)]:
            if n <= 0:
                continue
            colour = STATE_COLOURS.get(state, NO_DOMAIN if state == "no domain" else UNKNOWN_STATE)
            y_top, y_bottom = panel.y(below + n), panel.y(below)
            tip = escape(f"{n} {state} at {f.t:.2f} s")
            parts.append(
                f'<rect x="{panel.x(f.t):.1f}" y="{y_top:.1f}" width="{max(0.5, panel.x(end) - panel.x(f.t)):.1f}" '
                f'height="{y_bottom - y_top:.1f}" fill="{colour}" shape-rendering="crispEdges"><title>{tip}</title></rect>'
            )
            below += n
    parts += panel.steps(rec)
    ly = panel.top + panel.height + AXIS + 6
    parts += state_legend(LEFT, ly)
    parts.append("</svg>")
    return "\n".join(parts)
