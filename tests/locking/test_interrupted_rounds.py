"""Rounds interrupted between sending and reading (a signal handler raising, as Celery's
soft time limit does): no reply may ever be attributed to another request.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest
import redis

from locking import NO_RETRY, LockContended, Redlock, ReleaseOutcome
from tests.locking._support import MakeRedlock
from worker.demo.redis_server import RedisServer


class Interrupted(Exception):
    """Raised by the timer's signal handler, like Celery's SoftTimeLimitExceeded."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


@contextmanager
def interrupt_after(delay_s: float) -> Iterator[None]:
    """Raise `Interrupted` in this thread ``delay_s`` into the block (if it lasts that long)."""
    previous = signal.signal(signal.SIGALRM, _raise)
    try:
        signal.setitimer(signal.ITIMER_REAL, delay_s)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)


def holders(clients: list[redis.Redis], key: str, token: str) -> int:
    return sum(1 for client in clients if client.get(key) == token.encode())


def test_an_acquire_interrupted_while_a_node_is_frozen_leaves_no_stale_grant(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    redlock = make_redlock(read_timeout_ms=200)
    redlock.release(redlock.acquire("warm", ttl_ms=1000))  # connections open
    lock_nodes[0].freeze()
    try:
        with pytest.raises(Interrupted), interrupt_after(0.01):
            redlock.acquire("k", ttl_ms=1500, retry=NO_RETRY)
        # B and C granted the interrupted request; their "OK" was never read. Today the
        # next acquire reads those stale grants and returns a lease held on no node.
        try:
            lease = redlock.acquire("k", ttl_ms=1500, retry=NO_RETRY)
        except LockContended:
            pass
        else:
            assert holders(clients[1:], "redlock:k", lease.token) >= 1, "a stale grant was taken"
    finally:
        lock_nodes[0].thaw()
    # Once the orphaned keys expired, the lock works normally again.
    time.sleep(1.6)
    lease = redlock.acquire("k", ttl_ms=1500, retry=NO_RETRY)
    assert holders(clients, "redlock:k", lease.token) == 3
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


def test_rounds_interrupted_at_random_points_never_shift_replies(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    rng = random.Random(10)
    interrupted = 0
    for index in range(150):
        try:
            with interrupt_after(rng.uniform(0.00002, 0.0015)):
                lease = redlock.acquire(f"r{index}", ttl_ms=2000, fence=index % 2 == 0)
                redlock.extend(lease)
                redlock.release(lease, confirm=index % 3 != 0)
        except Interrupted:
            interrupted += 1
        # Whatever the interrupted call left behind, a fresh lease is exactly what the
        # nodes hold, and its release finds it there.
        lease = redlock.acquire(f"fresh{index}", ttl_ms=2000, retry=NO_RETRY)
        assert holders(clients, f"redlock:fresh{index}", lease.token) == 3
        redlock.extend(lease)
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
    assert interrupted > 10  # the test did interrupt rounds


def test_a_wait_interrupted_while_blocked_does_not_swallow_the_next_wake_up(
    make_redlock: MakeRedlock,
) -> None:
    waiter, holder = make_redlock(), make_redlock()
    with pytest.raises(Interrupted), interrupt_after(0.01):
        waiter.wait_released("k", timeout_ms=100)
    time.sleep(0.15)  # the interrupted BLPOP times out on the node: its nil reply is unread
    lease = holder.acquire("k", ttl_ms=5000)
    threading.Timer(0.3, holder.release, args=(lease,)).start()
    started = time.monotonic()
    # Today the wait reads the stale nil, takes it for a timeout and sleeps 3 s.
    assert waiter.wait_released("k", timeout_ms=3000) is True
    assert time.monotonic() - started < 2.0
