"""Small shared pieces of the lock tests (kept out of conftest so tests can import them)."""

from __future__ import annotations

from collections.abc import Callable

from locking import Redlock

#: The `make_redlock` fixture: ``make_redlock(nodes=None, **Redlock options) -> Redlock``.
MakeRedlock = Callable[..., Redlock]
#: A token that is not ours, written straight to a node to simulate another holder.
FOREIGN = b"foreign-token"
