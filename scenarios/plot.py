"""SVG pictures of a run, written with the standard library so the runner needs no plotting
package: each domain's memory over time (its target dashed) with the pool's free pages, and
each guest's driver state over time as a strip.

Axes have round ticks (1, 2 or 5 times a power of ten, in MiB and seconds); colours are
spaced around the hue circle so that 30 guests stay apart, and the legend wraps into columns
under the plot rather than running off it.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from xml.sax.saxutils import escape

from scenarios.recording import Recording
from wire.sizes import pages_to_mib

WIDTH, PLOT_HEIGHT, LEFT, RIGHT, TOP, AXIS = 900, 380, 70, 30, 40, 50
LEGEND_COLUMNS, LEGEND_ROW = 5, 18
BASE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
STATE_COLOURS = {
    "done": "#2ca02c",
    "retrying": "#ff9f1c",
    "cancelled": "#d62728",
    "hard-limited": "#7b3fb5",
}
UNKNOWN_STATE, NO_DOMAIN = "#c8c8c8", "#ffffff"
PAGES_PER_MIB = 256


def colours(n: int) -> list[str]:
    """`n` distinct line colours: the usual ten, else groups of ten hues evenly around the
    circle, each group at its own lightness (mid, dark, light) and shifted by half a hue step,
    so two guests that share a hue differ clearly in lightness."""
    if n <= len(BASE_COLOURS):
        return BASE_COLOURS[:n]
    out = []
    for i in range(n):
        group = i // 10
        hue = ((i % 10) / 10 + group * 0.05) % 1.0
        light = (0.45, 0.28, 0.65)[group % 3]
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.8)
        out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return out


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`: steps of 1, 2 or 5 times a power of ten."""
    top = max(top, 1e-9)
    power = 10 ** math.floor(math.log10(top / count))
    steps = [m * p for p in (power / 10, power, power * 10) for m in (1, 2, 5)]
    # the step whose tick count is nearest `count` (the larger step on a tie)
    step = min(steps, key=lambda st: (abs(math.ceil(top / st - 1e-9) - count), -st))
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def tick_text(value: float) -> str:
    return f"{value:g}"


def polyline(points: list[tuple[float, float]], colour: str, dashed: bool = False, width: float = 2) -> str:
    if not points:
        return ""
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="{width}"{dash} points="{coords}"/>'


def time_axis(rec: Recording) -> list[float]:
    return nice_ticks(max((s.t for s in rec.samples), default=1.0) or 1.0)


def render(rec: Recording, title: str) -> str:
    names = rec.names()
    palette = colours(len(names))
    seconds = time_axis(rec)
    peak_pages = max([s.free_pages for s in rec.samples] + [max(d["current_pages"], d["target_pages"]) for s in rec.samples for d in s.domains.values()] + [1])
    mib = nice_ticks(peak_pages / PAGES_PER_MIB)
    t_max, mib_max = seconds[-1], mib[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, PLOT_HEIGHT - TOP - AXIS
    legend = [("free", "#000")] + list(zip(names, palette))
    legend_rows = math.ceil(len(legend) / LEGEND_COLUMNS)
    height = PLOT_HEIGHT + 20 + LEGEND_ROW * (legend_rows + 1)

    def x(t: float) -> float:
        return LEFT + plot_w * t / t_max

    def y(pages: int) -> float:
        return TOP + plot_h * (1 - pages / PAGES_PER_MIB / mib_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15">{escape(title)}</text>',
    ]
    for value in mib:
        yy = TOP + plot_h * (1 - value / mib_max)
        parts.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + plot_w}" y2="{yy:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{tick_text(value)}</text>')
    for value in seconds:
        xx = x(value)
        parts.append(f'<line x1="{xx:.1f}" y1="{TOP}" x2="{xx:.1f}" y2="{TOP + plot_h}" stroke="#eee"/>')
        parts.append(f'<text x="{xx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{tick_text(value)}</text>')
    parts += [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<text x="{LEFT + plot_w / 2}" y="{PLOT_HEIGHT - 12}" text-anchor="middle">seconds after the timeline started (scenario time)</text>',
        f'<text x="16" y="{TOP + plot_h / 2}" transform="rotate(-90 16 {TOP + plot_h / 2})" text-anchor="middle">MiB</text>',
    ]
    for step in rec.steps:
        tip = escape(f"{step.t:.2f} s {step.label}: {step.outcome}")
        parts.append(f'<line x1="{x(step.t):.1f}" y1="{TOP}" x2="{x(step.t):.1f}" y2="{TOP + plot_h}" stroke="#999" stroke-dasharray="2 3"><title>{tip}</title></line>')
    parts.append(polyline([(x(s.t), y(s.free_pages)) for s in rec.samples], "#000", width=1.5))
    for name, colour in zip(names, palette):
        rows = [(s.t, s.domains[name]) for s in rec.samples if name in s.domains]
        parts.append(polyline([(x(t), y(d["current_pages"])) for t, d in rows], colour))
        parts.append(polyline([(x(t), y(d["target_pages"])) for t, d in rows], colour, dashed=True, width=1))
    column_w = (WIDTH - LEFT) / LEGEND_COLUMNS
    for i, (label, colour) in enumerate(legend):
        lx, ly = LEFT + column_w * (i % LEGEND_COLUMNS), PLOT_HEIGHT + 20 + LEGEND_ROW * (i // LEGEND_COLUMNS)
        parts.append(f'<line x1="{lx:.1f}" y1="{ly}" x2="{lx + 25:.1f}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{lx + 31:.1f}" y="{ly + 4}">{escape(label[:20])}</text>')
    parts.append(f'<text x="{LEFT}" y="{PLOT_HEIGHT + 20 + LEGEND_ROW * legend_rows + 4}" fill="#666">solid: memory; dashed: target; dotted grey: timeline steps</text>')
    parts.append("</svg>")
    return "\n".join(p for p in parts if p)


def _state_runs(rec: Recording, name: str) -> list[tuple[float, float, str]]:
    """(from, to, state) for each stretch of samples in which `name`'s driver reported one state
    (stretches without its domain left out)."""
    runs: list[tuple[float, float, str]] = []
    for j, s in enumerate(rec.samples):
        d = s.domains.get(name)
        if d is None:
            continue
        end = rec.samples[j + 1].t if j + 1 < len(rec.samples) else s.t
        state = str(d.get("balloon", {}).get("state", "")) or "-"
        if runs and runs[-1][2] == state and runs[-1][1] == s.t:
            runs[-1] = (runs[-1][0], end, state)
        else:
            runs.append((s.t, end, state))
    return [r for r in runs if r[1] > r[0]]


def render_states(rec: Recording) -> str:
    """One strip per guest: its driver's reported state over time, on the plot's time axis."""
    names = rec.names()
    seconds = time_axis(rec)
    t_max = seconds[-1]
    row, gap, label_w = 16, 4, LEFT + 60
    plot_w = WIDTH - label_w - RIGHT
    height = TOP + (row + gap) * len(names) + AXIS + LEGEND_ROW

    def x(t: float) -> float:
        return label_w + plot_w * t / t_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15">driver state over time (as each driver last reported it)</text>',
    ]
    for i, name in enumerate(names):
        top = TOP + (row + gap) * i
        parts.append(f'<text x="{label_w - 6}" y="{top + row - 4}" text-anchor="end">{escape(name[:24])}</text>')
        parts.append(f'<rect x="{label_w}" y="{top}" width="{plot_w}" height="{row}" fill="{NO_DOMAIN}" stroke="#ddd"/>')
        for start, end, state in _state_runs(rec, name):
            colour = STATE_COLOURS.get(state, UNKNOWN_STATE)
            tip = escape(f"{name} {state} from {start:.2f} s to {end:.2f} s")
            parts.append(
                f'<rect x="{x(start):.1f}" y="{top}" width="{max(0.5, x(end) - x(start)):.1f}" height="{row}" fill="{colour}" '
                f'shape-rendering="crispEdges"><title>{tip}</title></rect>'
            )
    axis_y = TOP + (row + gap) * len(names) + 4
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="black"/>')
    for value in seconds:
        parts.append(f'<text x="{x(value):.1f}" y="{axis_y + 16}" text-anchor="middle">{tick_text(value)}</text>')
    for step in rec.steps:
        parts.append(f'<line x1="{x(step.t):.1f}" y1="{TOP}" x2="{x(step.t):.1f}" y2="{axis_y}" stroke="#333" stroke-dasharray="2 3"/>')
    ly = axis_y + 36
    parts += state_legend(label_w, ly)
    parts.append("</svg>")
    return "\n".join(parts)


def state_legend(left: float, y: float) -> list[str]:
    """The driver states' colours in a row: the key of both state plots (this one and a crowd's)."""
    parts = []
    for i, (state, colour) in enumerate([*STATE_COLOURS.items(), ("not reported", UNKNOWN_STATE), ("no domain", NO_DOMAIN)]):
        lx = left + 120 * i
        parts.append(f'<rect x="{lx}" y="{y - 10}" width="14" height="12" fill="{colour}" stroke="#999"/>')
        parts.append(f'<text x="{lx + 18}" y="{y}">{escape(state)}</text>')
    return parts


def write_svg(rec: Recording, title: str, path: Path) -> None:
    path.write_text(render(rec, title))
