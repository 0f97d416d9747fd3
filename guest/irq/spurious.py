"""Spurious-interrupt detection: a line nobody handles is shut off ("nobody cared").

Modelled on Linux kernel/irq/spurious.c `note_interrupt`. A stuck or misrouted interrupt
source would otherwise keep the guest busy forever running handlers that all say "not mine".
Every run of a line's handler chain is noted; each window of `window` interrupts (100,000)
is judged at its end: more than `threshold` (99,900) unhandled disables the line. A streak of
unhandled interrupts only counts while they keep coming: after more than `quiet` seconds
(Linux: HZ/10 = 100 ms) without one, the unhandled count restarts at 1.

This module decides and updates the counters; chip.py sends the MASK and records the event.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.irq.desc import S_DISABLED, S_SPURIOUS_DISABLED, IrqDesc, IrqReturn

__all__ = ["NobodyCared", "SpuriousPolicy", "note_interrupt"]

_HANDLED_BITS = (IrqReturn.HANDLED | IrqReturn.WAKE_THREAD).value


@dataclass(frozen=True, slots=True)
class SpuriousPolicy:
    """The thresholds, Linux's by default; tests use small ones (DESIGN.md principle 6)."""

    window: int = 100_000  # interrupts per judgement
    threshold: int = 99_900  # unhandled in a window above which the line is disabled
    quiet: float = 0.1  # seconds without an unhandled interrupt that reset the streak
    enabled: bool = True  # False = Linux's "noirqdebug"

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.threshold < self.window or self.quiet < 0:
            raise ValueError(f"inconsistent spurious policy: {self}")


@dataclass(frozen=True, slots=True)
class NobodyCared:
    """Recorded when a line is disabled as spurious, for the shell to log."""

    irq: int
    actions: tuple[str, ...]
    irqs_unhandled: int
    window: int
    now: float

    @property
    def message(self) -> str:
        """Linux's wording, so the log reads like a kernel's."""
        handlers = ", ".join(self.actions) if self.actions else "(none)"
        return (
            f"irq {self.irq}: nobody cared ({self.irqs_unhandled} of {self.window} unhandled); "
            f"handlers: {handlers}; Disabling IRQ #{self.irq}"
        )


def note_interrupt(
    desc: IrqDesc, action_ret: IrqReturn | int, now: float, policy: SpuriousPolicy
) -> NobodyCared | None:
    """Account one run of the chain; disable the line and return the verdict if nobody cared.

    On a verdict the line is disabled (depth += 1, DISABLED | SPURIOUS_DISABLED) but not yet
    masked: masking is a chip operation, which the caller emits.
    """
    if not policy.enabled:
        return None
    if not action_ret & _HANDLED_BITS:
        last = desc.last_unhandled
        if last is None or now - last > policy.quiet:
            desc.irqs_unhandled = 1
        else:
            desc.irqs_unhandled += 1
        desc.last_unhandled = now
    desc.irq_count += 1
    if desc.irq_count < policy.window:
        return None
    desc.irq_count = 0
    verdict = None
    if desc.irqs_unhandled > policy.threshold:
        verdict = NobodyCared(
            irq=desc.irq,
            actions=tuple(desc.action_names),
            irqs_unhandled=desc.irqs_unhandled,
            window=policy.window,
            now=now,
        )
        desc.depth += 1
        desc.bits |= S_DISABLED | S_SPURIOUS_DISABLED
    desc.irqs_unhandled = 0
    return verdict
