"""Fencing tokens: strictly increasing in the order of grants, across holders and node loss."""

from __future__ import annotations

import itertools
import multiprocessing
import time

import pytest
import redis

from locking import NO_RETRY, LockContended, Redlock, ReleaseOutcome
from locking.commands import is_grant, refusal
from locking.fencing import GENESIS, RECOVERING, Plan, Report, Trust, plan
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
        # The guard only ever saw fences of leases, so the nodes have their status:
        # only a trusted node creates a counter (see scripts.ADVANCE_FENCE).
        redlock.release(redlock.acquire(["a", "b"], ttl_ms=2000, fence=True))
        assert redlock.advance_fence(["a", "b"], 500) == 3
        with redlock.lock(["a"], ttl_ms=2000, fence=True) as lease:
            assert lease.fence == 501
        assert redlock.advance_fence("a", 10) == 3  # lower: left alone
        with redlock.lock("a", ttl_ms=2000, fence=True) as lease:
            assert lease.fence == 502
    finally:
        redlock.close()


T, U, N = Trust.TRUSTED, Trust.UNTRUSTED, Trust.UNKNOWN


@pytest.mark.parametrize(
    ("reports", "granting", "expected"),
    [
        # Agreeing trusted nodes: their fence, nothing more to do.
        ([(7, T), (7, T), (7, T)], [True] * 3, Plan(7, False, "", True)),
        ([(7, T), (7, T), None], [True, True, False], Plan(7, False, "", True)),
        # Disagreeing: the highest, written back.
        ([(41, T), (1, T), (41, T)], [True] * 3, Plan(41, True, RECOVERING, True)),
        # A node without status among two with theirs: recovering, written back.
        ([(1, N), (5, T), (5, T)], [True] * 3, Plan(5, True, RECOVERING, True)),
        # A new cluster: every node trusted from its counter, written back.
        ([(3, N), (1, N), (1, N)], [True] * 3, Plan(3, True, GENESIS, True)),
        # One trusted granting node is not a majority: read the others first.
        ([(1, N), None, (3, T)], [True, False, True], None),
        ([(1, U), None, (3, T)], [True, False, True], None),
    ],
)
def test_plan_takes_the_fence_from_a_majority_of_trusted_counters(
    reports: list[tuple[int, Trust] | None], granting: list[bool], expected: Plan | None
) -> None:
    parsed = [None if r is None else Report(proposal=r[0], trust=r[1]) for r in reports]
    assert plan(parsed, granting, read_all=False) == expected


def test_plan_after_reading_uses_the_other_nodes_counter() -> None:
    known = [Report(1, Trust.UNKNOWN), Report(5, Trust.TRUSTED), Report(3, Trust.TRUSTED)]
    assert plan(known, [True, False, True], read_all=True) == Plan(5, True, RECOVERING, True)
    # Two nodes untrusted for the resource: the third must answer, and then it has
    # every fence that was not lost (it is the only node that can hold one).
    reports: list[Report | None] = [Report(1, Trust.UNTRUSTED), Report(2, Trust.UNTRUSTED), None]
    assert plan(reports, [True, True, False], read_all=True) is None
    reports[2] = Report(3, Trust.TRUSTED)
    assert plan(reports, [True, True, False], read_all=True) == Plan(3, True, RECOVERING, True)
    # No node vouches for its counter: best effort, and said so.
    reports[2] = Report(3, Trust.UNTRUSTED)
    assert plan(reports, [True, True, False], read_all=True) == Plan(3, True, RECOVERING, False)


def test_a_node_restarted_empty_cannot_bring_a_fence_down(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """The review's reproduction (TTL 500 ms): C misses leases, A restarts empty after
    2 x TTL, then B misses one: the fence must still go up."""
    ttl_ms = 500
    first = make_redlock()
    first.release(first.acquire("f", ttl_ms=ttl_ms, fence=True))  # fence 1 everywhere
    clients[2].set("redlock:f", FOREIGN, px=60_000)  # C is busy: {A, B} grant
    fences = []
    for _ in range(3):
        lease = first.acquire("f", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
        fences.append(lease.fence)
        first.release(lease)
    assert fences == [2, 3, 4]
    lock_nodes[0].kill()
    time.sleep(2 * ttl_ms / 1000)  # the documented safe procedure: out for 2 x TTL
    lock_nodes[0].start()  # empty
    clients[2].delete("redlock:f")
    clients[1].set("redlock:f", FOREIGN, px=60_000)  # now B is busy: {A, C} grant
    second = make_redlock()
    lease = second.acquire("f", ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)
    second.release(lease)
    assert lease.fence is not None and lease.fence > 4
    # A is marked as having lost its state, and vouches for the written-back counter.
    assert [client.get("redlock-fence:") for client in clients] == [
        b"recovering",
        b"trusted",
        b"trusted",
    ]
    assert clients[0].get("redlock-fence:f") == str(lease.fence).encode()
    clients[1].delete("redlock:f")
    for _ in range(3):  # steady again: every node trusted, fences go on up
        with second.lock("f", ttl_ms=ttl_ms, fence=True) as again:
            assert again.fence is not None and again.fence > lease.fence
            lease = again


#: Replies of every other command of the lock, which a shifted read could see.
OTHER_REPLIES: list[object] = [0, 1, 2, -1, None, b"OK", b"PONG", [b"redlock-wake:f", b"1"]]


@pytest.mark.parametrize("reply", OTHER_REPLIES)
def test_no_other_reply_reads_as_a_fenced_grant(reply: object) -> None:
    assert not is_grant(reply, fence=True)
    refused = refusal(("f",), 1, [reply] * 3, fence=True, quorum=2)
    assert isinstance(refused, LockContended) and refused.votes["granted"] == 0


@pytest.mark.parametrize("reply", [0, 1, 2, -1, None, b"PONG", [b"fence", 7, 1]])
def test_no_other_reply_reads_as_a_plain_grant(reply: object) -> None:
    assert not is_grant(reply, fence=False)


def test_without_a_vouching_majority_every_node_must_answer(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """Nodes 1 and 2 lost their state (recovering, no counter): only node 3 still holds
    the last fence, so while it is silent no fenced lease may be handed out."""
    for client in clients[:2]:
        client.set("redlock-fence:", "recovering")
    clients[2].set("redlock-fence:", "trusted")
    clients[2].set("redlock-fence:f", 7)
    redlock = make_redlock()
    redlock.ping()
    lock_nodes[2].freeze()
    try:
        with pytest.raises(LockContended):
            redlock.acquire("f", ttl_ms=2000, fence=True, retry=NO_RETRY)
    finally:
        lock_nodes[2].thaw()
    assert [client.get("redlock:f") for client in clients[:2]] == [None, None]  # released
    time.sleep(1.1)  # node 3 is no longer suspected
    with redlock.lock("f", ttl_ms=2000, fence=True) as lease:
        # Above 7 (9: node 3 ran the late grant of the first attempt when thawed).
        assert lease.fence is not None and lease.fence > 7
    assert [client.get("redlock-fence:f") for client in clients] == [str(lease.fence).encode()] * 3


def test_advance_fence_creates_no_counter_a_recovering_node_would_vouch_for(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    redlock.release(redlock.acquire("a", ttl_ms=2000, fence=True))  # every node trusted
    clients[0].flushall()
    clients[0].set("redlock-fence:", "recovering")
    assert redlock.advance_fence("b", 50) == 3
    # A counter there would count as written back by a lease, which 50 was not.
    assert [client.get("redlock-fence:b") for client in clients] == [None, b"50", b"50"]
    with redlock.lock("b", ttl_ms=2000, fence=True) as lease:
        assert lease.fence == 51
    assert [client.get("redlock-fence:b") for client in clients] == [b"51"] * 3
