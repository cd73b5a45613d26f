"""Extending a lease: new validity, a bounded number of times, never a resurrection."""

from __future__ import annotations

import time

import pytest
import redis

from locking import (
    NO_RETRY,
    ExtensionLimitReached,
    LeaseLost,
    LockContended,
    Redlock,
    ReleaseOutcome,
)
from tests.locking._support import FOREIGN, MakeRedlock


def test_extend_recomputes_the_validity(redlock: Redlock, clients: list[redis.Redis]) -> None:
    lease = redlock.acquire("ext", ttl_ms=2000)
    time.sleep(0.3)
    before = lease.remaining_ms()
    assert before < 1750
    assert all(client.pttl("redlock:ext") < 1750 for client in clients)
    assert redlock.extend(lease) is lease
    assert lease.remaining_ms() > before + 200
    assert lease.remaining_ms() <= 2000 - 22
    assert lease.extensions == 1
    assert all(client.pttl("redlock:ext") > 1500 for client in clients)
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


def test_extend_with_a_new_ttl(redlock: Redlock, clients: list[redis.Redis]) -> None:
    lease = redlock.acquire(["e1", "e2"], ttl_ms=1000)
    redlock.extend(lease, ttl_ms=8000)
    assert lease.ttl_ms == 8000
    assert 7000 < lease.remaining_ms() <= 8000 - 82
    for client in clients:
        assert 7000 < client.pttl("redlock:e1") <= 8000
        assert 7000 < client.pttl("redlock:e2") <= 8000
    redlock.release(lease)


def test_extensions_are_bounded(make_redlock: MakeRedlock, clients: list[redis.Redis]) -> None:
    redlock = make_redlock(max_extensions=3)
    lease = redlock.acquire("bounded", ttl_ms=5000)
    for _ in range(3):
        redlock.extend(lease)
    with pytest.raises(ExtensionLimitReached) as caught:
        redlock.extend(lease)
    assert isinstance(caught.value, LeaseLost)
    assert lease.extensions == 3
    # The lease itself is still held until its TTL: release it and acquire anew.
    lease.check()
    assert [client.get("redlock:bounded") for client in clients] == [lease.token.encode()] * 3
    assert redlock.release(lease) is ReleaseOutcome.RELEASED
    fresh = redlock.acquire("bounded", ttl_ms=5000)
    redlock.extend(fresh)
    redlock.release(fresh)


def test_zero_extensions_allowed(make_redlock: MakeRedlock) -> None:
    redlock = make_redlock(max_extensions=0)
    lease = redlock.acquire("none", ttl_ms=5000)
    with pytest.raises(ExtensionLimitReached):
        redlock.extend(lease)
    redlock.release(lease)


def test_extend_never_resurrects_an_expired_lease(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("gone", ttl_ms=100)
    time.sleep(0.25)
    with pytest.raises(LeaseLost):
        redlock.extend(lease)
    assert [client.exists("redlock:gone") for client in clients] == [0, 0, 0]
    assert redlock.release(lease) is ReleaseOutcome.EXPIRED


def test_extend_never_recreates_keys_that_vanished_on_the_nodes(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    """The nodes dropped the keys while the client still thinks the lease is valid."""
    lease = redlock.acquire("vanished", ttl_ms=10_000)
    for client in clients:
        client.delete("redlock:vanished")
    with pytest.raises(LeaseLost, match="confirmed by 0 of 3"):
        redlock.extend(lease)
    assert lease.lost.is_set() and "0 of 3" in (lease.lost_reason or "")
    assert [client.exists("redlock:vanished") for client in clients] == [0, 0, 0]


def test_extend_never_touches_another_holders_keys(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("stolen", ttl_ms=10_000)
    for client in clients[:2]:
        client.set("redlock:stolen", FOREIGN, px=3000)
    with pytest.raises(LeaseLost, match="confirmed by 1 of 3"):
        redlock.extend(lease, ttl_ms=60_000)
    with pytest.raises(LeaseLost):
        lease.check()
    for client in clients[:2]:
        assert client.get("redlock:stolen") == FOREIGN
        assert client.pttl("redlock:stolen") <= 3000
    # Our key on the third node was extended, and release still cleans it up.
    assert clients[2].get("redlock:stolen") == lease.token.encode()
    assert redlock.release(lease) is ReleaseOutcome.EXPIRED
    assert clients[2].exists("redlock:stolen") == 0


def test_an_extended_lease_keeps_competitors_out_past_its_first_ttl(
    make_redlock: MakeRedlock,
) -> None:
    holder, rival = make_redlock(), make_redlock()
    lease = holder.acquire("long", ttl_ms=500)
    for _ in range(4):
        time.sleep(0.15)
        holder.extend(lease)
    time.sleep(0.1)  # 0.7 s after the grant: without the extensions the TTL would be over
    with pytest.raises(LockContended):
        rival.acquire("long", ttl_ms=500, retry=NO_RETRY)
    assert holder.release(lease) is ReleaseOutcome.RELEASED


def test_a_released_lease_cannot_be_extended(redlock: Redlock) -> None:
    lease = redlock.acquire("done", ttl_ms=5000)
    redlock.release(lease)
    with pytest.raises(LeaseLost, match="released"):
        redlock.extend(lease)
