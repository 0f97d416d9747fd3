"""An SVG picture of a run: each domain's memory over time, its target dashed, and the pool's
free pages; written with the standard library so the runner needs no plotting package."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from scenarios.recording import Recording
from wire.sizes import pages_to_mib

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 900, 460, 70, 160, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _polyline(points: list[tuple[float, float]], colour: str, dashed: bool = False, width: float = 2) -> str:
    if not points:
        return ""
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="{width}"{dash} points="{coords}"/>'


def render(rec: Recording, title: str) -> str:
    names = rec.names()
    t_max = max((s.t for s in rec.samples), default=1.0) or 1.0
    peak = max([s.free_pages for s in rec.samples] + [max(d["current_pages"], d["target_pages"]) for s in rec.samples for d in s.domains.values()] + [1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * t / t_max

    def y(pages: int) -> float:
        return TOP + plot_h * (1 - pages / peak)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle">seconds after the timeline started</text>',
        f'<text x="16" y="{TOP + plot_h / 2}" transform="rotate(-90 16 {TOP + plot_h / 2})" text-anchor="middle">MiB</text>',
    ]
    for i in range(5):
        pages, t = peak * i // 4, t_max * i / 4
        parts.append(f'<text x="{LEFT - 6}" y="{y(pages) + 4:.1f}" text-anchor="end">{pages_to_mib(pages)}</text>')
        parts.append(f'<text x="{x(t):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{t:.1f}</text>')
    for step in rec.steps:
        t = step.t
        parts.append(f'<line x1="{x(t):.1f}" y1="{TOP}" x2="{x(t):.1f}" y2="{TOP + plot_h}" stroke="#bbb"/>')
    parts.append(_polyline([(x(s.t), y(s.free_pages)) for s in rec.samples], "#000", width=1.5))
    legend = [("free", "#000", False)]
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        rows = [(s.t, s.domains[name]) for s in rec.samples if name in s.domains]
        parts.append(_polyline([(x(t), y(d["current_pages"])) for t, d in rows], colour))
        parts.append(_polyline([(x(t), y(d["target_pages"])) for t, d in rows], colour, dashed=True, width=1))
        legend.append((name, colour, False))
    for i, (label, colour, _) in enumerate(legend):
        ly = TOP + 10 + 18 * i
        parts.append(f'<line x1="{WIDTH - RIGHT + 15}" y1="{ly}" x2="{WIDTH - RIGHT + 40}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 46}" y="{ly + 4}">{escape(label)}</text>')
    parts.append(f'<text x="{WIDTH - RIGHT + 15}" y="{TOP + 18 * len(legend) + 14}" fill="#666">dashed: target</text>')
    parts.append("</svg>")
    return "\n".join(p for p in parts if p)


def write_svg(rec: Recording, title: str, path: Path) -> None:
    path.write_text(render(rec, title))
