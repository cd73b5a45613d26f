"""The `tasks.lock.OrderLock` contract, held by `locking.Redlock` and the in-memory fake.

The real lock runs on three real redis-server lock nodes; the fake
(tests/fakes.py) must behave the same for every call the placement makes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from locking import NO_RETRY, LockContended, ReleaseOutcome
from tasks.lock import OrderLock
from tests.fakes import InMemoryLock


@pytest.fixture(params=["redlock", "memory"])
def lock(request: pytest.FixtureRequest) -> Iterator[OrderLock]:
    if request.param == "memory":
        yield InMemoryLock()
        return
    from locking import Redlock

    redlock = Redlock(request.getfixturevalue("node_urls"))
    yield redlock
    redlock.close()


def test_a_held_resource_is_refused_until_released(lock: OrderLock) -> None:
    lease = lock.acquire(["sku:A", "sku:B"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    with pytest.raises(LockContended):
        lock.acquire(["sku:B"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    other = lock.acquire(["sku:C"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    assert lock.release(lease) is ReleaseOutcome.RELEASED
    again = lock.acquire(["sku:B"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    for held in (other, again):
        lock.release(held, confirm=False)


def test_fences_grow_with_every_lease_and_advance_on_request(lock: OrderLock) -> None:
    fences = []
    for _ in range(3):
        lease = lock.acquire(["sku:A"], ttl_ms=5000, fence=True, retry=NO_RETRY)
        fences.append(lease.fence)
        lock.release(lease)
    assert fences == [1, 2, 3]
    assert lock.advance_fence(["sku:A"], 41) >= 1
    lease = lock.acquire(["sku:A"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    assert lease.fence == 42
    assert lease.token and lease.remaining_ms() > 0
    lock.release(lease)


def test_a_lease_lapses_after_its_ttl(lock: OrderLock) -> None:
    lock.acquire(["sku:A"], ttl_ms=150, fence=True, retry=NO_RETRY)
    time.sleep(0.3)
    lease = lock.acquire(["sku:A"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    assert lease.fence == 2
    lock.release(lease)


def test_a_waiter_is_woken_by_a_release_and_times_out_without_one(lock: OrderLock) -> None:
    assert lock.wait_released(["sku:A"], timeout_ms=50) is False
    lease = lock.acquire(["sku:A"], ttl_ms=5000, fence=True, retry=NO_RETRY)
    releaser = threading.Timer(0.1, lock.release, args=(lease,))
    started_s = time.monotonic()
    releaser.start()
    try:
        assert lock.wait_released(["sku:A"], timeout_ms=3000) is True
    finally:
        releaser.join()
    assert time.monotonic() - started_s < 2.0


def test_a_release_wakes_as_many_waiters_as_asked_then_none(lock: OrderLock) -> None:
    lock.release(lock.acquire(["sku:A"], ttl_ms=5000, retry=NO_RETRY), wakes=3)
    assert [lock.wait_released(["sku:A"], timeout_ms=1000) for _ in range(3)] == [True] * 3
    assert lock.wait_released(["sku:A"], timeout_ms=50) is False
    with pytest.raises(ValueError, match="wakes"):
        lock.release(lock.acquire(["sku:A"], ttl_ms=5000, retry=NO_RETRY), wakes=0)
