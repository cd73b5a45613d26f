"""Waiting for something a test cannot be told about: poll it until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    what: str,
    *,
    timeout_s: float = 60.0,
    settle_s: float = 0.0,
    poll_s: float = 0.1,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    :param what: named in the failure after ``timeout_s`` seconds.
    :param settle_s: when set, the check must hold twice, ``settle_s`` seconds apart.
    :param poll_s: seconds between two checks.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            if not settle_s:
                return result
            time.sleep(settle_s)
            again = check()
            if again:
                return again
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
