"""`RetryPolicy(wake_on_release=True)`: acquire's backoff is a wait that a release ends."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from locking import LockContended, RetryPolicy
from tests.locking._support import FOREIGN, MakeRedlock, assert_woken_by_release


class _Ceiling(random.Random):
    """Jitter that always draws the ceiling: every backoff lasts its full length."""

    def uniform(self, a: float, b: float) -> float:
        return b


_WAKING = RetryPolicy(attempts=100, wake_on_release=True)
_WAKING_300 = RetryPolicy(attempts=2, max_delay_ms=300, wake_on_release=True)


def _fixed(delay_ms: float, *, attempts: int, wake: bool = True) -> RetryPolicy:
    """A backoff of ``delay_ms`` every time (with `_Ceiling`)."""
    return RetryPolicy(
        attempts=attempts, base_delay_ms=delay_ms, max_delay_ms=delay_ms, wake_on_release=wake
    )


def test_a_release_ends_the_backoff_of_a_blocked_acquire(make_redlock: MakeRedlock) -> None:
    holder, waiter = make_redlock(), make_redlock(rng=_Ceiling())
    lease = holder.acquire("w", ttl_ms=30_000)
    releaser = threading.Timer(0.1, holder.release, args=(lease,))
    started = time.monotonic()
    releaser.start()
    try:
        won = waiter.acquire("w", ttl_ms=1000, retry=_fixed(3000, attempts=2))
    finally:
        releaser.join()
    # Woken by the release at ~0.1 s, not after the 3 s backoff.
    assert time.monotonic() - started < 1.5
    assert waiter.release(won).value == "released"


def test_without_wake_on_release_the_backoff_is_slept_out(make_redlock: MakeRedlock) -> None:
    holder, waiter = make_redlock(), make_redlock(rng=_Ceiling())
    lease = holder.acquire("w", ttl_ms=30_000)
    releaser = threading.Timer(0.05, holder.release, args=(lease,))
    started = time.monotonic()
    releaser.start()
    try:
        waiter.acquire("w", ttl_ms=1000, retry=_fixed(400, attempts=2, wake=False))
    finally:
        releaser.join()
    assert time.monotonic() - started >= 0.4


def test_backoffs_keep_their_length_when_no_release_comes(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    """A node answers a BLPOP's own timeout up to a server tick (100 ms) late; the
    backoff is cut on the client side, so 3 backoffs of 30 ms do not take 300 ms."""
    for client in clients:
        client.set("redlock:w", FOREIGN, px=10_000)
    waiter = make_redlock(rng=_Ceiling())
    waiter.release(waiter.acquire("other", ttl_ms=1000))  # connect first
    started = time.monotonic()
    with pytest.raises(LockContended):
        waiter.acquire("w", ttl_ms=1000, retry=_fixed(30, attempts=4))
    assert 0.09 <= time.monotonic() - started < 0.25


def test_a_wait_left_blocked_by_a_backoff_does_not_disturb_later_waits(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    for client in clients:
        client.set("redlock:w", FOREIGN, px=10_000)
    holder, waiter = make_redlock(), make_redlock(rng=_Ceiling())
    with pytest.raises(LockContended):  # leaves a BLPOP blocked on the first node
        waiter.acquire("w", ttl_ms=1000, retry=_fixed(20, attempts=2))
    for client in clients:
        client.delete("redlock:w", "redlock-wake:w")
    lease = holder.acquire("w", ttl_ms=30_000)
    assert_woken_by_release(holder, waiter, lease)
    # and a blocked acquire after it is woken as well
    lease = holder.acquire("w", ttl_ms=30_000)
    releaser = threading.Timer(0.05, holder.release, args=(lease,))
    started = time.monotonic()
    releaser.start()
    try:
        waiter.release(waiter.acquire("w", ttl_ms=1000, retry=_fixed(3000, attempts=3)))
    finally:
        releaser.join()
    assert time.monotonic() - started < 1.5


def test_a_releaser_acquiring_again_gives_way_when_its_release_woke_a_waiter(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    """Right after a release whose wake-up a waiter took, a releaser that had waited
    for its lease waits for a release first (up to the backoff cap) instead of
    racing that waiter. Here the woken waiter does not take the lock, so the whole
    wait shows."""
    for client in clients:
        client.set("redlock:w", FOREIGN, px=100)
    holder, waiter = make_redlock(), make_redlock()
    lease = holder.acquire(
        "w", ttl_ms=30_000, retry=RetryPolicy(attempts=100, wake_on_release=True)
    )  # waits
    woken: list[bool] = []
    thread = threading.Thread(
        target=lambda: woken.append(waiter.wait_released("w", timeout_ms=5000))
    )
    thread.start()
    time.sleep(0.2)  # the waiter is blocked on the first node
    holder.release(lease)
    thread.join()
    started = time.monotonic()
    again = holder.acquire(
        "w", ttl_ms=30_000, retry=RetryPolicy(attempts=2, max_delay_ms=300, wake_on_release=True)
    )
    assert woken == [True]
    assert time.monotonic() - started >= 0.25
    holder.release(again)


def test_a_releaser_that_did_not_wait_acquires_again_at_once(
    make_redlock: MakeRedlock,
) -> None:
    """The first release finds no wake-up list (as after one a waiter took), but the
    holder never waited: it does not give way."""
    holder, waiter = make_redlock(), make_redlock()
    lease = holder.acquire("w", ttl_ms=30_000)
    woken: list[bool] = []
    thread = threading.Thread(
        target=lambda: woken.append(waiter.wait_released("w", timeout_ms=5000))
    )
    thread.start()
    time.sleep(0.2)
    holder.release(lease)
    thread.join()
    started = time.monotonic()
    again = holder.acquire(
        "w", ttl_ms=30_000, retry=RetryPolicy(attempts=2, max_delay_ms=300, wake_on_release=True)
    )
    assert time.monotonic() - started < 0.2
    holder.release(again)
