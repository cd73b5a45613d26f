"""`Redlock.wait_released`: waiters are woken by releases instead of sleeping a backoff."""

from __future__ import annotations

import threading
import time
import types

import pytest
import redis

import locking.node
from locking import MAX_WAKES, Redlock, ReleaseOutcome
from tests.locking._support import FOREIGN, MakeRedlock, assert_woken_by_release
from tests.spawners import freeze_server, kill_server, thaw_server
from worker.demo.redis_server import RedisServer


def test_a_release_wakes_a_waiter_at_once(make_redlock: MakeRedlock) -> None:
    holder, waiter = make_redlock(), make_redlock()
    lease = holder.acquire("w", ttl_ms=30_000)
    waiter.wait_released("w", timeout_ms=1)  # connects; nothing to take yet
    releaser = threading.Timer(0.1, holder.release, args=(lease,))
    started = time.monotonic()
    releaser.start()
    try:
        assert waiter.wait_released("w", timeout_ms=5000) is True
    finally:
        releaser.join()
    woken_after_s = time.monotonic() - started
    assert 0.09 < woken_after_s < 2.0  # by the release, long before the timeout
    assert waiter.acquire("w", ttl_ms=1000).fence is None  # and the lock is free


def test_without_a_release_the_wait_times_out(redlock: Redlock, clients: list[redis.Redis]) -> None:
    for client in clients:
        client.set("redlock:w", FOREIGN, px=10_000)
    started = time.monotonic()
    assert redlock.wait_released("w", timeout_ms=100) is False
    assert 0.09 < time.monotonic() - started < 2.0


def test_one_release_wakes_one_waiter_and_leaves_one_wake_up(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    holder = make_redlock()
    for _ in range(3):  # three releases nobody waited for: one wake-up is kept, not three
        assert holder.release(holder.acquire("w", ttl_ms=1000)) is ReleaseOutcome.RELEASED
    assert [client.llen("redlock-wake:w") for client in clients] == [1] * 3
    assert all(0 < client.pttl("redlock-wake:w") <= 1000 for client in clients)
    first, second = make_redlock(), make_redlock()
    assert first.wait_released("w", timeout_ms=1000) is True  # the kept wake-up
    assert second.wait_released("w", timeout_ms=100) is False  # none left on that node


def test_a_release_of_another_resource_wakes_nobody(redlock: Redlock) -> None:
    redlock.release(redlock.acquire("other", ttl_ms=1000))
    assert redlock.wait_released("w", timeout_ms=50) is False


def test_a_wait_covers_every_resource_of_a_cart(make_redlock: MakeRedlock) -> None:
    holder, waiter = make_redlock(), make_redlock()
    holder.release(holder.acquire("b", ttl_ms=1000))
    assert waiter.wait_released(["a", "b"], timeout_ms=1000) is True


def test_a_dead_first_node_makes_the_wait_use_the_next_one(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer]
) -> None:
    holder, waiter = make_redlock(), make_redlock()
    kill_server(lock_nodes[0])
    holder.release(holder.acquire("w", ttl_ms=1000))  # a quorum of two still works
    started = time.monotonic()
    assert waiter.wait_released("w", timeout_ms=5000) is True
    assert time.monotonic() - started < 2.0


def test_with_every_node_down_the_wait_still_lasts_its_timeout(
    redlock: Redlock, lock_nodes: list[RedisServer]
) -> None:
    for node in lock_nodes:
        kill_server(node)
    started = time.monotonic()
    assert redlock.wait_released("w", timeout_ms=150) is False
    assert time.monotonic() - started >= 0.14


def test_timeouts_must_be_positive(redlock: Redlock) -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        redlock.wait_released("w", timeout_ms=0)


#: An ACL user with the lock's permissions from before wake-ups existed.
OLD_ACL = (
    "--user", "locker", "on", ">locker-pw", "~redlock:*", "~redlock-fence:*",
    "+ping", "+select", "+evalsha", "+script|load", "+get", "+set", "+del", "+exists",
    "+pexpire",
)  # fmt: skip


def test_a_node_whose_acl_forbids_wake_ups_still_releases() -> None:
    server = RedisServer(password="admin-pw", extra_args=OLD_ACL).start()
    redlock = Redlock(
        [f"redis://locker:locker-pw@127.0.0.1:{server.port}/0"], allow_fewer_than_three=True
    )
    admin = redis.Redis(port=server.port, password="admin-pw")
    try:
        lease = redlock.acquire("w", ttl_ms=30_000)
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
        assert admin.exists("redlock:w", "redlock-wake:w") == 0
        # The waiter cannot BLPOP there: it waits out its timeout, it does not spin.
        started = time.monotonic()
        assert redlock.wait_released("w", timeout_ms=100) is False
        assert time.monotonic() - started >= 0.09
    finally:
        admin.close()
        redlock.close()
        server.stop()


def test_a_release_wakes_a_waiter_on_a_node_the_holder_skipped(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """The holder suspects node 0 after one slow reply and takes the lease on nodes 1
    and 2; the waiter blocks on node 0, which it trusts. The release must wake it."""
    holder, waiter = make_redlock(), make_redlock()
    holder.ping()
    waiter.wait_released("w", timeout_ms=1)  # connects
    # The waiter trusts node 0, so it blocks there (the first node), not on a node the
    # holder reaches: a late answer to this first wait must not make it suspect node 0.
    assert waiter._wait_nodes.suspects() == [False] * 3
    freeze_server(lock_nodes[0])
    try:
        holder.ping()  # node 0 times out: the holder suspects it for a second
    finally:
        thaw_server(lock_nodes[0])
    lease = holder.acquire("w", ttl_ms=30_000)
    assert clients[0].get("redlock:w") is None  # skipped
    assert_woken_by_release(holder, waiter, lease)


def test_a_blocked_wait_sleeps_instead_of_spinning(
    redlock: Redlock, clients: list[redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spinning read asks the clock on every turn of its loop (hundreds of times in
    # its 0.2 ms); a read that goes straight to poll() asks it a few times per wait.
    # Spinning in a wait only takes the core from the process whose release ends it.
    for client in clients:
        client.set("redlock:w", FOREIGN, px=10_000)
    redlock.wait_released("w", timeout_ms=1)  # connects
    calls = 0
    real_monotonic = time.monotonic

    def counting_monotonic() -> float:
        nonlocal calls
        calls += 1
        return real_monotonic()

    monkeypatch.setattr(locking.node, "time", types.SimpleNamespace(monotonic=counting_monotonic))
    waits = 5
    for _ in range(waits):
        assert redlock.wait_released("w", timeout_ms=20) is False
    assert calls <= 6 * waits, f"{calls} clock reads in {waits} waits: the wait spun"


def test_a_release_can_wake_as_many_waiters_as_it_settled_for(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    # A holder that decided other processes' recorded orders wakes each of their
    # tasks, not only the next one: every node keeps three wake-ups, then one again.
    holder = make_redlock()
    holder.release(holder.acquire("w", ttl_ms=1000), wakes=3)
    assert [client.llen("redlock-wake:w") for client in clients] == [3] * 3
    waiters = [make_redlock() for _ in range(3)]
    assert [waiter.wait_released("w", timeout_ms=1000) for waiter in waiters] == [True] * 3
    assert make_redlock().wait_released("w", timeout_ms=100) is False
    holder.release(holder.acquire("w", ttl_ms=1000), wakes=3)
    holder.release(holder.acquire("w", ttl_ms=1000))  # trims back to one
    assert [client.llen("redlock-wake:w") for client in clients] == [1] * 3


def test_wakes_is_bounded(redlock: Redlock) -> None:
    lease = redlock.acquire("w", ttl_ms=1000)
    for wakes in (0, -1, MAX_WAKES + 1):
        with pytest.raises(ValueError, match="wakes"):
            redlock.release(lease, wakes=wakes)
    redlock.release(lease, wakes=MAX_WAKES)
