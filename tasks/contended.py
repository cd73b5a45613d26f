"""A bounded per-process memory of lock resources found held by another holder.

On a hot SKU nearly every lock request finds the lock held: the refused request
costs a round to every lock node (a send that wakes three ``redis-server``
processes) and tells the order only that it must wait for a release. An order
whose resources were refused recently in this process waits for the release
wake-up first and asks the nodes once, when the lock is likely free. The memory
forgets a resource after ``window_ms`` without a refusal, or at once when such a
wait saw no release (the resource went quiet), so a quiet SKU is asked at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence


class RecentlyContended:
    """Remembers up to ``capacity`` resource sets refused within the last ``window_ms``.

    :param window_ms: how long after its last refusal a resource set counts as
        contended, in milliseconds.
    :param capacity: resource sets remembered at most (least recently refused out first).
    :param clock: monotonic time in seconds, injectable for tests.
    """

    def __init__(
        self,
        *,
        window_ms: float,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or window_ms < 0:
            raise ValueError(
                f"need capacity >= 1 and window_ms >= 0, got {capacity!r}, {window_ms!r}"
            )
        self._window_s = window_ms / 1000
        self._capacity = capacity
        self._clock = clock
        self._until_s: OrderedDict[tuple[str, ...], float] = OrderedDict()

    def refused(self, resources: Sequence[str]) -> None:
        """Note that a request for ``resources`` was just refused."""
        key = tuple(resources)
        self._until_s[key] = self._clock() + self._window_s
        self._until_s.move_to_end(key)
        while len(self._until_s) > self._capacity:
            self._until_s.popitem(last=False)

    def quiet(self, resources: Sequence[str]) -> None:
        """Forget ``resources``: a wait for their release saw none."""
        self._until_s.pop(tuple(resources), None)

    def is_contended(self, resources: Sequence[str]) -> bool:
        """Return True when a request for ``resources`` was refused within the window."""
        until_s = self._until_s.get(tuple(resources))
        return until_s is not None and self._clock() < until_s

    def __len__(self) -> int:
        return len(self._until_s)
