"""`KeepAlive` on its own, driven by a callable instead of a lock (pure thread logic)."""

from __future__ import annotations

import threading
import time

from locking import Lease, LeaseLost
from locking.keepalive import KeepAlive


def lease(ttl_ms: int = 30) -> Lease:
    return Lease(
        resources=("k",),
        token="0" * 32,
        ttl_ms=ttl_ms,
        validity_ms=ttl_ms,
        valid_until_s=time.monotonic() + ttl_ms / 1000,
        clock=time.monotonic,
    )


def test_it_calls_extend_every_third_of_the_ttl_until_stopped() -> None:
    held = lease()
    calls = threading.Semaphore(0)
    keepalive = KeepAlive(held, calls.release)
    keepalive.start()
    for _ in range(3):
        assert calls.acquire(timeout=2.0)
    keepalive.stop()
    assert not held.lost.is_set()


def test_a_failed_extension_marks_the_lease_lost_and_stops() -> None:
    held = lease()
    calls: list[None] = []

    def extend() -> None:
        calls.append(None)
        raise LeaseLost(resources=held.resources, reason="confirmed by 1 of 3 nodes")

    keepalive = KeepAlive(held, extend)
    keepalive.start()
    assert held.lost.wait(2.0)
    assert held.lost_reason == "confirmed by 1 of 3 nodes"
    time.sleep(0.05)
    keepalive.stop()
    assert len(calls) == 1


def test_a_lease_records_its_extensions() -> None:
    held = lease(ttl_ms=1000)
    held.record_extension(ttl_ms=2000, validity_ms=1970.0, valid_until_s=held.valid_until_s + 1)
    assert (held.extensions, held.ttl_ms, held.validity_ms) == (1, 2000, 1970.0)
