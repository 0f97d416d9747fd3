"""`irqbus show` for its clients: every page of it, and as text: per guest, its controllers'
registers, its pins and its devices (names escaped for the terminal)."""

from __future__ import annotations

from typing import Any

from wire.client import RpcClient
from wire.pages import every_page
from wire.shown import for_terminal


def fetch_show(client: RpcClient, guest: int | str | None = None) -> dict[str, Any]:
    """Every page of `show` (or the one guest), as one result."""
    if guest is not None:
        return client.call("show", {"guest": guest})
    return every_page(client.call, "show", "guests")


def _names(names: list[str]) -> str:
    return ", ".join(for_terminal(n) for n in names) if names else "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_guest(g: dict[str, Any]) -> list[str]:
    pic = g["pic"]
    lines = [
        f"guest {for_terminal(g['name'])} (domid {g['domid']}): {g['delivered']} interrupts delivered, {g['spurious']} spurious, "
        f"last heard {g['last_seen_s']:g} s ago",
        f"  i8259 pair   IRR {pic['irr']:#06x}  ISR {pic['isr']:#06x}  IMR {pic['imr']:#06x}  "
        f"ELCR {pic['elcr']:#06x}  lines {pic['lines']:#06x}   (bit n = ISA IRQ n)",
    ]
    programmed = [e for e in g["ioapic"] if e["vector"] or not e["masked"] or e["asserted"]]
    if programmed:
        lines.append(f"  {'IOAPIC pin':<12} {'vector':>6} {'trigger':<8} {'masked':<6} {'remote_irr':<10} asserted")
        for e in programmed:
            lines.append(
                f"  {e['pin']:>10}   {e['vector']:#6x} {for_terminal(e['trigger']):<8} {_yes(e['masked']):<6} "
                f"{_yes(e['remote_irr']):<10} {_yes(e['asserted'])}"
            )
    if g["pins"]:
        lines.append(f"  {'pin':>4} {'controller':<10} {'level':<5} {'masked':<6} {'devices':<24} asserting")
        for p in g["pins"]:
            lines.append(
                f"  {p['pin']:>4} {for_terminal(p['controller']):<10} {'high' if p['level'] else 'low':<5} {_yes(p['masked']):<6} "
                f"{_names(p['devices']):<24} {_names(p['asserting'])}"
            )
    if g["devices"]:
        lines.append(f"  {'device':<16} {'route':<22} {'status':<6} {'gen':>8} {'merged':>7}")
        for d in g["devices"]:
            if d["kind"] == "msi":
                msi = d["msi"]
                vector = "unprogrammed" if msi["vector"] is None else f"vector {msi['vector']:#x}"
                flags = ("masked" if msi["masked"] else "") + (" pending" if msi["pending"] else "")
                route = f"MSI-X {vector} {flags}".strip()
            else:
                route = f"pin {d['pin']} {for_terminal(d['trigger'])}"
            lines.append(f"  {for_terminal(d['name']):<16} {route:<22} {'set' if d['status'] else 'clear':<6} {d['gen']:>8} {d['merged']:>7}")
    if g.get("virqs"):
        bound = ", ".join(f"{for_terminal(name)} on vector {v['vector']:#x} ({v['sent']} sent)" for name, v in g["virqs"].items())
        lines.append(f"  virtual interrupts: {bound}")
    return lines


def format_show(result: dict[str, Any]) -> str:
    guests = result.get("guests", [])
    if not guests:
        return "no guests attached"
    out: list[str] = []
    for g in guests:
        if out:
            out.append("")
        out += format_guest(g)
    return "\n".join(out)
