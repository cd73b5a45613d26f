"""What the order path reports as it runs: decisions, settlements, retries, lock waits, relays.

`OrderEvents` is the interface; a worker injects an implementation (metrics) from
its wiring, and `NULL_EVENTS` is the default everywhere. Implementations must be
cheap and must not raise: they are called on the hot path.
"""

from __future__ import annotations

from typing import Final, Protocol

#: The outcomes of one acquire attempt sequence of the order path.
LOCK_OUTCOMES: Final = ("granted", "contended", "unavailable")
#: Why the task was retried later.
RETRY_CAUSES: Final = (
    "lock_contended",  # the lock stayed taken through the in-task wait
    "lock_unavailable",  # no quorum of lock nodes answered
    "row_busy",  # the order's row was locked by another run's settlement
    "lease_lost",  # the lease lapsed before the settlement could commit
    "stale_fence",  # a newer lease wrote the stock: this lease was stale
    "over_budget",  # the settlement ran longer than its lease could spare
    "database_unavailable",  # the database could not be reached
    "time_limit",  # the task's soft time limit fired
)


class OrderEvents(Protocol):
    """Receives the events of the order path of one process."""

    def lock_acquired(self, duration_s: float, outcome: str) -> None:
        """One acquire attempt sequence of the order path ended.

        :param duration_s: seconds from its first request to its outcome.
        :param outcome: one of `LOCK_OUTCOMES`.
        """

    def order_decided(self, status: str, reason: str | None, age_s: float | None) -> None:
        """This process moved one order to a terminal state (its own or another's).

        :param status: ``confirmed``, ``rejected`` or ``failed``.
        :param reason: the reason exactly as stored in the database.
        :param age_s: seconds from the order's creation to the decision, None when unknown.
        """

    def settlement_batch(self, orders: int) -> None:
        """One settlement step under a lock decided ``orders`` orders (at least one)."""

    def task_retry(self, cause: str) -> None:
        """The task gave its slot back and will run the order again later.

        :param cause: one of `RETRY_CAUSES`.
        """

    def orders_relayed(self, published: int, republished: int) -> None:
        """One intake relay round (`tasks.relay`) published orders.

        :param published: orders whose publish after their commit had failed.
        :param republished: open orders published again (their message may be lost).
        """


class _NullEvents:
    """Drops every event."""

    def lock_acquired(self, duration_s: float, outcome: str) -> None:
        """Drop the event."""

    def order_decided(self, status: str, reason: str | None, age_s: float | None) -> None:
        """Drop the event."""

    def settlement_batch(self, orders: int) -> None:
        """Drop the event."""

    def task_retry(self, cause: str) -> None:
        """Drop the event."""

    def orders_relayed(self, published: int, republished: int) -> None:
        """Drop the event."""


#: The no-op implementation, the default wherever events are optional.
NULL_EVENTS: OrderEvents = _NullEvents()
