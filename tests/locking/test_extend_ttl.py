"""`extend` refuses a TTL that is not a positive int larger than the drift, and keeps the lease."""

from __future__ import annotations

import pytest
import redis

from locking import Redlock, ReleaseOutcome


@pytest.mark.parametrize("ttl_ms", [-1, 0, 1, 2, 2.5, True, "5000"])
def test_extend_with_a_bad_ttl_raises_and_keeps_the_lease(
    redlock: Redlock, clients: list[redis.Redis], ttl_ms: object
) -> None:
    lease = redlock.acquire("k", ttl_ms=5000)
    with pytest.raises(ValueError, match="ttl_ms"):
        redlock.extend(lease, ttl_ms=ttl_ms)  # type: ignore[arg-type]
    assert [client.get("redlock:k") for client in clients] == [lease.token.encode()] * 3
    assert all(client.pttl("redlock:k") > 4000 for client in clients)
    lease.check()
    assert lease.extensions == 0
    redlock.extend(lease, ttl_ms=5000)
    assert lease.extensions == 1
    assert redlock.release(lease) is ReleaseOutcome.RELEASED
