"""What the order placer needs from a lock: `OrderLock`, which `locking.Redlock` satisfies.

Kept to the five calls the placement makes, so that an honest in-memory lock
(tests/fakes.py) can stand in for three lock nodes in the placement's unit
tests; both run the same contract tests (tests/tasks/test_lock_contract.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from locking import Lease, ReleaseOutcome, RetryPolicy


class OrderLock(Protocol):
    """A fenced, multi-resource lock with wake-ups on release."""

    def acquire(
        self,
        resources: str | Sequence[str],
        *,
        ttl_ms: int,
        fence: bool = False,
        retry: RetryPolicy | None = None,
    ) -> Lease:
        """Take every resource or none; raise `LockContended` or `QuorumUnavailable`."""
        ...

    def release(self, lease: Lease, *, confirm: bool = True, wakes: int = 1) -> ReleaseOutcome:
        """Give the lease up (``confirm=False``: without waiting for the replies).

        :param wakes: waiters of each resource to wake (`wait_released`).
        """
        ...

    def wait_released(self, resources: str | Sequence[str], *, timeout_ms: float) -> bool:
        """Wait up to ``timeout_ms`` for a release of ``resources``; True when woken."""
        ...

    def advance_fence(self, resources: str | Sequence[str], at_least: int) -> int:
        """Make the next fence on ``resources`` exceed ``at_least``; return nodes confirming."""
        ...
