"""Driver-facing management of lines: request / free an action, disable / enable a line.

Modelled on Linux kernel/irq/manage.c. Every function validates completely before it
changes anything (DESIGN.md principle 5) and returns the chip operations the shell must send
to irqbus, like the flow handlers do.

Sharing: two drivers can only share a line if both asked to (SHARED), they can be told apart
(distinct, non-None dev_id — free_irq and the handler need it) and they agree on the trigger
type — a line cannot be level for one device and edge for another. Otherwise EBUSY.
Disable nests: `depth` counts disables, only the matching last enable turns the line back on,
and an enable without a disable is an error rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Hashable

from guest.irq.chip import check_irq_resend
from guest.irq.desc import ChipOp, IrqAction, IrqDesc, IrqHandler, IrqStatus, Trigger, default_flow, handler_name
from guest.irq.table import IrqError, IrqSetupError, IrqTable, coerce_trigger

__all__ = ["disable_irq", "enable_irq", "free_irq", "request_irq"]


def request_irq(
    table: IrqTable,
    irq: int,
    handler: IrqHandler,
    name: str,
    dev_id: Hashable | None = None,
    shared: bool = False,
    trigger: Trigger | str | None = None,
) -> list[ChipOp]:
    """Add an action to a line. The first action configures the trigger and enables the line.

    `trigger` None takes the line's current trigger. Returns [UNMASK] when the line comes on.
    """
    desc = table.lookup(irq)
    if not callable(handler):
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq}: handler {handler!r} is not callable")
    if not isinstance(name, str) or not name:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq}: action name must be a non-empty string")
    if not isinstance(shared, bool):
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq}: shared must be a bool, not {shared!r}")
    if shared and dev_id is None:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq}: a shared action needs a dev_id")
    try:
        hash(dev_id)
    except TypeError:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq}: dev_id {dev_id!r} is unhashable") from None
    wanted = desc.trigger if trigger is None else coerce_trigger(trigger)
    if desc.reserved:
        raise IrqSetupError(IrqError.EBUSY, f"IRQ {irq} is the i8259 cascade and cannot be requested")
    if desc.actions:
        _check_sharing(desc, name, dev_id, shared, wanted)
    elif wanted not in desc.chip.triggers:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq}: {desc.chip} cannot be {wanted}-triggered")

    first = not desc.actions
    desc.actions.append(IrqAction(name, dev_id, handler, shared, wanted))
    # A new handler gets a fresh chance with spurious detection (as __setup_irq).
    desc.irq_count = 0
    desc.irqs_unhandled = 0
    if first:
        if wanted is not desc.trigger:
            default_name = handler_name(desc.chip, desc.flow)
            desc.trigger = wanted
            desc.flow = default_flow(desc.chip, wanted)
            if desc.name == default_name:  # io_apic.c names the handler after the flow
                desc.name = handler_name(desc.chip, desc.flow)
        # An edge latched while nobody listened is dropped, not replayed into a driver that
        # is still registering.
        desc.status &= ~(IrqStatus.PENDING | IrqStatus.REPLAY | IrqStatus.SPURIOUS_DISABLED)
        return _startup(desc)
    if desc.status & IrqStatus.SPURIOUS_DISABLED:
        # A new sharer may be the device that was interrupting: give the line another chance.
        desc.status &= ~IrqStatus.SPURIOUS_DISABLED
        if desc.depth == 1:
            return _enable(table, desc, table.last_now)
        desc.depth -= 1
    return []


def _check_sharing(desc: IrqDesc, name: str, dev_id: Hashable | None, shared: bool, wanted: Trigger) -> None:
    irq = desc.irq
    if not shared:
        raise IrqSetupError(IrqError.EBUSY, f"IRQ {irq} is in use ({_names(desc)}); {name!r} did not ask to share")
    for action in desc.actions:
        if not action.shared:
            raise IrqSetupError(IrqError.EBUSY, f"IRQ {irq} is held exclusively by {action.name!r}")
    if wanted is not desc.trigger:
        raise IrqSetupError(
            IrqError.EBUSY,
            f"IRQ {irq} is {desc.trigger}-triggered ({_names(desc)}); {name!r} asked for {wanted}",
        )
    for action in desc.actions:
        if action.dev_id == dev_id:
            raise IrqSetupError(IrqError.EBUSY, f"IRQ {irq}: dev_id {dev_id!r} already used by {action.name!r}")


def _names(desc: IrqDesc) -> str:
    return ", ".join(desc.action_names)


def _startup(desc: IrqDesc) -> list[ChipOp]:
    """Bring a line up for its first action: depth 0, unmasked."""
    desc.depth = 0
    desc.status &= ~IrqStatus.DISABLED
    return desc.unmask()


def free_irq(table: IrqTable, irq: int, dev_id: Hashable | None = None) -> list[ChipOp]:
    """Remove exactly the action registered with `dev_id`; the others keep running.

    Removing the last action shuts the line down (depth 1, masked) and returns [MASK].
    """
    desc = table.lookup(irq)
    if desc.reserved:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq} is the i8259 cascade and cannot be freed")
    for index, action in enumerate(desc.actions):
        try:
            same = action.dev_id == dev_id
        except Exception:  # noqa: BLE001 - an odd dev_id cannot match
            same = False
        if same:
            break
    else:
        raise IrqSetupError(IrqError.ENOENT, f"trying to free already-free IRQ {irq} (dev_id {dev_id!r})")
    del desc.actions[index]
    if desc.actions:
        return []
    desc.depth = 1
    desc.status |= IrqStatus.DISABLED
    desc.status &= ~(IrqStatus.PENDING | IrqStatus.REPLAY | IrqStatus.SPURIOUS_DISABLED)
    return desc.mask()


def disable_irq(table: IrqTable, irq: int) -> list[ChipOp]:
    """Nest one disable. Lazy by default: the chip is only masked when an interrupt arrives
    (the flow handler does it), which is how an edge that arrives meanwhile gets latched."""
    desc = table.lookup(irq)
    if desc.reserved:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq} is the i8259 cascade")
    desc.depth += 1
    if desc.depth > 1:
        return []
    desc.status |= IrqStatus.DISABLED
    return [] if table.lazy_disable else desc.mask()


def enable_irq(table: IrqTable, irq: int, now: float | None = None) -> list[ChipOp]:
    """Undo one disable; the last one unmasks and replays a PENDING edge (resend).

    `now` stamps the replayed run for spurious detection; None means the latest time seen.
    """
    desc = table.lookup(irq)
    if desc.reserved:
        raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq} is the i8259 cascade")
    if desc.depth == 0:
        raise IrqSetupError(IrqError.EINVAL, f"unbalanced enable for IRQ {irq}")
    if desc.depth == 1 and not desc.actions:
        raise IrqSetupError(IrqError.EINVAL, f"enable_irq before request_irq: IRQ {irq} has no action")
    now = table.last_now if now is None else table.note_time(now)
    if desc.depth > 1:
        desc.depth -= 1
        return []
    return _enable(table, desc, now)


def _enable(table: IrqTable, desc: IrqDesc, now: float) -> list[ChipOp]:
    """depth 1 -> 0: the line comes back on, and what it owes is replayed."""
    desc.depth = 0
    desc.status &= ~(IrqStatus.DISABLED | IrqStatus.SPURIOUS_DISABLED)
    ops = desc.unmask()
    ops += check_irq_resend(table, desc, now)
    return ops
