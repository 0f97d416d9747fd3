"""Flow handlers: what happens when an interrupt is delivered on a line.

Modelled on Linux kernel/irq/chip.c (handle_level_irq, handle_edge_irq, handle_fasteoi_irq),
handle.c (running the action chain) and resend.c (replaying a pending edge). The shell calls
`handle_interrupt(table, irq, now)` for every interrupt irqbus delivers and sends the
returned chip operations back, in order.

Why three flows: a level line stays asserted until its device is serviced, so it must be
masked while handlers run and is simply seen again on unmask — nothing needs remembering. An
edge is a single event: if it cannot be handled now (line disabled, or the chain already
running) it is latched as PENDING and replayed later, or it would be lost. fasteoi serves
controllers that hold the line themselves until one End-Of-Interrupt (the IOAPIC's remote IRR).
On x86 every i8259 line runs the level flow, edge-triggered or not (desc.py `default_flow`).

Return values follow handle.c `__handle_irq_event_percpu`: the answers are OR-ed as integers
and spurious.py judges the result (a value beyond IRQ_HANDLED | IRQ_WAKE_THREAD is a "bogus
return value", reported and not counted). A Python handler that raises, or returns something
that is not an integer, is reported as a `HandlerFault` and counts as IRQ_NONE: one broken
driver must not take the guest down.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.irq.desc import (
    S_DISABLED,
    S_INPROGRESS,
    S_PENDING,
    S_REPLAY,
    ChipOp,
    ChipOpKind,
    Flow,
    IrqDesc,
    IrqReturn,
    Trigger,
)
from guest.irq.spurious import REPORT_BAD_IRQ_LIMIT, BogusReturn, note_interrupt
from guest.irq.table import IrqError, IrqSetupError, IrqTable

__all__ = [
    "ChipOp",
    "ChipOpKind",
    "HandlerFault",
    "check_irq_resend",
    "handle_edge_irq",
    "handle_fasteoi_irq",
    "handle_interrupt",
    "handle_irq_event",
    "handle_level_irq",
    "run_edges",
]

MAX_CPUS = 4096  # bounds the per-CPU count list a bogus cpu number could grow
_HANDLED = IrqReturn.HANDLED.value
_WAKE_THREAD = IrqReturn.WAKE_THREAD.value
_UINT = 0xFFFFFFFF  # irqreturn_t is a C enum: what a handler returns is read as 32 bits
_HANDLED_RET = IrqReturn.HANDLED  # members as module constants: an Enum class attribute
_NONE_RET = IrqReturn.NONE  # lookup costs ~0.25 us, a global one a few ns
_EDGE_FLOW = Flow.EDGE
_LEVEL_FLOW = Flow.LEVEL
_EDGE_TRIGGER = Trigger.EDGE


@dataclass(frozen=True, slots=True)
class HandlerFault:
    """A handler raised, returned something that is not an integer, or answered IRQ_WAKE_THREAD
    with no thread to wake (warn_no_thread); recorded for the shell to log."""

    irq: int
    action: str
    reason: str
    now: float

    @property
    def message(self) -> str:
        return f"irq {self.irq}: handler {self.action!r} failed: {self.reason}"


def handle_interrupt(table: IrqTable, irq: int, now: float, cpu: int = 0) -> list[ChipOp]:
    """Deliver one interrupt on `irq` through its line's flow; return the chip operations."""
    desc = table.lookup(irq)  # raises EINVAL / ENOENT
    if type(cpu) is not int or not 0 <= cpu < MAX_CPUS:
        raise IrqSetupError(IrqError.EINVAL, f"cpu {cpu!r} is not a CPU number")
    if type(now) is float and now == now:  # table.note_time's common case, inline
        if now > table.last_now:
            table.last_now = now
    else:
        now = table.note_time(now)
    # by identity, not through a dict: an Enum's hash is a Python-level call
    flow = desc.flow
    if flow is _EDGE_FLOW:
        return handle_edge_irq(table, desc, now, cpu)
    if flow is _LEVEL_FLOW:
        return handle_level_irq(table, desc, now, cpu)
    return _FLOWS[flow](table, desc, now, cpu)


def _call(table: IrqTable, desc: IrqDesc, now: float) -> int:
    """Call every action on the line and OR their answers (handle.c __handle_irq_event_percpu).

    An action answering exactly IRQ_WAKE_THREAD has no thread to wake here (request_irq takes
    no thread function), so it gets handle.c `warn_no_thread`'s warning, once per action
    (IRQTF_WARNED); its answer is OR-ed in all the same. Returns the bits as a plain int
    (cheaper than IntFlag arithmetic per action).
    """
    result = 0
    for action in list(desc.actions):  # a handler may free_irq; finish this round as it began
        action.count += 1
        try:
            ret = action.handler(desc.irq, action.dev_id)
        except Exception as exc:  # noqa: BLE001 - a faulty driver is reported, not fatal
            table.record(HandlerFault(desc.irq, action.name, f"raised {exc!r}", now))
            continue
        if type(ret) is not int:
            if ret is _HANDLED_RET:  # what a driver returns, as an IntFlag member
                ret = _HANDLED
            elif ret is _NONE_RET:
                ret = 0
            elif not isinstance(ret, int):
                table.record(HandlerFault(desc.irq, action.name, f"returned {ret!r}, not an irqreturn_t", now))
                continue
            else:
                ret = int(ret)
        ret &= _UINT
        if ret == _WAKE_THREAD and not action.warned:
            action.warned = True
            table.record(
                HandlerFault(
                    desc.irq,
                    action.name,
                    f"IRQ {desc.irq} device {action.name} returned IRQ_WAKE_THREAD but no thread function available.",
                    now,
                )
            )
        if ret & _HANDLED and ret <= _HANDLED | _WAKE_THREAD:
            action.handled += 1
        result |= ret
    return result


def handle_irq_event(table: IrqTable, desc: IrqDesc, now: float, cpu: int) -> list[ChipOp]:
    """Run the chain once with INPROGRESS set, count it, and let spurious.py judge it."""
    desc.bits = (desc.bits & ~S_PENDING) | S_INPROGRESS
    kstat = desc.kstat
    if 0 <= cpu < len(kstat):  # desc.count_on's common case, inline
        kstat[cpu] += 1
    else:
        desc.count_on(cpu)
    try:
        ret = _call(table, desc, now)
    finally:
        desc.bits &= ~S_INPROGRESS
    if ret == _HANDLED and not desc.irqs_unhandled:
        # note_interrupt's answer to a plain IRQ_HANDLED on a line with no unhandled streak,
        # without the call: not bogus, no thread to defer to, not IRQ_NONE, and
        # spurious.c returns before counting while irqs_unhandled is 0 (its step 4)
        return []
    verdict = note_interrupt(desc, ret, now, table.spurious)
    if verdict is None:
        return []
    if type(verdict) is BogusReturn:
        # spurious.c report_bad_irq: only the first 100 of the kernel's lifetime are printed
        if table.bad_irq_reports < REPORT_BAD_IRQ_LIMIT:
            table.bad_irq_reports += 1
            table.record(verdict)
        return []
    table.record(verdict)
    return desc.mask()


def _runnable(desc: IrqDesc) -> bool:
    """Handlers may run: the line has actions and is not disabled."""
    return bool(desc.actions) and not desc.bits & S_DISABLED


def _latch_edge(desc: IrqDesc) -> None:
    """Remember an edge no handler saw; a level needs no memory (it is still asserted)."""
    if desc.trigger is _EDGE_TRIGGER:
        desc.bits |= S_PENDING


def run_edges(table: IrqTable, desc: IrqDesc, now: float, cpu: int) -> list[ChipOp]:
    """Run the chain, then again for every edge that was latched meanwhile.

    A nested edge masked the line (mask+ack in handle_edge_irq); unmask before re-running
    unless the line was disabled in the meantime.
    """
    ops: list[ChipOp] = []
    while True:
        if not desc.actions:
            ops += desc.mask()
            return ops
        if desc.bits & (S_PENDING | S_DISABLED) == S_PENDING:
            ops += desc.unmask()
        more = handle_irq_event(table, desc, now, cpu)
        if more:
            ops += more
        if desc.bits & (S_PENDING | S_DISABLED) != S_PENDING:
            return ops


def handle_level_irq(table: IrqTable, desc: IrqDesc, now: float, cpu: int) -> list[ChipOp]:
    """chip.c handle_level_irq: mask+ack; run the chain; unmask unless disabled meanwhile
    (cond_unmask_irq). Busy (INPROGRESS, irq_can_handle_pm): stay masked and go. Disabled or no
    action (irq_can_handle_actions): PENDING is set and the line stays masked; nothing replays
    it (check_irq_resend drops PENDING on a level line): a source still asserted is seen again
    on unmask, an edge the chip already acknowledged is gone."""
    ops = desc.mask_ack()
    bits = desc.bits
    if bits & S_INPROGRESS:
        return ops
    if bits & S_DISABLED or not desc.actions:
        desc.bits = (bits & ~S_REPLAY) | S_PENDING
        return ops
    desc.bits = bits & ~S_REPLAY
    more = handle_irq_event(table, desc, now, cpu)
    if more:
        ops += more
    if not desc.bits & S_DISABLED:
        ops += desc.unmask()
    return ops


def handle_edge_irq(table: IrqTable, desc: IrqDesc, now: float, cpu: int) -> list[ChipOp]:
    """Ack, run the chain, loop while edges arrive; disabled or busy: latch PENDING, mask+ack."""
    if desc.bits & (S_INPROGRESS | S_DISABLED) or not desc.actions:
        desc.bits |= S_PENDING
        return desc.mask_ack()
    ops = [desc.op_ack]
    ops += run_edges(table, desc, now, cpu)
    return ops


def handle_fasteoi_irq(table: IrqTable, desc: IrqDesc, now: float, cpu: int) -> list[ChipOp]:
    """Run the chain, then EOI. Disabled: mask, EOI. Busy: EOI (an edge is latched)."""
    eoi = desc.op_eoi
    if desc.bits & S_INPROGRESS:
        _latch_edge(desc)
        return [eoi]
    if not _runnable(desc):
        _latch_edge(desc)
        return [*desc.mask(), eoi]
    ops = run_edges(table, desc, now, cpu)
    ops.append(eoi)
    return ops


_FLOWS = {
    Flow.LEVEL: handle_level_irq,
    Flow.EDGE: handle_edge_irq,
    Flow.FASTEOI: handle_fasteoi_irq,
}


def check_irq_resend(table: IrqTable, desc: IrqDesc, now: float, cpu: int = 0) -> list[ChipOp]:
    """Replay a PENDING edge once the line is enabled again (resend.c check_irq_resend).

    A level line is never replayed ("Level type interrupts are resent by hardware when they are
    still active"): PENDING is dropped. That includes every i8259 line (desc.is_level). An edge
    is replayed by running the chain directly, without ACK or EOI: the chip was already
    acknowledged when the edge was latched. REPLAY guards against starting a second replay; if
    the chain is running right now (enable_irq from a handler), PENDING is left for that run's
    loop.
    """
    if not desc.bits & S_PENDING:
        return []
    if desc.is_level:
        desc.bits &= ~S_PENDING
        return []
    if desc.bits & (S_REPLAY | S_INPROGRESS) or not _runnable(desc):
        return []
    desc.bits |= S_REPLAY
    try:
        return run_edges(table, desc, now, cpu)
    finally:
        desc.bits &= ~S_REPLAY
