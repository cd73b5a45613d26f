"""The storage seam of the order path: `OrderStore`, and what its steps return.

Two implementations, chosen once by the worker's wiring from the database URL:
`tasks.pg_store.PostgresOrderStore` (each step one statement, the SQL functions
of ``tasks/sql``) and `tasks.sqlite_store.SqliteOrderStore` (the same rules in
Python, `tasks.settlement`, for the demo). Both run the same contract tests
(tests/tasks/test_store_contract.py), as does the in-memory fake of the tests.

Every step returns the orders it moved to a terminal state (`Decision`), so the
caller can report exact counts. Driver errors that mean "try later" come out as
`DatabaseUnavailable`.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from tasks.errors import DatabaseUnavailable, OverBudget
from tasks.models import PRODUCTS, OrderStatus
from tasks.orders import Decision, Executor, OrderState
from tasks.validation import OrderRequest


@dataclass(frozen=True, kw_only=True)
class StoreOptions:
    """How a store runs; the worker's settings default to these values.

    :param max_deliveries: deliveries of one order after which it is failed as poison.
    :param pool_size: connections each pool of the store keeps.
    """

    max_deliveries: int = 20
    pool_size: int = 2


#: The options of a store built without any.
DEFAULT_OPTIONS = StoreOptions()


@dataclass(frozen=True, slots=True)
class StepResult:
    """The order's state after one store step, and every order that step decided."""

    state: OrderState
    decisions: tuple[Decision, ...] = ()


class OrderStore(Protocol):
    """Records, settles and reads orders for one process."""

    def record(self, request: OrderRequest) -> StepResult:
        """Record the order as pending, or count a redelivery.

        An order delivered more than ``max_deliveries`` times is failed as poison.

        :raises OrderConflict: the id was used with another payload.
        """
        ...

    def state(self, order_id: uuid.UUID) -> OrderState:
        """Read a recorded order's current state; `KeyError` when it was never recorded."""
        ...

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
        """Settle the pending orders within the order's SKUs, recording it first if asked.

        :param record: also record the order (its first step in this task run).
        :param fence: the lease's fence, or None without a lock.
        :param lease_token: the lease's token (its digest is stored with the fence).
        :param wait_ms: how long the order waited for its lock, stored with it.
        :param budget_ms: how long the step may take before its lease is in doubt;
            past it nothing is committed and `OverBudget` is raised.
        :raises OrderConflict: the id was used with another payload.
        :raises StaleFence: a newer lease, or another lease with the same fence,
            wrote these SKUs; nothing was committed.
        """
        ...

    def end(self, request: OrderRequest, status: OrderStatus, reason: str) -> StepResult:
        """End the order with ``status`` and ``reason`` unless it was decided.

        Records it first when it never reached the database (not counted as a delivery).
        """
        ...

    def reject_invalid(self, order_id: uuid.UUID, customer_id: object, reason: str) -> StepResult:
        """Store an order whose payload was invalid as rejected; an existing one stays."""
        ...

    def highest_fence(self, skus: Sequence[str]) -> int:
        """Return the highest fence that wrote the stock of any of ``skus`` (0 if none)."""
        ...

    def known_skus(self, skus: Sequence[str]) -> frozenset[str]:
        """Return which of ``skus`` are products."""
        ...

    def dispose(self, *, close: bool = True) -> None:
        """Drop the store's connections; ``close=False`` in a forked child."""
        ...


def token_digest(lease_token: str | None) -> str | None:
    """Return the 16-hex-digit digest of a lease token that the products store.

    A digest, not the token: the token authorises releases on the lock nodes, and
    whoever reads the database should not learn it. 64 bits keep a collision
    between two leases with the same fence out of reach.
    """
    if lease_token is None:
        return None
    return hashlib.sha256(lease_token.encode()).hexdigest()[:16]


def read_highest_fence(executor: Executor, skus: Sequence[str]) -> int:
    """Return the highest fence on the products ``skus`` (0 if none)."""
    value = executor.scalar(select(func.max(PRODUCTS.c.fence)).where(PRODUCTS.c.sku.in_(skus)))
    return int(value or 0)


def read_known_skus(executor: Executor, skus: Sequence[str]) -> frozenset[str]:
    """Return which of ``skus`` have a product row."""
    rows = executor.execute(select(PRODUCTS.c.sku).where(PRODUCTS.c.sku.in_(list(skus))))
    return frozenset(str(sku) for (sku,) in rows)


def budget_check(budget_ms: float | None) -> Callable[[], None]:
    """Return a check that raises `OverBudget` once ``budget_ms`` have passed since now."""
    started_s = time.monotonic()

    def check() -> None:
        if budget_ms is not None and (time.monotonic() - started_s) * 1000 > budget_ms:
            raise OverBudget(budget_ms)

    return check


@contextmanager
def translated() -> Iterator[None]:
    """Turn driver errors that mean "the database is away" into `DatabaseUnavailable`."""
    try:
        yield
    except DBAPIError as error:
        if error.connection_invalidated or _is_operational(error):
            raise DatabaseUnavailable(str(error.orig).strip()[:300]) from None
        raise


def _is_operational(error: DBAPIError) -> bool:
    name = type(error.orig).__name__
    return name in {"OperationalError", "InterfaceError"} or "Operational" in type(error).__name__
