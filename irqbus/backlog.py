"""How many events each guest may have unread, so a guest that stops reading (stopped, hung,
or just not calling recv) cannot make irqbus queue without bound.

irqbus cannot see into ZeroMQ's queues, so it counts: every event sent to a guest is unread
until the guest's session sends a request (a guest that talks is running its loop, which reads
events too). Past a budget per guest, and a budget for all guests together, further events for
that guest are dropped and counted: the count travels in the guest's next `irq` event
(`dropped`) and in `show`. A dropped interrupt is lost, as an interrupt is on real hardware when
the CPU cannot take it, but irqbus's memory is not.
"""

from __future__ import annotations

from irqbus.machine import GuestMachine

MAX_UNREAD_PER_GUEST = 16_384  # above one request's largest burst (10,000), so a reading guest loses none
MAX_UNREAD_TOTAL = 65_536  # about 25 MiB of queued frames in ZeroMQ, whoever they are for


class Backlog:
    """The budget for all guests together; each guest's own count is `GuestMachine.unread`."""

    def __init__(self, per_guest: int = MAX_UNREAD_PER_GUEST, total: int = MAX_UNREAD_TOTAL) -> None:
        self.per_guest = per_guest
        self.limit = total
        self.total = 0

    def admit(self, machine: GuestMachine, count: int) -> int:
        """How many of `count` events for `machine` may be sent; the rest are counted dropped."""
        unread = machine.unread
        if unread + count <= self.per_guest and self.total + count <= self.limit:  # the usual case
            machine.unread = unread + count
            self.total += count
            return count
        allowed = max(0, min(count, self.per_guest - unread, self.limit - self.total))
        machine.unread = unread + allowed
        self.total += allowed
        machine.dropped += count - allowed
        return allowed

    def heard_from(self, machine: GuestMachine) -> None:
        """The guest's session sent a request (or is gone): it has read what it was sent."""
        self.total -= machine.unread
        machine.unread = 0
