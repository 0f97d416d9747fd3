"""Spurious-interrupt detection: a line nobody handles is shut off ("nobody cared").

Modelled on Linux kernel/irq/spurious.c `note_interrupt` as it is today (checked against
mainline; the order of its steps is what decides when a stuck line is disabled):

1. A return value that is not a combination of IRQ_NONE / IRQ_HANDLED / IRQ_WAKE_THREAD
   (`bad_action_ret`) is reported ("irq event %d: bogus return value %x", `report_bad_irq`,
   at most 100 reports per kernel) and the interrupt is not counted at all.
2. IRQ_WAKE_THREAD alone defers the judgement to the next interrupt, which asks whether a
   threaded handler handled something meanwhile. No thread functions exist in this model
   (`request_irq` takes none; handle.c's `warn_no_thread` is reported by chip.py), so the
   threads' handled count never moves: the first such interrupt is not counted, every later
   one counts as IRQ_NONE. HANDLED together with WAKE_THREAD ends the deferral.
3. IRQ_NONE is unhandled: after more than `quiet` seconds (HZ/10 = 100 ms) since the last
   unhandled one the streak restarts at 1, else it grows by one.
4. While `irqs_unhandled` is 0 nothing else happens: the window of 100,000 starts counting only
   once an interrupt went unhandled. This is commit 7c07012eb1be ("genirq: Reduce irqdebug
   cacheline bouncing", v5.13); before it every interrupt counted, so a device that worked for
   50,000 interrupts and then got stuck was judged halfway through its first window.
5. At the 100,000th counted interrupt: more than 99,900 unhandled disables the line
   (IRQS_SPURIOUS_DISABLED, depth + 1, irq_disable); the count and `irqs_unhandled` restart.

Not modelled: irqfixup / irqpoll (misrouted_irq, off by default) and the 100 ms poll of
spurious-disabled shared lines (`poll_spurious_irqs`).

This module decides and updates the counters; chip.py sends the MASK and records the events.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.irq.desc import S_DISABLED, S_SPURIOUS_DISABLED, IrqDesc, IrqReturn

__all__ = ["REPORT_BAD_IRQ_LIMIT", "BogusReturn", "NobodyCared", "SpuriousPolicy", "bad_action_ret", "note_interrupt"]

_NONE = IrqReturn.NONE.value
_WAKE_THREAD = IrqReturn.WAKE_THREAD.value
_VALID_BITS = (IrqReturn.HANDLED | IrqReturn.WAKE_THREAD).value
REPORT_BAD_IRQ_LIMIT = 100  # report_bad_irq: `static int count = 100`, for the kernel's lifetime


@dataclass(frozen=True, slots=True)
class SpuriousPolicy:
    """The thresholds, Linux's by default; tests use small ones (DESIGN.md principle 6)."""

    window: int = 100_000  # counted interrupts per judgement
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


@dataclass(frozen=True, slots=True)
class BogusReturn:
    """A run of the chain whose OR-ed answer is not an irqreturn_t (`__report_bad_irq`)."""

    irq: int
    value: int  # as C's `unsigned int` holds it
    actions: tuple[str, ...]
    now: float

    @property
    def message(self) -> str:
        return f"irq event {self.irq}: bogus return value {self.value:x}"


def bad_action_ret(action_ret: int) -> bool:
    """spurious.c `bad_action_ret`: anything above IRQ_HANDLED | IRQ_WAKE_THREAD, as unsigned."""
    return not 0 <= action_ret <= _VALID_BITS


def note_interrupt(
    desc: IrqDesc, action_ret: IrqReturn | int, now: float, policy: SpuriousPolicy
) -> NobodyCared | BogusReturn | None:
    """Account one run of the chain, in the order of Linux's note_interrupt (module docstring).

    Returns a BogusReturn to report, or the NobodyCared verdict after disabling the line
    (depth += 1, DISABLED | SPURIOUS_DISABLED); masking is a chip operation the caller emits.
    """
    if not policy.enabled:
        return None
    ret = int(action_ret)
    if not 0 <= ret <= _VALID_BITS:  # bad_action_ret, inline: this runs once per interrupt
        return BogusReturn(desc.irq, ret & 0xFFFFFFFF, tuple(desc.action_names), now)
    if ret & _WAKE_THREAD:
        if ret == _WAKE_THREAD:
            if not desc.spurious_deferred:
                desc.spurious_deferred = True
                return None
            ret = _NONE  # no thread handled anything since: threads_handled never moves here
        else:
            desc.spurious_deferred = False
    if ret == _NONE:
        last = desc.last_unhandled
        if last is None or now - last > policy.quiet:
            desc.irqs_unhandled = 1
        else:
            desc.irqs_unhandled += 1
        desc.last_unhandled = now
    if not desc.irqs_unhandled:
        return None
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
