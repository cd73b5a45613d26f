"""Small shared pieces of the lock tests (kept out of conftest so tests can import them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from locking import Lease, Redlock

#: The `make_redlock` fixture: ``make_redlock(nodes=None, **Redlock options) -> Redlock``.
MakeRedlock = Callable[..., Redlock]
#: A token that is not ours, written straight to a node to simulate another holder.
FOREIGN = b"foreign-token"


def held_by(clients: list[redis.Redis], key: str) -> list[bytes | None]:
    """The value of ``key`` on each node (a lease's token, None where nobody holds it)."""
    # The clients do not decode: every value is bytes.
    return [cast(bytes | None, client.get(key)) for client in clients]


def assert_woken_by_release(
    holder: Redlock, waiter: Redlock, lease: Lease, *, resource: str = "w"
) -> None:
    """Release ``lease`` 50 ms from now; the waiter, blocked meanwhile, must wake in time."""
    releaser = threading.Timer(0.05, holder.release, args=(lease,))
    started = time.monotonic()
    releaser.start()
    try:
        woken = waiter.wait_released(resource, timeout_ms=800)
    finally:
        releaser.join()
    assert woken is True
    assert time.monotonic() - started < 0.6
