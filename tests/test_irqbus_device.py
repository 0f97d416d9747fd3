"""The emulated device's pacing: on time, in bursts when behind, and never past its count."""

from __future__ import annotations

import pytest

from irqbus.device import Pacer
from irqbus.show import format_show

T = pytest.mark.timeout(5)


@T
def test_one_is_due_at_the_start_then_one_per_period():
    p = Pacer(rate=10, start=100.0)
    assert p.due(100.0) == 1
    p.raised += 1
    assert p.due(100.05) == 0 and p.next_at() == pytest.approx(100.1)
    assert p.due(100.1) == 1


@T
def test_a_device_behind_catches_up_in_bursts():
    p = Pacer(rate=1000, start=0.0, burst=64)
    assert p.due(1.0) == 64  # 1001 owed, at most a burst per request
    p.raised += 64
    assert p.due(1.0) == 64
    slow = Pacer(rate=1000, start=0.0)
    assert slow.due(1.0) == 1  # no bursts unless asked


@T
def test_never_past_the_count():
    p = Pacer(rate=1e6, start=0.0, burst=2000, count=2500)
    assert p.due(10.0) == 2000
    p.raised += 2000
    assert p.due(10.0) == 500
    p.raised += 500
    assert p.done() and p.due(10.0) == 0


@T
def test_show_text_names_guests_pins_and_devices():
    guest = {
        "name": "vm1", "domid": 1, "delivered": 3, "spurious": 0, "last_seen_s": 0.5,
        "pic": {"irr": 0, "isr": 0x20, "imr": 0xFFDB, "elcr": 0x20, "lines": 0x20},
        "ioapic": [{"pin": 16 + i, "vector": 0, "trigger": "edge", "masked": True, "remote_irr": False, "asserted": False} for i in range(8)],
        "pins": [{"pin": 5, "controller": "i8259", "level": True, "devices": ["nic0", "disk0"], "asserting": ["nic0"], "masked": False}],
        "devices": [
            {"name": "nic0", "kind": "pin", "pin": 5, "trigger": "level", "status": True, "gen": 3, "merged": 0, "asserted": True},
            {"name": "net1", "kind": "msi", "pin": None, "trigger": None, "status": False, "gen": 0, "merged": 0, "asserted": False,
             "msi": {"address": 0, "data": 0, "vector": None, "masked": True, "pending": False}},
        ],
    }
    text = format_show({"guests": [guest]})
    assert "guest vm1 (domid 1): 3 interrupts delivered" in text
    assert "ISR 0x0020" in text and "IOAPIC" not in text  # no entry programmed yet
    assert "nic0, disk0" in text and "MSI-X unprogrammed masked" in text
    assert format_show({"guests": []}) == "no guests attached"
