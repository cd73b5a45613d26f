"""Small shared pieces of the lock tests (kept out of conftest so tests can import them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis

from locking import Redlock

#: The `make_redlock` fixture: ``make_redlock(nodes=None, **Redlock options) -> Redlock``.
MakeRedlock = Callable[..., Redlock]
#: A token that is not ours, written straight to a node to simulate another holder.
FOREIGN = b"foreign-token"


def held_by(clients: list[redis.Redis], key: str) -> list[bytes | None]:
    """The value of ``key`` on each node (a lease's token, None where nobody holds it)."""
    # The clients do not decode: every value is bytes.
    return [cast(bytes | None, client.get(key)) for client in clients]
