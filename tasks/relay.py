"""The relay: publish the orders the broker never got, or lost, without flooding it.

Each round (every ``INTAKE_RELAY_INTERVAL_S``, run by Celery beat):

1. **Never published.** ``accepted`` orders whose publish after commit failed
   (``published_at`` is NULL) are published at once.
2. **Maybe lost.** Open orders whose last publication is older than
   ``republish_after_s`` and that no worker took for as long (``accepted``, or
   ``pending`` with an old ``delivered_at``) are *candidates*. During a flash sale
   the queue may hold minutes of backlog, so an old order is not a lost one. If
   every candidate's message were still with the broker (queued, or delivered to
   a worker that has not started it yet), the broker would hold at least as many
   messages as there are candidates; so the relay republishes at most
   ``candidates - messages held`` of them per round, oldest first. A backlog is
   therefore never republished, and a broker that lost its queue gets every
   candidate back in one round.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` and stamped (``published_at``,
``republications``) in one short transaction, before publishing: two relays at
once never publish the same order in one round. SQLite (the demo) has no row
locks; its writers are serialized and the demo runs one relay.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from tasks.models import OPEN, ORDER_ITEMS, ORDERS, OrderStatus

logger = logging.getLogger(__name__)

#: The relay task's public name (the beat schedule sends it; `tasks.relay_task`).
RELAY_TASK_NAME = "tasks.relay_orders"
#: The queue of the relay's rounds (workers consume it besides the orders' queue).
RELAY_QUEUE = "flashsale.relay"
#: Orders published per round at most; the rest wait for the next round.
RELAY_BATCH_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class RelayRound:
    """What one round did.

    :param published: never-published orders it published.
    :param republished: candidates it published again.
    :param candidates: open orders older than the threshold, before this round.
    :param queued: the broker queue's length it saw (None: not asked, no candidate).
    :param failed: claimed orders whose publish failed (released for the next round).
    """

    published: int = 0
    republished: int = 0
    candidates: int = 0
    queued: int | None = None
    failed: int = 0


@dataclass(frozen=True, slots=True)
class _Claimed:
    order_id: uuid.UUID
    previous_published_at: datetime | None
    kwargs: dict[str, Any]


class OrderRelay:
    """Publishes, from the database, what the broker should hold and may not.

    :param engine: the orders' database.
    :param publish: sends one ``tasks.place_order`` message (kwargs); raises on failure.
    :param queue_length: messages the broker holds for the workers (queued, and on
        Redis also delivered but not acknowledged).
    :param republish_after_s: seconds after its last publication (and delivery)
        before an open order is a candidate for republication.
    :param batch_limit: orders published per round at most.
    :param clock: the current time (UTC).
    """

    def __init__(
        self,
        *,
        engine: Engine,
        publish: Callable[[Mapping[str, Any]], None],
        queue_length: Callable[[], int],
        republish_after_s: float = 60.0,
        batch_limit: int = RELAY_BATCH_LIMIT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._publish = publish
        self._queue_length = queue_length
        self._republish_after = timedelta(seconds=republish_after_s)
        self._batch_limit = batch_limit
        self._clock = clock

    def run_once(self) -> RelayRound:
        """Run one round: publish the never-published, then republish what must be lost."""
        now = self._clock()
        fresh = self._claim(_never_published(), self._batch_limit, now)
        published, failed = self._send(fresh, republication=False)
        if failed:
            return RelayRound(published=published, failed=failed)
        stale = _stale(now - self._republish_after)
        if not self._count(stale):
            return RelayRound(published=published)
        # The queue first, the candidates after: a message consumed in between leaves
        # the candidates (its order is delivered) before it leaves the broker (acked),
        # so the difference can only err on the side of republishing less.
        queued = self._queue_length()
        candidates = self._count(stale)
        allowance = min(max(candidates - queued, 0), self._batch_limit - len(fresh))
        claimed = self._claim(stale, allowance, now) if allowance > 0 else []
        republished, failed = self._send(claimed, republication=True)
        return RelayRound(published, republished, candidates, queued, failed)

    def _count(self, condition: ColumnElement[bool]) -> int:
        with self._engine.connect() as connection:
            return int(connection.scalar(select(func.count()).where(condition)) or 0)

    def _claim(self, condition: ColumnElement[bool], limit: int, now: datetime) -> list[_Claimed]:
        """Lock (skipping locked rows), stamp and return up to ``limit`` orders, oldest first."""
        if limit <= 0:
            return []
        with self._engine.begin() as connection:
            rows = connection.execute(
                select(ORDERS.c.id, ORDERS.c.customer_id, ORDERS.c.published_at)
                .where(condition)
                .order_by(_last_published(), ORDERS.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            ids = [row.id for row in rows]
            connection.execute(
                update(ORDERS)
                .where(ORDERS.c.id.in_(ids))
                .values(published_at=now, republications=ORDERS.c.republications + 1)
            )
            carts = _carts(connection, ids)
        return [
            _Claimed(
                row.id,
                row.published_at,
                {"order_id": str(row.id), "customer_id": row.customer_id, "items": carts[row.id]},
            )
            for row in rows
        ]

    def _send(self, claimed: list[_Claimed], *, republication: bool) -> tuple[int, int]:
        """Publish the claimed orders; on a failure release the rest; return (sent, failed)."""
        for index, order in enumerate(claimed):
            try:
                self._publish(order.kwargs)
            except Exception as error:
                unsent = claimed[index:]
                logger.warning(
                    "Relay: publishing order %r failed (%s); %d order(s) left for the next round.",
                    order.kwargs["order_id"],
                    error,
                    len(unsent),
                )
                self._release(unsent)
                return index, len(unsent)
            logger.info(
                "Relay: %s order %r.",
                "republished" if republication else "published",
                order.kwargs["order_id"],
            )
        return len(claimed), 0

    def _release(self, unsent: list[_Claimed]) -> None:
        """Undo the stamps of orders that were claimed but not published."""
        with self._engine.begin() as connection:
            for order in unsent:
                connection.execute(
                    update(ORDERS)
                    .where(ORDERS.c.id == order.order_id)
                    .values(
                        published_at=order.previous_published_at,
                        republications=ORDERS.c.republications - 1,
                    )
                )


def _last_published() -> ColumnElement[Any]:
    return func.coalesce(ORDERS.c.published_at, ORDERS.c.created_at)


def _never_published() -> ColumnElement[bool]:
    return and_(ORDERS.c.status == OrderStatus.ACCEPTED, ORDERS.c.published_at.is_(None))


def _stale(cutoff: datetime) -> ColumnElement[bool]:
    """Open, last published before ``cutoff``, and not delivered to a worker since."""
    return and_(
        ORDERS.c.status.in_(OPEN),
        _last_published() < cutoff,
        or_(ORDERS.c.delivered_at.is_(None), ORDERS.c.delivered_at < cutoff),
    )


def _carts(connection: Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    carts: dict[uuid.UUID, list[dict[str, Any]]] = {order_id: [] for order_id in ids}
    rows = connection.execute(
        select(ORDER_ITEMS.c.order_id, ORDER_ITEMS.c.sku, ORDER_ITEMS.c.quantity)
        .where(ORDER_ITEMS.c.order_id.in_(ids))
        .order_by(ORDER_ITEMS.c.order_id, ORDER_ITEMS.c.sku)
    )
    for order_id, sku, quantity in rows:
        carts[order_id].append({"sku": sku, "quantity": quantity})
    return carts
