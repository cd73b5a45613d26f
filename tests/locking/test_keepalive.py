"""Auto-extension: a lease outlives its TTL while held, and says so loudly when it is lost."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from locking import NO_RETRY, LeaseLost, LockContended, ReleaseOutcome
from tests.locking._support import FOREIGN, MakeRedlock


def keepalive_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("redlock-keepalive-")]


def test_auto_extend_keeps_the_lock_past_its_ttl(
    make_redlock: MakeRedlock, clients: list[redis.Redis]
) -> None:
    holder, rival = make_redlock(max_extensions=100), make_redlock()
    with holder.lock("auto", ttl_ms=300, auto_extend=True) as lease:
        time.sleep(1.0)  # more than three TTLs
        with pytest.raises(LockContended):
            rival.acquire("auto", ttl_ms=300, retry=NO_RETRY)
        lease.check()
        assert lease.extensions >= 3
        assert [client.get("redlock:auto") for client in clients] == [lease.token.encode()] * 3
        assert not lease.lost.is_set()
    assert lease.release_outcome is ReleaseOutcome.RELEASED
    assert [client.exists("redlock:auto") for client in clients] == [0, 0, 0]
    assert keepalive_threads() == []
    rival.release(rival.acquire("auto", ttl_ms=300, retry=NO_RETRY))


@pytest.mark.parametrize("how", ["deleted", "overwritten"])
def test_auto_extend_signals_a_lost_lease(
    make_redlock: MakeRedlock, clients: list[redis.Redis], how: str
) -> None:
    redlock = make_redlock(max_extensions=100)
    with redlock.lock("auto", ttl_ms=300, auto_extend=True) as lease:
        time.sleep(0.15)
        lease.check()
        for client in clients[:2]:  # the lease is gone on a majority behind the holder's back
            if how == "deleted":
                client.delete("redlock:auto")
            else:
                client.set("redlock:auto", FOREIGN, px=10_000)
        lost_at = time.monotonic()
        assert lease.lost.wait(timeout=2.0), "the keep-alive never noticed"
        assert time.monotonic() - lost_at < 1.0  # about one extension interval (100 ms)
        with pytest.raises(LeaseLost, match="confirmed by 1 of 3"):
            lease.check()
        assert not lease.is_valid
    assert lease.release_outcome is ReleaseOutcome.EXPIRED
    expected = [FOREIGN if how == "overwritten" else None] * 2 + [None]
    assert [client.get("redlock:auto") for client in clients] == expected
    assert keepalive_threads() == []


def test_auto_extend_stops_at_the_extension_limit(make_redlock: MakeRedlock) -> None:
    redlock = make_redlock(max_extensions=2)
    with redlock.lock("auto", ttl_ms=300, auto_extend=True) as lease:
        assert lease.lost.wait(timeout=3.0)
        assert lease.extensions == 2
        with pytest.raises(LeaseLost, match="extended 2 times"):
            lease.check()
    assert keepalive_threads() == []


def test_without_auto_extend_the_lease_lapses(make_redlock: MakeRedlock) -> None:
    holder, rival = make_redlock(), make_redlock()
    with holder.lock("plain", ttl_ms=150) as lease:
        time.sleep(0.3)
        with pytest.raises(LeaseLost):
            lease.check()
        rival.release(rival.acquire("plain", ttl_ms=150, retry=NO_RETRY))
    assert lease.release_outcome is ReleaseOutcome.EXPIRED
