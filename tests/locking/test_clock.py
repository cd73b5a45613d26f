"""The validity clock counts time the host spends suspended (CLOCK_BOOTTIME on Linux)."""

from __future__ import annotations

import sys
import time

import pytest

from locking import Redlock
from locking.clock import lease_clock


@pytest.mark.skipif(sys.platform != "linux", reason="CLOCK_BOOTTIME is Linux only")
def test_leases_are_timed_on_the_boot_clock(redlock: Redlock) -> None:
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs(lease_clock() - boot) < 0.5  # not time.monotonic, which stops in suspend
    lease = redlock.acquire("c", ttl_ms=2000)
    assert lease.clock is lease_clock
    assert 0 < lease.valid_until_s - time.clock_gettime(time.CLOCK_BOOTTIME) <= 2.0
    redlock.release(lease)
