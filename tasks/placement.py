"""Placing one order: record it, take the lock over its SKUs, settle, release.

This is the orchestration the Celery task calls; it knows nothing of Celery.
Errors that are worth a later retry come out as `StockUnavailable` or
`DatabaseUnavailable`; everything else is an outcome.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from locking import NO_RETRY, LeaseLost, LockContended, QuorumUnavailable, Redlock, RetryPolicy
from tasks.errors import DatabaseUnavailable, StaleFence, StockUnavailable
from tasks.models import TERMINAL, OrderStatus
from tasks.orders import OrderState, fail_pending, find_order, record_pending
from tasks.settlement import settle
from tasks.validation import OrderRequest

logger = logging.getLogger(__name__)

#: Validity a lease must still have when the settlement commits.
COMMIT_MARGIN_MS = 200.0


@dataclass(frozen=True, kw_only=True)
class LockPolicy:
    """How an order waits for the lock inside one task run.

    :param ttl_ms: lease TTL; must cover one settlement transaction with margin.
    :param wait: attempts and backoff before the task gives the slot back and retries later.
    """

    ttl_ms: int = 5000
    wait: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=8, base_delay_ms=2.0, max_delay_ms=50.0)
    )


class OrderPlacer:
    """Places orders against one database and, unless disabled, one Redlock.

    :param sessions: the session factory of this process.
    :param redlock: the lock, or None to rely on the database guard alone
        (benchmarks only: the guard stays correct, contention is just higher).
    :param policy: lock TTL and in-task wait.
    :param max_deliveries: deliveries of one order after which it is failed as poison.
    """

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        redlock: Redlock | None,
        policy: LockPolicy = LockPolicy(),
        max_deliveries: int = 20,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = sessions
        self._redlock = redlock
        self._policy = policy
        self._max_deliveries = max_deliveries
        self._sleep = sleep
        self._rng = rng or random.Random()

    def place(self, request: OrderRequest) -> OrderState:
        """Record the order and decide it; return its state (terminal unless retried).

        :raises OrderConflict: the id was used with another payload.
        :raises StockUnavailable: the lock could not be taken in this run.
        :raises DatabaseUnavailable: the database failed; nothing half-done remains.
        """
        with self._transaction() as session:
            state = record_pending(session, request)
            if state.status is OrderStatus.PENDING and state.attempts > self._max_deliveries:
                # Redelivered again and again (a crash in its path): stop, visibly.
                state = fail_pending(session, request.order_id, "too_many_attempts") or state
        if state.status in TERMINAL:
            return state
        if self._redlock is None:
            with self._transaction() as session:
                settle(session, skus=request.skus, fence=None)
            return self.state_of(request)
        return self._place_locked(request, self._redlock)

    def state_of(self, request: OrderRequest) -> OrderState:
        """Read the order's current state."""
        with self._transaction() as session:
            state = find_order(session, request.order_id)
        assert state is not None, "a recorded order cannot vanish"
        return state

    def _place_locked(self, request: OrderRequest, redlock: Redlock) -> OrderState:
        resources = [f"sku:{sku}" for sku in request.skus]
        wait = self._policy.wait
        started_s = time.monotonic()
        for attempt in range(1, wait.attempts + 1):
            try:
                lease = redlock.acquire(
                    resources, ttl_ms=self._policy.ttl_ms, fence=True, retry=NO_RETRY
                )
            except LockContended:
                # The holder settles every pending order on these SKUs, ours included.
                state = self.state_of(request)
                if state.status in TERMINAL:
                    return state
                self._sleep(wait.delay_ms(attempt, self._rng) / 1000)
                continue
            except QuorumUnavailable as error:
                raise StockUnavailable(request.order_id, str(error)) from None
            wait_ms = (time.monotonic() - started_s) * 1000
            try:
                return self._settle_until_decided(request, lease.fence, lease.check, wait_ms)
            except (LeaseLost, StaleFence) as error:
                logger.warning(
                    "Order %r: settlement aborted, will retry: %s", str(request.order_id), error
                )
                raise StockUnavailable(request.order_id, str(error)) from None
            finally:
                redlock.release(lease)
        raise StockUnavailable(request.order_id, f"lock contended after {wait.attempts} attempts")

    def _settle_until_decided(
        self, request: OrderRequest, fence: int | None, check: Callable[..., None], wait_ms: float
    ) -> OrderState:
        while True:
            with self._transaction() as session:
                decided = settle(
                    session,
                    skus=request.skus,
                    fence=fence,
                    before_commit=lambda: check(margin_ms=COMMIT_MARGIN_MS),
                    own_order=(request.order_id, wait_ms),
                ).decided
            if request.order_id in decided:
                status, reason = decided[request.order_id]
                return OrderState(request.order_id, status, reason, 0)
            state = self.state_of(request)
            if state.status in TERMINAL or not decided:
                # Decided elsewhere, or (not decided, nothing pending) a row lock we
                # skipped: another run holds it; let the task look again later.
                return state

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A session in one transaction; driver errors become `DatabaseUnavailable`."""
        try:
            with self._sessions.begin() as session:
                yield session
        except DBAPIError as error:
            if error.connection_invalidated or _is_operational(error):
                raise DatabaseUnavailable(str(error.orig).strip()[:300]) from None
            raise


def _is_operational(error: DBAPIError) -> bool:
    name = type(error.orig).__name__
    return name in {"OperationalError", "InterfaceError"} or "Operational" in type(error).__name__
