"""`OrderPlacer`'s logic on the in-memory lock and store: no redis-server, no database.

The fakes pass the same contract tests as the real parts; what the placement
claims about the system is tested on real parts in test_placement.py.
"""

from __future__ import annotations

import pytest

from locking import RetryPolicy
from tasks.errors import TryLater
from tasks.models import OrderStatus
from tasks.placement import LockPolicy, OrderPlacer
from tests.domain import request
from tests.fakes import InMemoryLock, InMemoryOrderStore, RecordingEvents

QUICK = LockPolicy(
    handoff_ms=1.0, retry_in_task=RetryPolicy(attempts=2, base_delay_ms=1.0, max_delay_ms=1.0)
)


def make(
    stock: dict[str, int],
) -> tuple[OrderPlacer, InMemoryLock, InMemoryOrderStore, RecordingEvents]:
    lock, store, events = InMemoryLock(), InMemoryOrderStore(products=stock), RecordingEvents()
    return OrderPlacer(store=store, lock=lock, policy=QUICK, events=events), lock, store, events


def test_an_order_is_confirmed_under_a_fenced_lease_and_reported() -> None:
    placer, lock, store, events = make({"A": 2})
    state = placer.place(request({"A": 1}))
    assert (state.status, store.stock(), lock.fences) == (
        OrderStatus.CONFIRMED,
        {"A": 1},
        {"sku:A": 1},
    )
    assert [(s, r) for s, r, _ in events.decisions] == [("confirmed", None)]
    assert [outcome for _, outcome in events.lock_waits] == ["granted"]
    assert events.batches == [1]


def test_the_holder_decides_and_reports_the_orders_recorded_behind_it() -> None:
    placer, _, store, events = make({"A": 2})
    waiting = [request({"A": 1}) for _ in range(2)]
    for order in waiting:
        store.record(order)
    assert placer.place(request({"A": 1})).reason == "insufficient_stock"
    assert sorted((s, r) for s, r, _ in events.decisions) == [
        ("confirmed", None),
        ("confirmed", None),
        ("rejected", "insufficient_stock"),
    ]
    assert events.batches == [3]


def test_a_held_lock_leaves_the_order_recorded_for_a_later_run() -> None:
    placer, lock, store, events = make({"A": 2})
    foreign = lock.acquire(["sku:A"], ttl_ms=60_000, fence=True)
    order = request({"A": 1})
    with pytest.raises(TryLater) as refused:
        placer.place(order)
    assert refused.value.cause == "lock_contended"
    assert store.state(order.order_id).status is OrderStatus.PENDING
    assert [outcome for _, outcome in events.lock_waits] == ["contended"]
    lock.release(foreign)
    assert placer.place(order).status is OrderStatus.CONFIRMED


def test_no_lock_quorum_is_a_retry_for_lock_unavailable() -> None:
    placer, lock, _, events = make({"A": 2})
    lock.available = False
    order = request({"A": 1})
    with pytest.raises(TryLater) as refused:
        placer.place(order)
    assert refused.value.cause == "lock_unavailable"
    assert [outcome for _, outcome in events.lock_waits] == ["unavailable"]
    assert placer.fail(order, "lock_unavailable").status is OrderStatus.FAILED
    assert [(s, r) for s, r, _ in events.decisions] == [("failed", "lock_unavailable")]


def test_an_unknown_sku_is_rejected_without_touching_the_lock() -> None:
    placer, lock, _, events = make({"A": 2})
    state = placer.place(request({"A": 1, "NOPE": 1}))
    assert (state.status, state.reason) == (OrderStatus.REJECTED, "unknown_sku")
    assert (lock.fences, events.lock_waits) == ({}, [])
    assert [(s, r) for s, r, _ in events.decisions] == [("rejected", "unknown_sku")]


def test_an_equal_fence_from_another_lease_is_refused_and_the_counters_advance() -> None:
    placer, lock, store, _ = make({"A": 5})
    placer.place(request({"A": 1}))
    lock.fences.clear()  # a lock that lost its counters issues fence 1 again
    order = request({"A": 1})
    with pytest.raises(TryLater) as refused:
        placer.place(order)
    assert refused.value.cause == "stale_fence"
    assert (store.stock(), lock.fences) == ({"A": 4}, {"sku:A": 1})
    assert placer.place(order).status is OrderStatus.CONFIRMED
    assert store.highest_fence(["A"]) == 2
