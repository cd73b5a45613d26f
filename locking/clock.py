"""The clock of lease validity: one that keeps counting while the host is suspended.

A lease's keys expire on the nodes in real time. ``time.monotonic`` stops while
the client's host is suspended (a laptop lid, a paused VM), so after a suspend
longer than the TTL ``lease.check()`` would still pass while every key is gone,
and only the fence would protect. On Linux, ``CLOCK_BOOTTIME`` is monotonic too
and includes the time suspended; elsewhere ``time.monotonic`` is the fallback
(on macOS it stops during sleep as well: there, only the fence protects across a
suspend). Reading it costs about 0.1 us more than ``time.monotonic`` (240 ns
against 130 ns, measured with timeit), a few times per lock round.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _boot_clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


#: Seconds on a monotonic clock that counts time suspended where the system has one.
lease_clock: Callable[[], float] = (
    _boot_clock if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
)
