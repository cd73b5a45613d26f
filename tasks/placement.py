"""Placing one order: record it, take the lock over its SKUs, settle, release.

This is the orchestration the Celery task calls; it knows nothing of Celery.
Errors that are worth a later retry come out as `StockUnavailable` or
`DatabaseUnavailable`; everything else is an outcome.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from locking import (
    NO_RETRY,
    Lease,
    LeaseLost,
    LockContended,
    QuorumUnavailable,
    Redlock,
    RetryPolicy,
)
from tasks.errors import OverBudget, StaleFence, StockUnavailable
from tasks.models import TERMINAL
from tasks.orders import OrderState
from tasks.store import OrderStore
from tasks.validation import OrderRequest

logger = logging.getLogger(__name__)

#: Validity a lease must still have when the settlement commits.
COMMIT_MARGIN_MS = 200.0


@dataclass(frozen=True, kw_only=True)
class LockPolicy:
    """How an order waits for the lock inside one task run.

    :param ttl_ms: lease TTL; must cover one settlement transaction with margin.
    :param handoff_ms: how long a refused order waits for the lock, woken by
        releases, before it records itself for the holder to settle (0: at once).
    :param wait: attempts and backoff before the task gives the slot back and retries later.
    """

    ttl_ms: int = 5000
    handoff_ms: float = 20.0
    wait: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=8, base_delay_ms=2.0, max_delay_ms=50.0)
    )


class OrderPlacer:
    """Places orders against one database and, unless disabled, one Redlock.

    :param store: the database steps of this process.
    :param redlock: the lock, or None to rely on the database guard alone
        (benchmarks only: the guard stays correct, contention is just higher).
    :param policy: lock TTL and in-task wait.
    """

    def __init__(
        self,
        *,
        store: OrderStore,
        redlock: Redlock | None,
        policy: LockPolicy = LockPolicy(),
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._redlock = redlock
        self._policy = policy
        self._rng = rng or random.Random()

    def place(self, request: OrderRequest) -> OrderState:
        """Record the order and decide it; return its state (terminal unless retried).

        :raises OrderConflict: the id was used with another payload.
        :raises StockUnavailable: the lock could not be taken in this run.
        :raises DatabaseUnavailable: the database failed; nothing half-done remains.
        """
        if self._redlock is None:
            return self._settle_until_decided(request, None, None, record=True)
        return self._place_locked(request, self._redlock)

    def state_of(self, request: OrderRequest) -> OrderState:
        """Read the order's current state."""
        return self._store.state(request.order_id)

    def record(self, request: OrderRequest) -> OrderState:
        """Record the order (pending) on its own; return its state."""
        return self._store.record(request)

    def fail(self, request: OrderRequest, reason: str) -> OrderState:
        """End the order ``failed`` with ``reason`` unless it was decided; record it if needed."""
        return self._store.fail(request, reason)

    def _place_locked(self, request: OrderRequest, redlock: Redlock) -> OrderState:
        """Record and settle in one step under the lock, got at once or handed over.

        Refused, the order first waits to be woken by a release (waiters take
        turns); refused for longer than `LockPolicy.handoff_ms`, it records itself:
        a recorded order is visible to every holder, which settles it with its own
        (flat combining). That pays when many processes queue for one SKU; with
        two, the hand-over wins (BENCHMARKS.md, "no handoff").
        """
        resources = [f"sku:{sku}" for sku in request.skus]
        started_s = time.monotonic()
        try:
            lease = self._try_acquire(redlock, resources, request) or self._handoff(
                redlock, resources, request
            )
        except StockUnavailable as error:
            return self._recorded_or_raise(request, error.cause)
        recorded = lease is None
        if lease is None:
            state = self.record(request)
            if state.status in TERMINAL:
                return state
            outcome = self._wait(redlock, resources, request)
            if isinstance(outcome, OrderState):
                return outcome
            lease = outcome
        wait_ms = (time.monotonic() - started_s) * 1000
        try:
            return self._settle_until_decided(request, lease, wait_ms, record=not recorded)
        except (LeaseLost, StaleFence, OverBudget) as error:
            logger.warning(
                "Order %r: settlement aborted, will retry: %s", str(request.order_id), error
            )
            if isinstance(error, StaleFence):
                self._advance_fences(redlock, resources, request)
            if not recorded:
                return self._recorded_or_raise(request, str(error))
            raise StockUnavailable(request.order_id, str(error)) from None
        finally:
            # Nothing here acts on the outcome, so the round trip is not waited for.
            redlock.release(lease, confirm=False)

    def _advance_fences(
        self, redlock: Redlock, resources: list[str], request: OrderRequest
    ) -> None:
        """Lift the lock's fence counters above the fences the products carry.

        A stale holder changes nothing by this; lock nodes that lost their counters
        (restarted empty) issue fences the guard accepts again from the next lease.
        """
        highest = self._store.highest_fence(request.skus)
        confirmed = redlock.advance_fence(resources, highest)
        logger.warning(
            "Fence counters of %r raised to %d on %d node(s).", resources, highest, confirmed
        )

    def _recorded_or_raise(self, request: OrderRequest, cause: str) -> OrderState:
        """Make sure a retried order exists (pending) before the task retries it.

        The uncontended path records the order in the same step as its
        settlement; when that path cannot run, the order must not vanish.
        """
        state = self.record(request)
        if state.status in TERMINAL:
            return state
        raise StockUnavailable(request.order_id, cause)

    def _try_acquire(
        self, redlock: Redlock, resources: list[str], request: OrderRequest
    ) -> Lease | None:
        try:
            return redlock.acquire(
                resources, ttl_ms=self._policy.ttl_ms, fence=True, retry=NO_RETRY
            )
        except LockContended:
            return None
        except QuorumUnavailable as error:
            raise StockUnavailable(request.order_id, str(error)) from None

    def _handoff(
        self, redlock: Redlock, resources: list[str], request: OrderRequest
    ) -> Lease | None:
        """Wait for releases (without recording) until the lock is ours or time is up."""
        deadline_s = time.monotonic() + self._policy.handoff_ms / 1000
        while (left_ms := (deadline_s - time.monotonic()) * 1000) > 0:
            if not redlock.wait_released(resources, timeout_ms=left_ms):
                return None
            lease = self._try_acquire(redlock, resources, request)
            if lease is not None:
                return lease
        return None

    def _wait(
        self, redlock: Redlock, resources: list[str], request: OrderRequest
    ) -> Lease | OrderState:
        """Back off (woken early by releases) until the order is decided or the lock is ours."""
        wait = self._policy.wait
        for attempt in range(1, wait.attempts):
            redlock.wait_released(resources, timeout_ms=max(wait.delay_ms(attempt, self._rng), 1.0))
            state = self.state_of(request)
            if state.status in TERMINAL:
                return state
            lease = self._try_acquire(redlock, resources, request)
            if lease is not None:
                return lease
        raise StockUnavailable(request.order_id, f"lock contended after {wait.attempts} attempts")

    def _settle_until_decided(
        self, request: OrderRequest, lease: Lease | None, wait_ms: float | None, *, record: bool
    ) -> OrderState:
        """Settle (recording first if asked) until the order is decided or nothing moves.

        Under a lease every step must finish with `COMMIT_MARGIN_MS` of validity to
        spare; the store refuses to commit a step that ran past that budget.
        """
        while True:
            budget_ms = None
            if lease is not None:
                lease.check(margin_ms=COMMIT_MARGIN_MS)
                budget_ms = lease.remaining_ms() - COMMIT_MARGIN_MS
            settled = self._store.settle(
                request,
                record=record,
                fence=None if lease is None else lease.fence,
                wait_ms=wait_ms,
                budget_ms=budget_ms,
            )
            record = False
            if settled.state.status in TERMINAL or not settled.decided:
                # Decided, or nothing left to settle while ours is still pending: its
                # row is locked by another run; the task looks again later.
                return settled.state
