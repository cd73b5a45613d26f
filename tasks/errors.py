"""The order domain's exceptions: one root, `OrderError`, each carrying its context."""

from __future__ import annotations

import uuid


class OrderError(Exception):
    """Root of every error raised by the order domain."""


class InvalidOrder(OrderError):
    """The payload is not an order we can process; it is rejected, never retried.

    :param reason: a stable, machine-readable reason (``invalid_quantity``...).
    :param detail: a human-readable explanation.
    :param order_id: the order's id when it could be read from the payload.
    """

    def __init__(self, reason: str, detail: str, *, order_id: uuid.UUID | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.order_id = order_id


class OrderConflict(OrderError):
    """An order id was reused with a different payload; the first order stands."""

    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"order {order_id} already exists with a different payload")
        self.order_id = order_id


class TryLater(OrderError):
    """The lock or the order's row is busy (or the lease lapsed): retry the order later.

    Not "out of stock": an order without stock is decided ``rejected``.

    :param order_id: the order that could not be decided in this run.
    :param cause: one of `tasks.events.RETRY_CAUSES` (``lock_contended``...).
    :param detail: what stood in the way, for the logs.
    """

    def __init__(self, order_id: uuid.UUID, cause: str, detail: str) -> None:
        super().__init__(f"order {order_id} cannot be decided now ({cause}): {detail}")
        self.order_id = order_id
        self.cause = cause
        self.detail = detail


class DatabaseUnavailable(OrderError):
    """The database could not be reached or dropped the connection; retry later."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"database unavailable: {detail}")
        self.detail = detail


class StaleFence(OrderError):
    """A product row carries a newer fence than our lease: another holder wrote since."""

    def __init__(self, sku: str, fence: int | None) -> None:
        super().__init__(f"stock of {sku!r} was written by a newer lease than fence {fence}")
        self.sku = sku
        self.fence = fence


class OverBudget(OrderError):
    """A settlement ran longer than its lease could spare; nothing was committed.

    :param budget_ms: the time the lease could spare when the settlement started.
    """

    def __init__(self, budget_ms: float) -> None:
        super().__init__(f"settlement ran longer than its budget of {budget_ms:.1f} ms")
        self.budget_ms = budget_ms


class BrokerUnavailable(OrderError):
    """The producer could not hand the order to the broker; nothing was enqueued."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the order broker is unavailable: {detail}")
        self.detail = detail
