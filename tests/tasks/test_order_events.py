"""The order path reports every decision it makes: counts equal the database's, on PostgreSQL.

Several placers (threads, each with its own store and Redlock, as worker
processes would be) sell one hot SKU on real lock nodes; some orders are for
unknown SKUs, some invalid, some end failed. Every order this test's placers
moved to a terminal state must be reported once, with the reason the database stores.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from sqlalchemy import Engine, text

from locking import Redlock, RetryPolicy
from tasks.errors import TryLater
from tasks.models import OrderStatus
from tasks.placement import LockPolicy, OrderPlacer
from tests.domain import request
from tests.fakes import RecordingEvents
from tests.sale import seed_products
from tests.tasks.conftest import MakeStore

POSTGRESQL_ONLY = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
PLACERS = 4
ORDERS_EACH = 15


def terminal_orders(engine: Engine) -> Counter[tuple[str, str | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT status, reason, count(*) FROM orders WHERE status <> 'pending'"
                " GROUP BY status, reason"
            )
        ).all()
    return Counter({(str(status), reason): count for status, reason, count in rows})


@POSTGRESQL_ONLY
def test_the_decisions_reported_are_the_terminal_orders_of_the_database(
    make_store: MakeStore, node_urls: list[str], engine: Engine
) -> None:
    seed_products(engine, {"HOT": 20})
    events = RecordingEvents()
    policy = LockPolicy(
        handoff_ms=2.0, retry_in_task=RetryPolicy(attempts=3, base_delay_ms=1.0, max_delay_ms=3.0)
    )

    def sell(index: int) -> None:
        lock = Redlock(node_urls)
        placer = OrderPlacer(store=make_store(), lock=lock, policy=policy, events=events)
        try:
            for n in range(ORDERS_EACH):
                sku = "HOT" if n % 5 else f"GONE-{index}-{n}"
                order = request({sku: 1})
                for _ in range(5):  # a task's retries, shortened
                    try:
                        state = placer.place(order)
                    except TryLater as error:
                        events.task_retry(error.cause)
                        continue
                    if state.status is not OrderStatus.PENDING:
                        break
                else:
                    placer.fail(order, "lock_unavailable")
            placer.reject_invalid(uuid.uuid4(), "c1", "invalid_quantity")
        finally:
            lock.close()

    threads = [threading.Thread(target=sell, args=(i,)) for i in range(PLACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stored = terminal_orders(engine)
    reported = Counter((status, reason) for status, reason, _ in events.decisions)
    assert reported == stored
    assert sum(stored.values()) == PLACERS * (ORDERS_EACH + 1)  # every order decided
    assert stored[("confirmed", None)] == 20
    assert stored[("rejected", "unknown_sku")] == PLACERS * 3
    ages = [(status, reason, age) for status, reason, age in events.decisions]
    assert all(age is not None and age >= 0 for _, _, age in ages), ages
    # Settlements decided the confirmed and the sold-out orders, nothing else.
    settled = stored[("confirmed", None)] + stored[("rejected", "insufficient_stock")]
    assert sum(events.batches) == settled
    assert {outcome for _, outcome in events.lock_waits} <= {"granted", "contended"}
