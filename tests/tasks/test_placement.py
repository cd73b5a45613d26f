"""`tasks.placement.OrderPlacer` with a real Redlock on three lock nodes and a real database."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from locking import Redlock, RetryPolicy
from tasks.errors import OrderConflict, TryLater
from tasks.models import OrderStatus, Product
from tasks.orders import OrderState
from tasks.placement import LockPolicy, OrderPlacer
from tests.domain import fences, movements, order_row, request, settle_now, status, stock
from tests.locks import lock_fences, lock_values
from tests.sale import seed_products
from tests.spawners import kill_server
from tests.tasks.conftest import MakeStore, Record
from worker.demo.redis_server import RedisServer

#: Waits briefly for a contended lock, so that giving up is quick.
SHORT_WAIT = LockPolicy(
    handoff_ms=5.0, retry_in_task=RetryPolicy(attempts=3, base_delay_ms=1.0, max_delay_ms=2.0)
)


@pytest.fixture
def placer(make_store: MakeStore, redlock: Redlock) -> OrderPlacer:
    return OrderPlacer(store=make_store(), lock=redlock, policy=SHORT_WAIT)


def outcome(state: OrderState) -> tuple[OrderStatus, str | None]:
    return state.status, state.reason


def test_an_order_is_confirmed_and_its_lock_released(
    placer: OrderPlacer, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    seed_products(engine, {"A": 5, "B": 5})
    order = request({"A": 2, "B": 1})
    assert outcome(placer.place(order)) == (OrderStatus.CONFIRMED, None)
    assert stock(engine) == {"A": 3, "B": 4}
    assert movements(engine, order.order_id) == [("A", -2), ("B", -1)]
    assert lock_values(lock_nodes, "A") == lock_values(lock_nodes, "B") == [None] * 3


def test_the_stored_state_is_the_returned_one(placer: OrderPlacer, engine: Engine) -> None:
    seed_products(engine, {"A": 1})
    first, second = request({"A": 1}), request({"A": 1})
    assert outcome(placer.place(first)) == (OrderStatus.CONFIRMED, None)
    assert outcome(placer.place(second)) == (OrderStatus.REJECTED, "insufficient_stock")
    assert outcome(placer.state_of(second)) == (OrderStatus.REJECTED, "insufficient_stock")


def test_placing_an_order_again_moves_stock_once(placer: OrderPlacer, engine: Engine) -> None:
    seed_products(engine, {"A": 5})
    order = request({"A": 2})
    placer.place(order)
    again = placer.place(order)
    assert (again.status, again.attempts) == (OrderStatus.CONFIRMED, 2)
    assert stock(engine) == {"A": 3}
    assert movements(engine, order.order_id) == [("A", -2)]


def test_an_unknown_sku_is_rejected(placer: OrderPlacer, engine: Engine) -> None:
    seed_products(engine, {"A": 5})
    assert outcome(placer.place(request({"A": 1, "NOPE": 1}))) == (
        OrderStatus.REJECTED,
        "unknown_sku",
    )
    assert stock(engine) == {"A": 5}


def test_the_same_id_with_another_cart_is_a_conflict(placer: OrderPlacer, engine: Engine) -> None:
    seed_products(engine, {"A": 5})
    order = request({"A": 1})
    placer.place(order)
    with pytest.raises(OrderConflict):
        placer.place(request({"A": 4}, order_id=str(order.order_id)))
    assert stock(engine) == {"A": 4}


def test_the_lock_holder_settles_the_orders_waiting_behind_it(
    placer: OrderPlacer, engine: Engine, record: Record
) -> None:
    seed_products(engine, {"A": 5})
    waiting = [record({"A": 1}) for _ in range(3)]
    placer.place(request({"A": 1}))
    assert [status(engine, o.order_id) for o in waiting] == ["confirmed"] * 3
    assert stock(engine) == {"A": 1}


def test_without_a_lock_the_database_guard_alone_places_correctly(
    make_store: MakeStore, engine: Engine
) -> None:
    seed_products(engine, {"A": 3})
    placer = OrderPlacer(store=make_store(), lock=None)
    states = [placer.place(request({"A": 2})) for _ in range(2)]
    assert [outcome(s) for s in states] == [
        (OrderStatus.CONFIRMED, None),
        (OrderStatus.REJECTED, "insufficient_stock"),
    ]
    assert stock(engine) == {"A": 1}
    assert movements(engine) == [("A", -2)]


def test_a_foreign_lock_makes_the_order_wait_for_a_later_run(
    placer: OrderPlacer, redlock: Redlock, engine: Engine
) -> None:
    seed_products(engine, {"A": 5})
    order = request({"A": 1})
    with redlock.lock("sku:A", ttl_ms=30_000), pytest.raises(TryLater):
        placer.place(order)
    assert status(engine, order.order_id) == "pending"
    assert stock(engine) == {"A": 5}
    assert outcome(placer.place(order)) == (OrderStatus.CONFIRMED, None)


def test_an_order_decided_by_the_lock_holder_is_returned_while_waiting(
    sessions: sessionmaker[Session], make_store: MakeStore, redlock: Redlock, engine: Engine
) -> None:
    seed_products(engine, {"A": 5})
    order = request({"A": 2})

    def holder_settles() -> None:
        # The holder (this thread) settles every pending order once ours is recorded.
        deadline = time.monotonic() + 10
        while order_row(engine, order.order_id) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        settle_now(sessions, ["A"])

    patient = LockPolicy(
        handoff_ms=10.0,
        retry_in_task=RetryPolicy(attempts=200, base_delay_ms=5.0, max_delay_ms=20.0),
    )
    placer = OrderPlacer(store=make_store(), lock=redlock, policy=patient)
    holder = threading.Thread(target=holder_settles)
    with redlock.lock("sku:A", ttl_ms=30_000):
        holder.start()
        state = placer.place(order)
        holder.join()
    assert outcome(state) == (OrderStatus.CONFIRMED, None)
    assert stock(engine) == {"A": 3}
    row = order_row(engine, order.order_id)
    assert row is not None and row.lock_wait_ms is None  # decided by the holder, not by us


def test_an_order_refused_at_first_gets_the_lock_handed_over_on_release(
    make_store: MakeStore, redlock: Redlock, engine: Engine
) -> None:
    seed_products(engine, {"A": 5})
    held = redlock.acquire("sku:A", ttl_ms=30_000)
    releaser = threading.Timer(0.2, redlock.release, args=(held,))
    placer = OrderPlacer(store=make_store(), lock=redlock, policy=LockPolicy(handoff_ms=5000.0))
    order = request({"A": 1})
    releaser.start()
    try:
        assert outcome(placer.place(order)) == (OrderStatus.CONFIRMED, None)
    finally:
        releaser.join()
    row = order_row(engine, order.order_id)
    assert row is not None
    # Recorded with its settlement in one step, after waiting for the release only.
    assert row.attempts == 1
    assert row.lock_wait_ms is not None and 100 <= row.lock_wait_ms < 4000


def test_a_stale_fence_aborts_then_the_counters_catch_up_with_the_stock(
    placer: OrderPlacer, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    seed_products(engine, {"A": 5})
    # Lock nodes that lost their counters hand out fences 1, 2, ... while the
    # stock was last written with fence 1000: every lease looks stale.
    with engine.begin() as connection:
        connection.execute(update(Product).values(fence=1000))
    order = request({"A": 1})
    with pytest.raises(TryLater, match="newer lease"):
        placer.place(order)
    assert status(engine, order.order_id) != "confirmed"
    assert (stock(engine), movements(engine)) == ({"A": 5}, [])
    assert lock_values(lock_nodes, "A") == [None] * 3
    # The aborted attempt raised the counters: the very next lease is newer.
    assert lock_fences(lock_nodes, "A") == [1000] * 3
    assert outcome(placer.place(order)) == (OrderStatus.CONFIRMED, None)
    assert (stock(engine), fences(engine)) == ({"A": 4}, {"A": 1001})


def test_without_a_quorum_of_lock_nodes_nothing_moves_until_they_are_back(
    placer: OrderPlacer, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    seed_products(engine, {"A": 5})
    for node in lock_nodes[:2]:
        node.stop()
    order = request({"A": 1})
    with pytest.raises(TryLater, match="no quorum"):
        placer.place(order)
    assert status(engine, order.order_id) != "confirmed"
    assert stock(engine) == {"A": 5}
    for node in lock_nodes[:2]:
        node.start()
    assert outcome(placer.place(order)) == (OrderStatus.CONFIRMED, None)
    assert (stock(engine), movements(engine)) == ({"A": 4}, [("A", -1)])


def test_an_order_delivered_too_often_is_failed_as_poison(
    make_store: MakeStore, redlock: Redlock, engine: Engine, record: Record
) -> None:
    seed_products(engine, {"A": 5})
    order = record({"A": 1})
    placer = OrderPlacer(store=make_store(max_deliveries=1), lock=redlock)
    assert outcome(placer.place(order)) == (OrderStatus.FAILED, "too_many_attempts")
    assert stock(engine) == {"A": 5}


def test_an_order_that_cannot_reach_a_lock_quorum_is_recorded_then_failed(
    placer: OrderPlacer, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    seed_products(engine, {"A": 5})
    kill_server(lock_nodes[0])
    kill_server(lock_nodes[1])
    order = request({"A": 1})
    with pytest.raises(TryLater):
        placer.place(order)
    # The retry (and the operator) must find the order, not lose it.
    assert status(engine, order.order_id) == "pending"
    assert outcome(placer.fail(order, "lock_unavailable")) == (
        OrderStatus.FAILED,
        "lock_unavailable",
    )
    assert stock(engine) == {"A": 5}


def test_failing_a_decided_order_keeps_its_decision(placer: OrderPlacer, engine: Engine) -> None:
    seed_products(engine, {"A": 5})
    order = request({"A": 1})
    placer.place(order)
    assert outcome(placer.fail(order, "lock_unavailable")) == (OrderStatus.CONFIRMED, None)


def test_a_second_lease_with_the_same_fence_is_refused_then_the_counters_catch_up(
    placer: OrderPlacer, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    # Lock nodes that lost their counters issue a fence again, to another lease.
    # The guard used to accept it (fence <= :fence): failed before migration 0004.
    seed_products(engine, {"A": 5})
    first = request({"A": 1})
    assert outcome(placer.place(first)) == (OrderStatus.CONFIRMED, None)
    assert fences(engine) == {"A": 1}
    for node in lock_nodes:
        with redis.Redis(port=node.port) as client:
            client.delete("redlock-fence:sku:A")
    second = request({"A": 1})
    with pytest.raises(TryLater, match="stale_fence"):
        placer.place(second)  # fence 1 again, from a different lease
    assert status(engine, second.order_id) == "pending"
    assert (stock(engine), movements(engine)) == ({"A": 4}, [("A", -1)])
    assert lock_fences(lock_nodes, "A") == [1] * 3
    assert outcome(placer.place(second)) == (OrderStatus.CONFIRMED, None)
    assert (stock(engine), fences(engine)) == ({"A": 3}, {"A": 2})


def lasting_keys(nodes: list[RedisServer]) -> list[list[bytes]]:
    """The keys without a TTL on each lock node, sorted (wake-ups expire on their own)."""
    keys = []
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            keys.append(sorted(key for key in client.keys("*") if client.pttl(key) == -1))
    return keys


def test_orders_for_unknown_skus_leave_nothing_on_the_lock_nodes(
    placer: OrderPlacer, engine: Engine, lock_nodes: list[RedisServer]
) -> None:
    # Each used to leave a TTL-less fence counter per SKU on every node, forever.
    seed_products(engine, {"A": 5})
    orders = [request({f"NOPE-{n}": 1}) for n in range(20)] + [request({"A": 1, "GHOST": 1})]
    for order in orders:
        assert outcome(placer.place(order)) == (OrderStatus.REJECTED, "unknown_sku")
    assert lasting_keys(lock_nodes) == [[]] * 3
    assert stock(engine) == {"A": 5}
    assert outcome(placer.place(request({"A": 1}))) == (OrderStatus.CONFIRMED, None)
    # A's fence counter, and each node's fence status key (locking/fencing.py).
    assert lasting_keys(lock_nodes) == [[b"redlock-fence:", b"redlock-fence:sku:A"]] * 3


def test_a_known_sku_is_looked_up_once(
    make_store: MakeStore, redlock: Redlock, engine: Engine
) -> None:
    seed_products(engine, {"A": 5})
    store = make_store()
    lookups: list[list[str]] = []

    class CountingStore:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        def known_skus(self, skus: list[str]) -> frozenset[str]:
            lookups.append(list(skus))
            return store.known_skus(skus)

    placer = OrderPlacer(store=CountingStore(), lock=redlock)  # type: ignore[arg-type]
    for _ in range(3):
        placer.place(request({"A": 1}))
    placer.place(request({"NOPE": 1}))
    placer.place(request({"NOPE": 1}))
    assert lookups == [["A"], ["NOPE"], ["NOPE"]]
    assert stock(engine) == {"A": 2}
