"""Placing one order: check its SKUs, take the lock over them, settle, release.

This is the orchestration the Celery task calls; it knows nothing of Celery.
Errors that are worth a later retry come out as `TryLater` or
`DatabaseUnavailable`; everything else is an outcome. Every order this process
moves to a terminal state is reported to `OrderEvents.order_decided`.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field

from locking import (
    MAX_WAKES,
    NO_RETRY,
    Lease,
    LeaseLost,
    LockContended,
    QuorumUnavailable,
    RetryPolicy,
)
from tasks.contended import RecentlyContended
from tasks.errors import OverBudget, StaleFence, TryLater
from tasks.events import NULL_EVENTS, OrderEvents
from tasks.known_skus import KnownSkus
from tasks.lock import OrderLock
from tasks.models import TERMINAL, OrderStatus
from tasks.orders import OrderState
from tasks.store import OrderStore, StepResult
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
    :param retry_in_task: once recorded, how often (and with what backoff) the
        order tries the lock again, or finds itself decided by the holder, before
        the task gives its slot back and the order is retried later.
    :param contended_window_ms: after a refusal, how long this process's orders for
        the same SKUs wait for a release before asking for the lock (within the
        hand-over window; see `tasks.contended`). As long as a wake-up nobody took
        stays on the nodes (`locking.commands.WAKE_TTL_MS`), so that such a wait for
        a lock freed meanwhile ends at once.
    """

    ttl_ms: int = 5000
    handoff_ms: float = 20.0
    contended_window_ms: float = 1000.0
    retry_in_task: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=8, base_delay_ms=2.0, max_delay_ms=50.0)
    )


class OrderPlacer:
    """Places orders against one store and, unless disabled, one lock.

    :param store: the database steps of this process.
    :param lock: the lock (a `locking.Redlock`), or None to rely on the database
        guard alone (benchmarks only: the guard stays correct, contention is higher).
    :param policy: lock TTL and in-task wait.
    :param events: where decisions, settlements and lock waits are reported.
    :param known_skus_capacity: SKUs remembered as existing (see `tasks.known_skus`),
        and SKU sets remembered as recently refused (see `tasks.contended`).
    """

    def __init__(
        self,
        *,
        store: OrderStore,
        lock: OrderLock | None,
        policy: LockPolicy = LockPolicy(),
        events: OrderEvents = NULL_EVENTS,
        rng: random.Random | None = None,
        known_skus_capacity: int = 10_000,
    ) -> None:
        self._store = store
        self._lock = lock
        self._policy = policy
        self._events = events
        self._rng = rng or random.Random()
        self._known = KnownSkus(store.known_skus, capacity=known_skus_capacity)
        self._contended = RecentlyContended(
            window_ms=policy.contended_window_ms, capacity=known_skus_capacity
        )

    def place(self, request: OrderRequest) -> OrderState:
        """Record the order and decide it; return its state (terminal unless retried).

        :raises OrderConflict: the id was used with another payload.
        :raises TryLater: the lock (or the order's row) was busy in this run.
        :raises DatabaseUnavailable: the database failed; nothing half-done remains.
        """
        if self._lock is None:
            return self._settle_until_decided(request, None, None, record=True)[0]
        if self._known.unknown(request.skus):
            # Before the lock: an unknown SKU must leave no fence counter on its nodes.
            return self.end(request, OrderStatus.REJECTED, "unknown_sku")
        return self._place_locked(request, self._lock)

    def state_of(self, request: OrderRequest) -> OrderState:
        """Read the order's current state."""
        return self._store.state(request.order_id)

    def record(self, request: OrderRequest) -> OrderState:
        """Record the order (pending) on its own; return its state."""
        return self._report(self._store.record(request))

    def end(self, request: OrderRequest, status: OrderStatus, reason: str) -> OrderState:
        """End the order with ``status`` and ``reason`` unless decided; record it if needed."""
        return self._report(self._store.end(request, status, reason))

    def fail(self, request: OrderRequest, reason: str) -> OrderState:
        """End the order ``failed`` with ``reason`` unless it was decided."""
        return self.end(request, OrderStatus.FAILED, reason)

    def reject_invalid(self, order_id: uuid.UUID, customer_id: object, reason: str) -> OrderState:
        """Store an order whose payload was invalid as rejected (an existing order stays)."""
        return self._report(self._store.reject_invalid(order_id, customer_id, reason))

    def _report(self, step: StepResult) -> OrderState:
        for decision in step.decisions:
            self._events.order_decided(decision.status.value, decision.reason, decision.age_s)
        return step.state

    def _place_locked(self, request: OrderRequest, lock: OrderLock) -> OrderState:
        """Record and settle in one step under the lock, got at once or handed over.

        Refused, the order first waits to be woken by a release (waiters take
        turns; an order whose SKUs were refused recently waits before it asks, see
        `tasks.contended`); refused for longer than `LockPolicy.handoff_ms`, it records itself:
        a recorded order is visible to every holder, which settles it with its own
        (flat combining). That pays when many processes queue for one SKU; with
        two, the hand-over wins (BENCHMARKS.md, "no handoff").
        """
        resources = [f"sku:{sku}" for sku in request.skus]
        started_s = time.monotonic()
        try:
            lease = self._handoff(lock, resources, request)
        except TryLater as error:
            self._lock_outcome(started_s, "unavailable")
            return self._recorded_or_raise(request, error)
        recorded = lease is None
        if lease is None:
            state = self.record(request)
            if state.status in TERMINAL:
                self._lock_outcome(started_s, "contended")
                return state
            try:
                outcome = self._wait(lock, resources, request)
            except TryLater as error:
                kind = "unavailable" if error.cause == "lock_unavailable" else "contended"
                self._lock_outcome(started_s, kind)
                raise
            if isinstance(outcome, OrderState):
                self._lock_outcome(started_s, "contended")
                return outcome
            lease = outcome
        wait_ms = self._lock_outcome(started_s, "granted") * 1000
        wakes = 1
        try:
            state, others = self._settle_until_decided(request, lease, wait_ms, record=not recorded)
            # Each other order this lease decided was recorded by a task that may be
            # blocked in `_wait`: wake every one of them, not only the next contender
            # (with one wake-up the rest slept out their backoff, 0.50 timed-out
            # waits per order at 4x2 on the hot SKU, bench/results/2026-12-01-path.md).
            wakes = min(1 + others, MAX_WAKES)
            return state
        except (LeaseLost, StaleFence, OverBudget) as error:
            logger.warning(
                "Order %r: settlement aborted, will retry: %s", str(request.order_id), error
            )
            if isinstance(error, StaleFence):
                self._advance_fences(lock, resources, request)
            cause = {LeaseLost: "lease_lost", StaleFence: "stale_fence"}.get(
                type(error), "over_budget"
            )
            try_later = TryLater(request.order_id, cause, str(error))
            if not recorded:
                return self._recorded_or_raise(request, try_later)
            raise try_later from None
        finally:
            # Nothing here acts on the outcome, so the round trip is not waited for.
            lock.release(lease, confirm=False, wakes=wakes)

    def _lock_outcome(self, started_s: float, outcome: str) -> float:
        """Report how one acquire sequence ended; return its duration in seconds."""
        duration_s = time.monotonic() - started_s
        self._events.lock_acquired(duration_s, outcome)
        return duration_s

    def _advance_fences(self, lock: OrderLock, resources: list[str], request: OrderRequest) -> None:
        """Lift the lock's fence counters above the fences the products carry.

        A stale holder changes nothing by this; lock nodes that lost their counters
        (restarted empty) issue fences the guard accepts again from the next lease.
        """
        highest = self._store.highest_fence(request.skus)
        confirmed = lock.advance_fence(resources, highest)
        logger.warning(
            "Fence counters of %r raised to %d on %d node(s).", resources, highest, confirmed
        )

    def _recorded_or_raise(self, request: OrderRequest, error: TryLater) -> OrderState:
        """Make sure a retried order exists (pending) before the task retries it.

        The uncontended path records the order in the same step as its
        settlement; when that path cannot run, the order must not vanish.
        """
        state = self.record(request)
        if state.status in TERMINAL:
            return state
        raise error

    def _try_acquire(
        self, lock: OrderLock, resources: list[str], request: OrderRequest
    ) -> Lease | None:
        try:
            return lock.acquire(resources, ttl_ms=self._policy.ttl_ms, fence=True, retry=NO_RETRY)
        except LockContended:
            return None
        except QuorumUnavailable as error:
            raise TryLater(request.order_id, "lock_unavailable", str(error)) from None

    def _handoff(
        self, lock: OrderLock, resources: list[str], request: OrderRequest
    ) -> Lease | None:
        """Get the lock at once, or handed over by a release within `LockPolicy.handoff_ms`.

        Nothing is recorded here. SKUs refused recently are waited for before the
        first request: on a hot SKU it would be refused (a round to every node for
        nothing; 2x2, hot SKU: 1.25-1.34 refused requests per order before, 0.24-0.33
        after, bench/results/2026-12-01-path-counters.json).
        """
        handoff_ms = self._policy.handoff_ms
        deadline_s = time.monotonic() + handoff_ms / 1000
        if (
            handoff_ms > 0
            and self._contended.is_contended(resources)
            and not lock.wait_released(resources, timeout_ms=handoff_ms)
        ):
            # No release for a whole window: the holder is slow or gone, or the SKU
            # went quiet (no wake-up left); ask at once from now on.
            self._contended.quiet(resources)
        while True:
            lease = self._try_acquire(lock, resources, request)
            if lease is not None:
                return lease
            self._contended.refused(resources)
            left_ms = (deadline_s - time.monotonic()) * 1000
            if left_ms <= 0 or not lock.wait_released(resources, timeout_ms=left_ms):
                return None

    def _wait(
        self, lock: OrderLock, resources: list[str], request: OrderRequest
    ) -> Lease | OrderState:
        """Back off (woken early by releases) until the order is decided or the lock is ours."""
        retry = self._policy.retry_in_task
        for attempt in range(1, retry.attempts):
            lock.wait_released(resources, timeout_ms=max(retry.delay_ms(attempt, self._rng), 1.0))
            state = self.state_of(request)
            if state.status in TERMINAL:
                return state
            lease = self._try_acquire(lock, resources, request)
            if lease is not None:
                return lease
        raise TryLater(
            request.order_id, "lock_contended", f"lock contended after {retry.attempts} attempts"
        )

    def _settle_until_decided(
        self, request: OrderRequest, lease: Lease | None, wait_ms: float | None, *, record: bool
    ) -> tuple[OrderState, int]:
        """Settle (recording first if asked) until the order is decided or nothing moves.

        Under a lease every step must finish with `COMMIT_MARGIN_MS` of validity to
        spare; the store refuses to commit a step that ran past that budget. Returns
        the order's state and how many other orders the steps decided.
        """
        others = 0
        while True:
            budget_ms = None
            if lease is not None:
                lease.check(margin_ms=COMMIT_MARGIN_MS)
                budget_ms = lease.remaining_ms() - COMMIT_MARGIN_MS
            step = self._store.settle(
                request,
                record=record,
                fence=None if lease is None else lease.fence,
                lease_token=None if lease is None else lease.token,
                wait_ms=wait_ms,
                budget_ms=budget_ms,
            )
            record = False
            # A settlement confirms or rejects; a failure here is the poison check's.
            settled = sum(1 for d in step.decisions if d.status is not OrderStatus.FAILED)
            if settled:
                self._events.settlement_batch(settled)
            others += sum(1 for d in step.decisions if d.order_id != request.order_id)
            state = self._report(step)
            if state.status in TERMINAL or not step.decisions:
                # Decided, or nothing left to settle while ours is still pending: its
                # row is locked by another run; the task looks again later.
                return state, others
