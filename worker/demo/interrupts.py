"""Ctrl-C and SIGTERM for a command that owns child processes: never between start and record.

`install` makes SIGINT, SIGTERM and SIGHUP raise `KeyboardInterrupt` in the main
thread. Inside `shielded()` a signal is only noted and raised when the block
ends, so a child process is never started without being recorded for clean-up.
`ignore_from_now` is for the clean-up itself: a second Ctrl-C must not abandon it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_state = {"shield_depth": 0, "pending": 0, "ignoring": 0}


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP to `KeyboardInterrupt` (even if inherited as ignored)."""
    _state.update(shield_depth=0, pending=0, ignoring=0)
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


def restore() -> None:
    """Give SIGINT, SIGTERM and SIGHUP back their default behaviour."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@contextmanager
def shielded() -> Iterator[None]:
    """Defer a signal until the block is done, then raise `KeyboardInterrupt`."""
    _state["shield_depth"] += 1
    try:
        yield
    finally:
        _state["shield_depth"] -= 1
    if _state["shield_depth"] == 0 and _state["pending"] and not _state["ignoring"]:
        _state["pending"] = 0
        raise KeyboardInterrupt


def ignore_from_now() -> None:
    """Note but never raise further signals: the caller is already cleaning up."""
    _state["ignoring"] = 1


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _state["ignoring"]:
        logger.warning("Signal %d received while stopping; still stopping.", signum)
        return
    if _state["shield_depth"]:
        _state["pending"] = signum
        return
    raise KeyboardInterrupt
