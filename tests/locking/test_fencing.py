"""Fencing tokens: strictly increasing in the order of grants, across holders and node loss."""

from __future__ import annotations

import itertools
import multiprocessing
import time

import pytest
import redis

from locking import NO_RETRY, LockContended, Redlock, ReleaseOutcome
from locking.fencing import fence_of
from tests.locking import _procs
from tests.locking._support import FOREIGN, MakeRedlock
from worker.demo.redis_server import RedisServer


def test_fences_increase_for_one_client(redlock: Redlock, clients: list[redis.Redis]) -> None:
    fences = []
    for _ in range(20):
        with redlock.lock("f", ttl_ms=2000, fence=True) as lease:
            fences.append(lease.fence)
    assert fences == list(range(1, 21))
    # Every node keeps the counter, without a TTL.
    assert [client.get("redlock-fence:f") for client in clients] == [b"20"] * 3
    assert [client.ttl("redlock-fence:f") for client in clients] == [-1] * 3


def test_unfenced_leases_have_no_fence(redlock: Redlock, clients: list[redis.Redis]) -> None:
    with redlock.lock("u", ttl_ms=2000) as lease:
        assert lease.fence is None
    assert [client.exists("redlock-fence:u") for client in clients] == [0, 0, 0]


def test_fence_survives_one_node_losing_its_counters(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    last = 0
    for wiped in (0, 1, 2, 0):
        for _ in range(3):
            with redlock.lock("f", ttl_ms=2000, fence=True) as lease:
                assert lease.fence is not None and lease.fence > last
                last = lease.fence
        clients[wiped].flushall()
        with redlock.lock("f", ttl_ms=2000, fence=True) as lease:
            assert lease.fence is not None and lease.fence > last
            last = lease.fence
        # The write-back reaches the wiped node again.
        assert clients[wiped].get("redlock-fence:f") == str(last).encode()


def test_fence_survives_a_node_restarted_empty(
    redlock: Redlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    with redlock.lock("f", ttl_ms=2000, fence=True) as lease:
        last = lease.fence or 0
    lock_nodes[0].kill()
    lock_nodes[0].start()  # no persistence: it comes back without any counter
    for _ in range(5):
        with redlock.lock("f", ttl_ms=2000, fence=True) as lease:
            assert lease.fence is not None and lease.fence > last
            last = lease.fence
    assert clients[0].get("redlock-fence:f") == str(last).encode()


def test_fence_needs_a_majority_grant_but_reads_the_highest_counter(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    clients[0].set("redlock-fence:f", 41)  # only one node saw the last fenced lease
    clients[1].set("redlock:f", FOREIGN, px=10_000)
    lease = redlock.acquire("f", ttl_ms=2000, fence=True, retry=NO_RETRY)
    assert lease.fence == 42
    redlock.release(lease)
    assert [client.get("redlock-fence:f") for client in clients] == [b"42", None, b"42"]


def test_a_multi_resource_fence_exceeds_each_resources_fences(redlock: Redlock) -> None:
    for _ in range(5):
        redlock.release(redlock.acquire("a", ttl_ms=2000, fence=True))
    redlock.release(redlock.acquire("b", ttl_ms=2000, fence=True))
    both = redlock.acquire(["a", "b"], ttl_ms=2000, fence=True)
    assert both.fence == 6
    redlock.release(both)
    b_again = redlock.acquire("b", ttl_ms=2000, fence=True)
    assert b_again.fence == 7
    redlock.release(b_again)


def test_contended_fenced_acquisition_reports_its_votes(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    for client in clients[1:]:
        client.set("redlock:f", FOREIGN, px=10_000)
    with pytest.raises(LockContended) as caught:
        redlock.acquire("f", ttl_ms=2000, fence=True, retry=NO_RETRY)
    assert caught.value.votes == {"granted": 1, "held": 2, "failed": 0}
    assert [client.get("redlock:f") for client in clients] == [None, FOREIGN, FOREIGN]


def test_a_failed_fence_commit_leaves_no_lock_key(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """Keys vanish on two nodes between the grant and the fence write-back: the attempt
    fails, and the third node's grant must be taken back, not left to block for a TTL.

    The write-back only runs when the granting nodes disagree, so the third node's
    counter is pushed ahead before every attempt."""
    redlock = make_redlock()
    hammer = multiprocessing.get_context("spawn").Process(
        target=_procs.delete_hammer,
        args=([lock_nodes[0].port, lock_nodes[1].port], "redlock:f"),
    )
    clients[0].set("redlock:f", FOREIGN)
    hammer.start()
    failures = 0
    try:
        deadline = time.monotonic() + 30
        while clients[0].exists("redlock:f"):  # wait for the hammer to be at work
            assert time.monotonic() < deadline, "the delete hammer never started"
            time.sleep(0.01)
        # Stop soon after the race was hit a few times; the window is one round trip.
        for _ in range(3000):
            if failures >= 5:
                break
            clients[2].incrby("redlock-fence:f", 10)
            try:
                lease = redlock.acquire("f", ttl_ms=30_000, fence=True, retry=NO_RETRY)
            except LockContended:
                failures += 1
                assert clients[2].get("redlock:f") is None
            else:
                assert redlock.release(lease) in (ReleaseOutcome.RELEASED, ReleaseOutcome.EXPIRED)
            assert clients[2].get("redlock:f") is None
    finally:
        hammer.kill()
        hammer.join()
        hammer.close()
    assert failures > 0, "the keys never vanished in time: the race was not exercised"


def test_agreeing_nodes_cost_one_round_and_disagreeing_ones_are_written_back(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    def script_calls() -> list[int]:
        return [
            int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
            for client in clients
        ]

    redlock.release(redlock.acquire("f", ttl_ms=2000, fence=True))  # connect, sync counters
    before = script_calls()
    lease = redlock.acquire("f", ttl_ms=2000, fence=True)
    assert [after - first for after, first in zip(script_calls(), before, strict=True)] == [1] * 3
    redlock.release(lease)
    clients[1].set("redlock-fence:f", 40)  # as if node 1 had seen grants the others missed
    before = script_calls()
    lease = redlock.acquire("f", ttl_ms=2000, fence=True)
    assert lease.fence == 41
    assert [after - first for after, first in zip(script_calls(), before, strict=True)] == [2] * 3
    redlock.release(lease)
    assert [client.get("redlock-fence:f") for client in clients] == [b"41"] * 3


@pytest.mark.slow
def test_fences_are_strictly_increasing_in_the_order_of_grants(
    node_urls: list[str], scratch: RedisServer, scratch_client: redis.Redis
) -> None:
    workers, iterations = 6, 25
    _procs.run_processes(
        _procs.fence_worker,
        [(node_urls, scratch.port, w, workers, iterations) for w in range(workers)],
        timeout_s=60,
    )
    fences = [int(value) for value in scratch_client.lrange("fences", 0, -1)]
    holders = {int(value) for value in scratch_client.lrange("fence-holders", 0, -1)}
    assert len(fences) == workers * iterations
    assert all(a < b for a, b in itertools.pairwise(fences)), fences
    assert holders == set(range(workers))  # they really competed


def test_advance_fence_lifts_counters_and_never_lowers_them(
    node_urls: list[str], lock_nodes: list[RedisServer]
) -> None:
    redlock = Redlock(node_urls)
    try:
        assert redlock.advance_fence(["a", "b"], 500) == 3
        with redlock.lock(["a"], ttl_ms=2000, fence=True) as lease:
            assert lease.fence == 501
        assert redlock.advance_fence("a", 10) == 3  # lower: left alone
        with redlock.lock("a", ttl_ms=2000, fence=True) as lease:
            assert lease.fence == 502
    finally:
        redlock.close()


@pytest.mark.parametrize(
    ("grants", "expected"),
    [([7, 7, 7], (7, False)), ([7, 7], (7, False)), ([41, 1, 41], (41, True)), ([3], (3, False))],
)
def test_the_fence_is_the_highest_grant_written_back_only_when_grants_differ(
    grants: list[int], expected: tuple[int, bool]
) -> None:
    assert fence_of(grants) == expected
