"""How `OrderPlacer` waits for a held lock: wake-ups, and asking the nodes only when worth it.

Real Redlock on three lock nodes and a real database; the counts come from the
nodes themselves (scripts run, wake-up lists).
"""

from __future__ import annotations

import threading

import redis
from sqlalchemy import Engine

from locking import Redlock
from tasks.models import OrderStatus
from tasks.orders import OrderState
from tasks.placement import LockPolicy, OrderPlacer
from tests.domain import order_row, request, status, stock
from tests.locks import lock_values
from tests.sale import seed_products
from tests.tasks.conftest import MakeStore, Record
from tests.waiting import wait_for
from worker.demo.redis_server import RedisServer


def outcome(state: OrderState) -> tuple[OrderStatus, str | None]:
    return state.status, state.reason


def test_the_holder_wakes_one_waiter_per_order_it_settled_and_the_next_contender(
    make_store: MakeStore,
    redlock: Redlock,
    engine: Engine,
    record: Record,
    lock_nodes: list[RedisServer],
) -> None:
    # The tasks of the three recorded orders may be blocked waiting for a release:
    # each gets a wake-up, and one more is left for the next contender.
    seed_products(engine, {"A": 5})
    waiting = [record({"A": 1}) for _ in range(3)]
    OrderPlacer(store=make_store(), lock=redlock).place(request({"A": 1}))
    assert [status(engine, o.order_id) for o in waiting] == ["confirmed"] * 3
    clients = [redis.Redis(port=node.port) for node in lock_nodes]
    try:
        wait_for(
            lambda: [client.llen("redlock-wake:sku:A") for client in clients] == [4] * 3,
            timeout_s=5,
            what="four wake-ups on every node",
        )
    finally:
        for client in clients:
            client.close()


def script_calls(nodes: list[RedisServer]) -> list[int]:
    """The lock scripts each node has run so far (acquires and releases)."""
    calls = []
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            calls.append(
                int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
            )
    return calls


def place_while_held(
    placer: OrderPlacer, redlock: Redlock, order_skus: dict[str, int]
) -> OrderState:
    """Place an order while another holder keeps the SKUs' lock for 200 ms more."""
    held = redlock.acquire([f"sku:{sku}" for sku in order_skus], ttl_ms=30_000)
    releaser = threading.Timer(0.2, redlock.release, args=(held,))
    releaser.start()
    try:
        return placer.place(request(order_skus))
    finally:
        releaser.join()


def test_an_order_for_a_sku_just_refused_waits_for_the_release_before_asking(
    make_store: MakeStore, redlock: Redlock, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    seed_products(engine, {"A": 5})
    placer = OrderPlacer(store=make_store(), lock=redlock, policy=LockPolicy(handoff_ms=5000.0))

    def scripts_run_placing_while_held() -> list[int]:
        forget_wake_ups(lock_nodes, "A")  # a release leaves one, kept a second
        before = script_calls(lock_nodes)
        assert outcome(place_while_held(placer, redlock, {"A": 1})) == (
            OrderStatus.CONFIRMED,
            None,
        )
        # The order's release is sent without waiting for the replies: let it run.
        wait_for(lambda: lock_values(lock_nodes, "A") == [None] * 3, "the release", poll_s=0.01)
        return [after - was for after, was in zip(script_calls(lock_nodes), before, strict=True)]

    # Uncontended, once: a SKU's first fenced lease costs the nodes more.
    assert outcome(placer.place(request({"A": 1}))) == (OrderStatus.CONFIRMED, None)
    # The first contended order asks at once, is refused, then is handed the lock.
    first = scripts_run_placing_while_held()
    # The next one waits for the release before it asks: one round fewer on every node.
    assert scripts_run_placing_while_held() == [calls - 1 for calls in first]
    assert stock(engine) == {"A": 2}


def forget_wake_ups(nodes: list[RedisServer], sku: str) -> None:
    """Drop the SKU's wake-up lists, as a second without releases does."""
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            client.delete(f"redlock-wake:sku:{sku}")


def test_a_sku_that_went_quiet_is_asked_at_once_again(
    make_store: MakeStore, redlock: Redlock, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    seed_products(engine, {"A": 5})
    placer = OrderPlacer(store=make_store(), lock=redlock, policy=LockPolicy(handoff_ms=300.0))
    assert outcome(place_while_held(placer, redlock, {"A": 1})) == (OrderStatus.CONFIRMED, None)
    forget_wake_ups(lock_nodes, "A")
    quiet = [request({"A": 1}) for _ in range(2)]
    assert [outcome(placer.place(order)) for order in quiet] == [(OrderStatus.CONFIRMED, None)] * 2
    waits_ms = [order_row(engine, order.order_id).lock_wait_ms for order in quiet]  # type: ignore[union-attr]
    # At most one order waits out the hand-over window for a release that never comes;
    # that wait tells the SKU is quiet, and the next order is granted at once.
    assert waits_ms[1] is not None and waits_ms[1] < 100
    assert stock(engine) == {"A": 2}
