"""Honest in-memory implementations of the order path's two seams, for fast unit tests.

`InMemoryLock` stands for a `locking.Redlock` as `tasks.lock.OrderLock` describes
it, and `InMemoryOrderStore` for a `tasks.store.OrderStore`. Both pass the same
contract tests as the real ones (tests/tasks/test_lock_contract.py and
test_store_contract.py), so a placement test that uses them claims something
about the placement logic only; whatever claims something about the system
runs on real redis-servers and databases.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from locking import (
    MAX_WAKES,
    NO_RETRY,
    Lease,
    LockContended,
    QuorumUnavailable,
    ReleaseOutcome,
    RetryPolicy,
)
from locking.timing import drift_ms
from tasks.errors import OrderConflict, OverBudget, StaleFence
from tasks.models import TERMINAL, OrderStatus
from tasks.orders import Decision, OrderState
from tasks.settlement import BATCH_LIMIT
from tasks.store import StepResult, StoreOptions, token_digest
from tasks.validation import OrderRequest


class InMemoryLock:
    """A fenced multi-resource lock in one process's memory, with wake-ups on release.

    :param clock: monotonic seconds (injected so tests can move time).
    :param available: False makes every acquire raise `QuorumUnavailable`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}
        self.fences: dict[str, int] = {}
        self.available = True
        self._released = threading.Condition()
        self._wakeups: dict[str, int] = {}

    def acquire(
        self,
        resources: str | Sequence[str],
        *,
        ttl_ms: int,
        fence: bool = False,
        retry: RetryPolicy | None = None,
    ) -> Lease:
        """Take every resource or none (see `locking.Redlock.acquire`)."""
        names = _names(resources)
        policy = retry or NO_RETRY
        for attempt in range(1, policy.attempts + 1):
            lease = self._try(names, ttl_ms, fence)
            if lease is not None:
                return lease
            if attempt < policy.attempts:
                time.sleep(policy.delay_ms(attempt, _RNG) / 1000)
        if not self.available:
            raise QuorumUnavailable(resources=names, attempts=policy.attempts, node_errors=())
        raise LockContended(resources=names, attempts=policy.attempts, votes={"held": 1})

    def _try(self, names: tuple[str, ...], ttl_ms: int, fence: bool) -> Lease | None:
        if not self.available:
            return None
        with self._released:
            now_s = self._clock()
            if any(name in self._held and self._held[name][1] > now_s for name in names):
                return None
            token = secrets.token_hex(16)
            for name in names:
                self._held[name] = (token, now_s + ttl_ms / 1000)
            value = None
            if fence:
                value = max(self.fences.get(name, 0) for name in names) + 1
                for name in names:
                    self.fences[name] = value
            return Lease(
                resources=names,
                token=token,
                ttl_ms=ttl_ms,
                validity_ms=ttl_ms - drift_ms(ttl_ms),
                valid_until_s=now_s + (ttl_ms - drift_ms(ttl_ms)) / 1000,
                fence=value,
                clock=self._clock,
            )

    def release(self, lease: Lease, *, confirm: bool = True, wakes: int = 1) -> ReleaseOutcome:
        """Give the lease up and wake ``wakes`` waiters per resource."""
        if not 1 <= wakes <= MAX_WAKES:
            raise ValueError(f"wakes must be 1 to {MAX_WAKES}, got {wakes!r}")
        if lease.release_outcome is not None:
            return lease.release_outcome
        with self._released:
            mine = [
                name
                for name in lease.resources
                if name in self._held
                and self._held[name][0] == lease.token
                and self._held[name][1] > self._clock()
            ]
            for name in lease.resources:
                if self._held.get(name, ("", 0.0))[0] == lease.token:
                    del self._held[name]
            for name in mine:
                self._wakeups[name] = wakes
            self._released.notify_all()
        outcome = ReleaseOutcome.RELEASED if mine else ReleaseOutcome.EXPIRED
        lease.release_outcome = ReleaseOutcome.SENT if not confirm else outcome
        return lease.release_outcome

    def wait_released(self, resources: str | Sequence[str], *, timeout_ms: float) -> bool:
        """Wait up to ``timeout_ms`` for a release of one of ``resources``; True when woken."""
        names = _names(resources)
        deadline_s = time.monotonic() + max(timeout_ms, 0.0) / 1000
        with self._released:
            while True:
                for name in names:
                    if self._wakeups.get(name, 0) > 0:
                        self._wakeups[name] -= 1
                        return True
                left_s = deadline_s - time.monotonic()
                if left_s <= 0:
                    return False
                self._released.wait(left_s)

    def advance_fence(self, resources: str | Sequence[str], at_least: int) -> int:
        """Raise the fence counters of ``resources`` to ``at_least`` (never lower them)."""
        with self._released:
            for name in _names(resources):
                self.fences[name] = max(self.fences.get(name, 0), at_least)
        return 1


@dataclass
class _Order:
    customer_id: str
    payload_hash: str
    lines: tuple[tuple[str, int], ...]
    status: OrderStatus
    reason: str | None
    attempts: int
    created_s: float
    seq: int


@dataclass
class _Product:
    stock: int
    fence: int = 0
    fence_token: str | None = None


@dataclass
class InMemoryOrderStore:
    """Orders and products in memory, with the same rules as the SQL stores.

    :param products: SKU -> stock at the start.
    :param options: the delivery limit.
    :param clock: seconds, for the ages of decisions.
    """

    products: Mapping[str, int] = field(default_factory=dict)
    options: StoreOptions = field(default_factory=StoreOptions)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._products = {sku: _Product(stock) for sku, stock in self.products.items()}
        self._orders: dict[uuid.UUID, _Order] = {}
        self._mutex = threading.Lock()
        self._seq = 0

    def dispose(self, *, close: bool = True) -> None:
        """Nothing to drop."""

    def stock(self) -> dict[str, int]:
        """Return SKU -> stock (for tests)."""
        return {sku: product.stock for sku, product in self._products.items()}

    def record(self, request: OrderRequest) -> StepResult:
        """Record the order as pending, or count a redelivery."""
        with self._mutex:
            return self._record(request)

    def state(self, order_id: uuid.UUID) -> OrderState:
        """Read a recorded order's current state."""
        with self._mutex:
            return self._state(order_id)

    def settle(
        self,
        request: OrderRequest,
        *,
        record: bool,
        fence: int | None,
        lease_token: str | None,
        wait_ms: float | None,
        budget_ms: float | None,
    ) -> StepResult:
        """Record (if asked) and settle, all or nothing, like the SQL stores."""
        started_s = time.monotonic()
        with self._mutex:
            saved_orders = {key: _copy(order) for key, order in self._orders.items()}
            saved_products = {key: _Product(**vars(p)) for key, p in self._products.items()}
            try:
                if record:
                    step = self._record(request)
                    if step.state.status in TERMINAL:
                        return step
                decisions = self._settle(request.skus, fence, token_digest(lease_token))
                if budget_ms is not None and (time.monotonic() - started_s) * 1000 > budget_ms:
                    raise OverBudget(budget_ms)
            except BaseException:
                self._orders, self._products = saved_orders, saved_products
                raise
            return StepResult(self._state(request.order_id), tuple(decisions))

    def end(self, request: OrderRequest, status: OrderStatus, reason: str) -> StepResult:
        """End the order unless decided; record it first if it was never recorded."""
        with self._mutex:
            if request.order_id not in self._orders:
                self._insert(request)
            order = self._orders[request.order_id]
            if order.status in TERMINAL:
                return StepResult(self._state(request.order_id))
            decision = self._decide(request.order_id, status, reason)
            return StepResult(self._state(request.order_id), (decision,))

    def reject_invalid(self, order_id: uuid.UUID, customer_id: object, reason: str) -> StepResult:
        """Store an invalid order as rejected; an existing order stays."""
        with self._mutex:
            if order_id in self._orders:
                return StepResult(self._state(order_id))
            customer = customer_id if isinstance(customer_id, str) else ""
            self._seq += 1
            self._orders[order_id] = _Order(
                customer, "", (), OrderStatus.REJECTED, reason, 1, self.clock(), self._seq
            )
            decision = Decision(order_id, OrderStatus.REJECTED, reason, 0.0)
            return StepResult(self._state(order_id), (decision,))

    def highest_fence(self, skus: Sequence[str]) -> int:
        """Return the highest fence on the products ``skus`` (0 if none)."""
        with self._mutex:
            return max((self._products[s].fence for s in skus if s in self._products), default=0)

    def known_skus(self, skus: Sequence[str]) -> frozenset[str]:
        """Return which of ``skus`` are products."""
        return frozenset(sku for sku in skus if sku in self._products)

    def _record(self, request: OrderRequest) -> StepResult:
        order = self._orders.get(request.order_id)
        if order is None:
            self._insert(request)
            return StepResult(self._state(request.order_id))
        if order.payload_hash != request.payload_hash:
            raise OrderConflict(request.order_id)
        order.attempts += 1
        if order.status is OrderStatus.PENDING and order.attempts > self.options.max_deliveries:
            decision = self._decide(request.order_id, OrderStatus.FAILED, "too_many_attempts")
            return StepResult(self._state(request.order_id), (decision,))
        return StepResult(self._state(request.order_id))

    def _insert(self, request: OrderRequest) -> None:
        self._seq += 1
        lines = tuple((line.sku, line.quantity) for line in request.lines)
        self._orders[request.order_id] = _Order(
            request.customer_id,
            request.payload_hash,
            lines,
            OrderStatus.PENDING,
            None,
            1,
            self.clock(),
            self._seq,
        )

    def _state(self, order_id: uuid.UUID) -> OrderState:
        order = self._orders[order_id]  # KeyError when never recorded, as the SQL stores
        return OrderState(order_id, order.status, order.reason, order.attempts)

    def _decide(self, order_id: uuid.UUID, status: OrderStatus, reason: str | None) -> Decision:
        order = self._orders[order_id]
        order.status, order.reason = status, reason
        return Decision(order_id, status, reason, max(self.clock() - order.created_s, 0.0))

    def _settle(self, skus: Sequence[str], fence: int | None, digest: str | None) -> list[Decision]:
        within = set(skus)
        pending = sorted(
            (
                (order.seq, order_id)
                for order_id, order in self._orders.items()
                if order.status is OrderStatus.PENDING
                and order.lines
                and all(sku in within for sku, _ in order.lines)
            ),
        )[:BATCH_LIMIT]
        if not pending:
            return []
        if fence is not None:
            for sku in sorted(within & set(self._products)):
                product = self._products[sku]
                if product.fence > fence or (
                    product.fence == fence and product.fence_token != digest
                ):
                    raise StaleFence(sku, fence)
        decisions = []
        for _, order_id in pending:
            lines = self._orders[order_id].lines
            if any(sku not in self._products for sku, _ in lines):
                decisions.append(self._decide(order_id, OrderStatus.REJECTED, "unknown_sku"))
            elif any(self._products[sku].stock < quantity for sku, quantity in lines):
                decisions.append(self._decide(order_id, OrderStatus.REJECTED, "insufficient_stock"))
            else:
                for sku, quantity in lines:
                    product = self._products[sku]
                    product.stock -= quantity
                    if fence is not None:
                        product.fence, product.fence_token = fence, digest
                decisions.append(self._decide(order_id, OrderStatus.CONFIRMED, None))
        return decisions


def _copy(order: _Order) -> _Order:
    return _Order(**vars(order))


def _names(resources: str | Sequence[str]) -> tuple[str, ...]:
    return (resources,) if isinstance(resources, str) else tuple(resources)


_RNG = random.Random()


class RecordingEvents:
    """An `OrderEvents` that keeps every event, thread-safely, for assertions."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.decisions: list[tuple[str, str | None, float | None]] = []
        self.batches: list[int] = []
        self.retries: list[str] = []
        self.lock_waits: list[tuple[float, str]] = []
        self.relayed: list[tuple[int, int]] = []

    def lock_acquired(self, duration_s: float, outcome: str) -> None:
        """Keep (duration, outcome)."""
        with self._mutex:
            self.lock_waits.append((duration_s, outcome))

    def order_decided(self, status: str, reason: str | None, age_s: float | None) -> None:
        """Keep (status, reason, age)."""
        with self._mutex:
            self.decisions.append((status, reason, age_s))

    def settlement_batch(self, orders: int) -> None:
        """Keep the batch size."""
        with self._mutex:
            self.batches.append(orders)

    def task_retry(self, cause: str) -> None:
        """Keep the cause."""
        with self._mutex:
            self.retries.append(cause)

    def orders_relayed(self, published: int, republished: int) -> None:
        """Keep (published, republished)."""
        with self._mutex:
            self.relayed.append((published, republished))
