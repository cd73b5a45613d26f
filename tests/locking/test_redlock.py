"""Acquire and release against three real nodes: quorum, votes, all-or-nothing, clean-up."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from locking import (
    NO_RETRY,
    LeaseLost,
    LockContended,
    QuorumUnavailable,
    Redlock,
    ReleaseOutcome,
    RetryPolicy,
)
from tests.locking._support import FOREIGN, MakeRedlock, held_by
from tests.spawners import kill_server
from worker.demo.redis_server import RedisServer

SUBSETS = [subset for size in range(4) for subset in itertools.combinations(range(3), size)]


def lock_keys(clients: list[redis.Redis]) -> list[list[bytes | str]]:
    return [sorted(client.keys("redlock:*")) for client in clients]


def test_acquire_sets_one_token_with_the_ttl_on_every_node(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("sku:1", ttl_ms=4000)
    assert lease.resources == ("sku:1",)
    assert len(lease.token) == 32 and int(lease.token, 16) >= 0  # 128 random bits
    assert held_by(clients, "redlock:sku:1") == [lease.token.encode()] * 3
    for client in clients:
        assert 3000 < client.pttl("redlock:sku:1") <= 4000
    assert 0 < lease.validity_ms <= 4000 - 42
    assert 0 < lease.remaining_ms() <= lease.validity_ms
    assert lease.is_valid and lease.fence is None
    lease.check(margin_ms=1000)

    assert redlock.release(lease) is ReleaseOutcome.RELEASED
    assert held_by(clients, "redlock:sku:1") == [None] * 3
    assert not lease.is_valid
    with pytest.raises(LeaseLost, match="released"):
        lease.check()


def test_tokens_are_fresh_for_every_lease(redlock: Redlock) -> None:
    tokens = set()
    for _ in range(50):
        lease = redlock.acquire("fresh", ttl_ms=1000)
        tokens.add(lease.token)
        redlock.release(lease)
    assert len(tokens) == 50


def test_a_held_lock_is_refused_to_a_second_client(make_redlock: MakeRedlock) -> None:
    first, second = make_redlock(), make_redlock()
    lease = first.acquire("shared", ttl_ms=5000)
    with pytest.raises(LockContended) as caught:
        second.acquire("shared", ttl_ms=5000, retry=NO_RETRY)
    assert caught.value.votes == {"granted": 0, "held": 3, "failed": 0}
    assert caught.value.attempts == 1
    assert caught.value.resources == ("shared",)
    first.release(lease)
    second.release(second.acquire("shared", ttl_ms=5000, retry=NO_RETRY))


@pytest.mark.parametrize("fence", [False, True], ids=["plain", "fenced"])
@pytest.mark.parametrize("locked", SUBSETS, ids=lambda subset: f"foreign-on-{list(subset)}")
def test_quorum_table(
    redlock: Redlock, clients: list[redis.Redis], locked: tuple[int, ...], fence: bool
) -> None:
    """Pre-lock each subset of nodes with a foreign token: a grant needs 2 free nodes of 3."""
    for index in locked:
        clients[index].set("redlock:table", FOREIGN, px=10_000)
    free = 3 - len(locked)
    if free >= 2:
        lease = redlock.acquire("table", ttl_ms=5000, fence=fence, retry=NO_RETRY)
        expected = [FOREIGN if i in locked else lease.token.encode() for i in range(3)]
        assert held_by(clients, "redlock:table") == expected
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
    else:
        with pytest.raises(LockContended) as caught:
            redlock.acquire("table", ttl_ms=5000, fence=fence, retry=NO_RETRY)
        assert caught.value.votes == {"granted": free, "held": len(locked), "failed": 0}
    # Whatever happened, only the foreign token is left: our grants were all undone.
    assert held_by(clients, "redlock:table") == [FOREIGN if i in locked else None for i in range(3)]
    for index in locked:
        assert clients[index].pttl("redlock:table") > 9000  # and it was not touched


@pytest.mark.parametrize("locked", SUBSETS, ids=lambda subset: f"b-foreign-on-{list(subset)}")
def test_multi_resource_lease_is_all_or_nothing_per_node(
    redlock: Redlock, clients: list[redis.Redis], locked: tuple[int, ...]
) -> None:
    """A node that holds one of the keys for someone else grants none of them."""
    for index in locked:
        clients[index].set("redlock:b", FOREIGN, px=10_000)
    if len(locked) <= 1:
        lease = redlock.acquire(["a", "b", "c"], ttl_ms=5000, retry=NO_RETRY)
        token = lease.token.encode()
        for index, client in enumerate(clients):
            keys = [client.get(f"redlock:{name}") for name in "abc"]
            if index in locked:
                assert keys == [None, FOREIGN, None]
            else:
                assert keys == [token] * 3
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
    else:
        with pytest.raises(LockContended):
            redlock.acquire(["a", "b", "c"], ttl_ms=5000, retry=NO_RETRY)
    assert [client.exists("redlock:a", "redlock:c") for client in clients] == [0, 0, 0]
    assert held_by(clients, "redlock:b") == [FOREIGN if i in locked else None for i in range(3)]


def test_repeated_resource_names_count_once(redlock: Redlock, clients: list[redis.Redis]) -> None:
    lease = redlock.acquire(["x", "y", "x"], ttl_ms=2000)
    assert lease.resources == ("x", "y")
    assert redlock.release(lease) is ReleaseOutcome.RELEASED
    assert lock_keys(clients) == [[], [], []]


@pytest.mark.parametrize("resources", ["", [], ["ok", ""], [b"bytes"]])
def test_bad_resources_are_refused(redlock: Redlock, resources: object) -> None:
    with pytest.raises(ValueError, match="resources"):
        redlock.acquire(resources, ttl_ms=1000)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl_ms", [0, 2, -5, 1.5, True])
def test_bad_ttls_are_refused(redlock: Redlock, ttl_ms: object) -> None:
    with pytest.raises(ValueError, match="ttl_ms"):
        redlock.acquire("r", ttl_ms=ttl_ms)  # type: ignore[arg-type]


def test_retries_until_the_holder_lets_go(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    redlock = make_redlock()
    started = time.monotonic()
    for client in clients:
        client.set("redlock:busy", FOREIGN, px=150)
    lease = redlock.acquire(
        "busy", ttl_ms=2000, retry=RetryPolicy(attempts=200, base_delay_ms=5, max_delay_ms=20)
    )
    assert time.monotonic() - started >= 0.14  # it could only win once the foreign TTL ran out
    # A majority at least (the third foreign key, set a moment later, may still have been there).
    assert held_by(clients, "redlock:busy").count(lease.token.encode()) >= 2
    redlock.release(lease)


def test_contended_acquisition_gives_up_after_its_attempts(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    for client in clients[:2]:
        client.set("redlock:held", FOREIGN, px=20_000)
    with pytest.raises(LockContended) as caught:
        redlock.acquire("held", ttl_ms=1000, retry=RetryPolicy(attempts=4, max_delay_ms=10))
    assert caught.value.attempts == 4
    assert caught.value.votes == {"granted": 1, "held": 2, "failed": 0}
    assert held_by(clients, "redlock:held") == [FOREIGN, FOREIGN, None]


def test_deadline_bounds_the_whole_acquisition(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    for client in clients:
        client.set("redlock:held", FOREIGN, px=20_000)
    policy = RetryPolicy(attempts=10_000, base_delay_ms=5, max_delay_ms=50, deadline_ms=300)
    started = time.monotonic()
    with pytest.raises(LockContended) as caught:
        redlock.acquire("held", ttl_ms=1000, retry=policy)
    elapsed = time.monotonic() - started
    assert 1 < caught.value.attempts < 10_000
    assert elapsed < 2.0  # 300 ms budget, generous for a loaded machine


def test_release_outcome_released_and_idempotent(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    first, second = make_redlock(), make_redlock()
    lease = first.acquire("r", ttl_ms=5000)
    assert first.release(lease) is ReleaseOutcome.RELEASED
    later = second.acquire("r", ttl_ms=5000, retry=NO_RETRY)
    # Releasing again answers the first outcome and must not touch the new holder's keys.
    assert first.release(lease) is ReleaseOutcome.RELEASED
    assert held_by(clients, "redlock:r") == [later.token.encode()] * 3
    assert second.release(later) is ReleaseOutcome.RELEASED


def test_release_after_the_ttl_reports_expired(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("short", ttl_ms=60)
    time.sleep(0.2)
    assert not lease.is_valid
    assert redlock.release(lease) is ReleaseOutcome.EXPIRED
    assert redlock.release(lease) is ReleaseOutcome.EXPIRED
    assert held_by(clients, "redlock:short") == [None] * 3


def test_release_never_deletes_another_holders_key(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("taken", ttl_ms=60)
    time.sleep(0.2)
    for client in clients:  # someone else got the resource after our lease lapsed
        client.set("redlock:taken", FOREIGN, px=10_000)
    assert redlock.release(lease) is ReleaseOutcome.EXPIRED
    assert held_by(clients, "redlock:taken") == [FOREIGN] * 3


def test_an_unconfirmed_release_frees_the_keys_and_its_replies_are_skipped_later(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    first, second = make_redlock(), make_redlock()
    for round_ in range(3):
        lease = first.acquire("r", ttl_ms=5000, fence=True)
        assert lease.fence == 2 * round_ + 1  # a skipped reply read as this one would differ
        assert first.release(lease, confirm=False) is ReleaseOutcome.SENT
        assert first.release(lease) is ReleaseOutcome.SENT  # the first outcome stands
        # Another client takes it well before the TTL: the nodes ran the release.
        other = second.acquire("r", ttl_ms=5000, fence=True)
        assert held_by(clients, "redlock:r") == [other.token.encode()] * 3
        assert second.release(other) is ReleaseOutcome.RELEASED
    # The owed replies were consumed, not mistaken for the answers of later rounds.
    assert first.ping() == dict.fromkeys(first.node_names)
    lease = first.acquire("r", ttl_ms=5000)
    assert first.release(lease) is ReleaseOutcome.RELEASED


def test_release_with_two_nodes_gone_is_unconfirmed(
    redlock: Redlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("r", ttl_ms=5000)
    kill_server(lock_nodes[1])
    kill_server(lock_nodes[2])
    assert redlock.release(lease) is ReleaseOutcome.UNCONFIRMED
    assert clients[0].exists("redlock:r") == 0


def test_lock_context_manager_releases_on_error(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    with pytest.raises(RuntimeError, match="boom"), redlock.lock("cm", ttl_ms=5000) as lease:
        assert held_by(clients, "redlock:cm") == [lease.token.encode()] * 3
        raise RuntimeError("boom")
    assert lease.release_outcome is ReleaseOutcome.RELEASED
    assert held_by(clients, "redlock:cm") == [None] * 3
    assert redlock.with_lock("cm", 5000, lambda: clients[0].get("redlock:cm")) is not None
    assert held_by(clients, "redlock:cm") == [None] * 3


def test_a_thousand_cycles_leave_no_lock_key(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    redlock, rival = make_redlock(), make_redlock()
    for cycle in range(1000):
        resources = ["m1", "m2"] if cycle % 10 == 0 else f"r{cycle % 7}"
        lease = redlock.acquire(resources, ttl_ms=10_000, fence=cycle % 25 == 0)
        if cycle % 50 == 0:  # and a refused rival in between
            with pytest.raises(LockContended):
                rival.acquire(resources, ttl_ms=10_000, retry=NO_RETRY)
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
    assert lock_keys(clients) == [[], [], []]


def test_ping_reports_each_node(redlock: Redlock, lock_nodes: list[RedisServer]) -> None:
    assert redlock.ping() == dict.fromkeys(redlock.node_names)
    kill_server(lock_nodes[0])
    pings = redlock.ping()
    assert pings[redlock.node_names[0]] is not None
    assert [pings[name] for name in redlock.node_names[1:]] == [None, None]


def test_close_then_reuse_reconnects(redlock: Redlock) -> None:
    redlock.release(redlock.acquire("r", ttl_ms=1000))
    redlock.close()
    assert redlock.release(redlock.acquire("r", ttl_ms=1000)) is ReleaseOutcome.RELEASED


def test_quorum_unavailable_is_not_contended(
    redlock: Redlock, lock_nodes: list[RedisServer]
) -> None:
    kill_server(lock_nodes[0])
    kill_server(lock_nodes[2])
    with pytest.raises(QuorumUnavailable) as caught:
        redlock.acquire("r", ttl_ms=1000, retry=NO_RETRY)
    assert not isinstance(caught.value, LockContended)
