"""A held lock: what it covers, its token and fence, and how long it can be trusted."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from locking.errors import LeaseLost


class ReleaseOutcome(Enum):
    """What `Redlock.release` found on the nodes."""

    #: A quorum of nodes still held the token and deleted it.
    RELEASED = "released"
    #: Fewer than a quorum still held it: the lease had lapsed before release, so
    #: the critical section may not have been exclusive until its end.
    EXPIRED = "expired"
    #: Too many nodes failed to answer to tell; the keys expire by their TTL.
    UNCONFIRMED = "unconfirmed"
    #: Sent without waiting for the replies (``confirm=False``): on every node that
    #: still held the token the keys are gone once the node reads the request.
    SENT = "sent"


@dataclass(eq=False, kw_only=True)
class Lease:
    """A Redlock lease over one or more resources.

    :param resources: the resource names, in the caller's order.
    :param token: the random value (128 bits) that proves ownership on each node.
    :param ttl_ms: the TTL each node keeps the keys for, per grant or extension.
    :param validity_ms: how long the lease was valid when last granted or extended.
    :param valid_until_s: monotonic time (seconds) at which the lease stops being valid.
    :param fence: a number strictly greater than every earlier lease's on these
        resources, or None when the lease was acquired without fencing.
    """

    resources: tuple[str, ...]
    token: str
    ttl_ms: int
    validity_ms: float
    valid_until_s: float
    fence: int | None = None
    extensions: int = 0
    clock: Callable[[], float] = field(repr=False)
    lost: threading.Event = field(default_factory=threading.Event, repr=False)
    lost_reason: str | None = None
    release_outcome: ReleaseOutcome | None = None

    def remaining_ms(self) -> float:
        """Return the milliseconds left before the lease may no longer be exclusive."""
        return (self.valid_until_s - self.clock()) * 1000.0

    @property
    def is_valid(self) -> bool:
        """True while the lease is neither lost, released nor past its validity."""
        return not self.lost.is_set() and self.release_outcome is None and self.remaining_ms() > 0

    def check(self, *, margin_ms: float = 0.0) -> None:
        """Raise `LeaseLost` unless the lease stays valid for at least ``margin_ms`` more.

        :param margin_ms: time the caller still needs, e.g. to commit a transaction.
        """
        if self.lost.is_set():
            raise LeaseLost(resources=self.resources, reason=self.lost_reason or "lost")
        if self.release_outcome is not None:
            raise LeaseLost(resources=self.resources, reason="already released")
        remaining_ms = self.remaining_ms()
        if remaining_ms <= margin_ms:
            raise LeaseLost(
                resources=self.resources,
                reason=f"{remaining_ms:.1f} ms of validity left, {margin_ms:.1f} ms needed",
            )

    def record_extension(self, *, ttl_ms: int, validity_ms: float, valid_until_s: float) -> None:
        """Record an extension a quorum confirmed: the new TTL and how long it is valid.

        :param ttl_ms: the TTL the nodes now keep the keys for.
        :param validity_ms: the validity left when the extension was confirmed.
        :param valid_until_s: monotonic time (seconds) at which it stops being valid.
        """
        self.extensions += 1
        self.ttl_ms = ttl_ms
        self.validity_ms = validity_ms
        self.valid_until_s = valid_until_s

    def mark_lost(self, reason: str) -> None:
        """Record that the lease cannot be trusted any more and wake anyone waiting on it."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
