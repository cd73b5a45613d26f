"""Defects found by the adversarial review of the lock, each reproduced on real nodes.

Every test here failed on the code the review was written against (each was a
strict xfail until its fix landed); they stay as regression tests.
"""

from __future__ import annotations

import time

import pytest
import redis

from locking import (
    NO_RETRY,
    FenceRepairFailed,
    LockContended,
    NodeError,
    Redlock,
    RetryPolicy,
)
from tests.locking._support import FOREIGN, MakeRedlock, assert_woken_by_release
from tests.spawners import freeze_server, kill_server, thaw_server
from worker.demo.redis_server import RedisServer


def test_a_flushed_script_cache_does_not_lose_the_lock_for_good(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    redlock.release(redlock.acquire("warm", ttl_ms=1000, fence=True))  # connections open
    for client in clients:
        client.script_flush()
    retry = RetryPolicy(attempts=3, base_delay_ms=20, max_delay_ms=50)
    lease = redlock.acquire("k", ttl_ms=2000, fence=True, retry=retry)
    assert lease.fence is not None


def test_a_release_wakes_a_waiter_on_a_node_the_holder_found_refusing(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    holder = make_redlock()
    # A read timeout above the node's timer tick (100 ms): the waiter must not suspect
    # node 0 for a late BLPOP timeout (test_a_wait_that_times_out_is_not_a_node_failure).
    waiter = make_redlock(connect_timeout_ms=1000, read_timeout_ms=300)
    holder.ping()
    lock_nodes[0].stop()
    holder.ping()  # refused: the holder suspects node 0 and has no connection to it
    lock_nodes[0].start()  # back within the suspicion window (1 s)
    waiter.wait_released("w", timeout_ms=1)  # the waiter connects to node 0 and trusts it
    assert waiter._wait_nodes.suspects() == [False] * 3
    lease = holder.acquire("w", ttl_ms=30_000, retry=NO_RETRY)
    assert redis.Redis(port=lock_nodes[0].port).get("redlock:w") is None  # skipped
    assert_woken_by_release(holder, waiter, lease)


def test_extend_with_a_ttl_the_nodes_refuse_leaves_the_lease_in_place(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("k", ttl_ms=5000)
    with pytest.raises(ValueError):
        redlock.extend(lease, ttl_ms=2**63 - 1)
    assert lease.is_valid  # a property; the review called it, unseen since raises failed first
    lease.check()
    assert [client.get("redlock:k") for client in clients] == [lease.token.encode()] * 3


def _fences_held_by_nodes_0_and_1(
    redlock: Redlock, lock_nodes: list[RedisServer], clients: list[redis.Redis], ttl_ms: int
) -> int:
    """Hand out fences that only nodes 0 and 1 hold (node 2 lags); return the last."""
    with redlock.lock("r", ttl_ms=ttl_ms, fence=True):
        pass  # genesis: every node trusted, counter 1 everywhere
    freeze_server(lock_nodes[2])
    try:
        for _ in range(3):  # node 2 is silent, then skipped: nodes 0 and 1 hold the fences
            with redlock.lock("r", ttl_ms=ttl_ms, fence=True) as lease:
                last = lease.fence or 0
    finally:
        thaw_server(lock_nodes[2])
    # Node 2 ran only the first, timed-out request late: its counter stays lower.
    assert int(clients[2].get("redlock-fence:r") or 0) < last
    time.sleep(0.3)  # node 2's suspicion ends
    return last


def _lose_state(lock_nodes: list[RedisServer], index: int, ttl_ms: int) -> None:
    """Node ``index`` loses its state and stays out longer than any lease."""
    kill_server(lock_nodes[index])
    time.sleep(2 * ttl_ms / 1000)
    lock_nodes[index].start()


def test_two_losses_without_a_repair_are_reported_not_backed(
    make_redlock: MakeRedlock,
    lock_nodes: list[RedisServer],
    clients: list[redis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's former rule (another node may go once the first reads
    'recovering') lets both holders of the last fence lose it; the third node still
    vouches for its older counter. The fence may go down then (4, then 3): it must
    not be called backed (before the fix: trusted > 0 sufficed, and no warning)."""
    ttl_ms = 300
    redlock = make_redlock(read_timeout_ms=100, suspect_ms=200)
    last = _fences_held_by_nodes_0_and_1(redlock, lock_nodes, clients, ttl_ms)
    _lose_state(lock_nodes, 0, ttl_ms)
    with redlock.lock("other", ttl_ms=ttl_ms, fence=True):
        pass  # a fenced lease reaches node 0: it reads "recovering"
    assert clients[0].get("redlock-fence:") == b"recovering"
    _lose_state(lock_nodes, 1, ttl_ms)
    time.sleep(0.3)  # the lock's suspicion of nodes 0 and 1 (refused connections) ends
    caplog.clear()
    lease = redlock.acquire("r", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
    assert lease.fence is not None
    if lease.fence <= last:
        assert "is not backed by a majority of trusted counters" in caplog.text


def test_fence_survives_two_losses_one_after_the_other_as_the_readme_allows(
    make_redlock: MakeRedlock,
    lock_nodes: list[RedisServer],
    clients: list[redis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's rule: after a node lost its state, repair it (its status reads
    'trusted' again) before another node may lose its state."""
    ttl_ms = 300
    redlock = make_redlock(read_timeout_ms=100, suspect_ms=200)
    last = _fences_held_by_nodes_0_and_1(redlock, lock_nodes, clients, ttl_ms)
    _lose_state(lock_nodes, 0, ttl_ms)
    time.sleep(0.3)  # node 0 is no longer suspected (refused while it was down)
    assert redlock.repair_node(redlock.node_names[0]) == 1  # counter r raised to `last`
    assert clients[0].get("redlock-fence:") == b"trusted"
    assert clients[0].get("redlock-fence:r") == str(last).encode()
    assert redlock.repair_node(redlock.node_names[0]) == 0  # trusted: nothing to do
    _lose_state(lock_nodes, 1, ttl_ms)  # now node 1 may go, by the README's rule
    time.sleep(0.3)
    caplog.clear()
    lease = redlock.acquire("r", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
    assert lease.fence is not None and lease.fence > last, (lease.fence, last)
    assert "not backed" not in caplog.text


def test_a_repair_needs_every_other_node_to_have_a_status(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    redlock.release(redlock.acquire("r", ttl_ms=1000, fence=True))  # every node trusted
    for client in clients[:2]:
        client.flushall()  # two nodes lost their state: a repair would read too little
    with pytest.raises(FenceRepairFailed, match="has no fence status"):
        redlock.repair_node(redlock.node_names[0])
    assert clients[0].get("redlock-fence:") != b"trusted"
    with pytest.raises(ValueError):
        redlock.repair_node("127.0.0.1:1")


def test_fence_survives_one_loss_while_a_late_joining_node_has_no_status(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """Two nodes without a status may be a new one and one that lost its state: the
    counters are trusted from 0 (a new cluster) only when every node answered."""
    ttl_ms = 300
    redlock = make_redlock(read_timeout_ms=100, suspect_ms=200)
    lock_nodes[2].stop()  # node 2 is down when the cluster starts
    try:
        with pytest.raises(LockContended):  # before the fix: fences 1, 2, ... from two nodes
            redlock.acquire("r", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
    finally:
        lock_nodes[2].start()  # it joins empty, with no status yet
    # The review's state: nodes 0 and 1 hold fence 4 and vouch for it, node 2 has no
    # status (reachable: it refused the leases, another holder's key was there).
    for client in clients[:2]:
        client.set("redlock-fence:", "trusted")
        client.set("redlock-fence:r", 4)
    last = 4
    # Node 0 loses its state (the first loss), and node 1, the one that kept the
    # fences, is slow right now.
    kill_server(lock_nodes[0])
    time.sleep(2 * ttl_ms / 1000)
    lock_nodes[0].start()
    time.sleep(0.3)  # suspicions end
    freeze_server(lock_nodes[1])
    try:
        # Nodes 0 and 2 grant without a status: not taken for a new cluster (before
        # the fix: GENESIS, fence 1); node 1 is silent, so the attempt is given up.
        with pytest.raises(LockContended):
            redlock.acquire("r", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
    finally:
        thaw_server(lock_nodes[1])
    time.sleep(0.3)  # node 1 is no longer suspected
    lease = redlock.acquire("r", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
    assert lease.fence is not None and lease.fence > last, (lease.fence, last)
    # Nodes 0 and 2 are recovering: they vouch only for what was written back.
    assert [client.get("redlock-fence:") for client in clients] == [
        b"recovering",
        b"trusted",
        b"recovering",
    ]


def test_a_wait_that_times_out_is_not_a_node_failure(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    for client in clients:
        client.set("redlock:w", FOREIGN, px=30_000)  # held elsewhere: nobody releases
    errors: list[NodeError] = []
    waiter = make_redlock(on_node_error=errors.append)
    for _ in range(20):
        assert waiter.wait_released("w", timeout_ms=20) is False
    assert errors == []
