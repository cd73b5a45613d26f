"""What a worker process needs to run order tasks, built once per process.

The worker installs a factory at start-up; each process builds its own runtime
on first use (and again after a fork), so no engine or socket is ever shared
between processes and nothing connects at import time.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from locking import Redlock, RetryPolicy
from tasks.events import NULL_EVENTS, OrderEvents
from tasks.placement import OrderPlacer
from tasks.store import OrderStore


@dataclass(frozen=True, kw_only=True)
class TaskRetrySchedule:
    """When the Celery task runs an undecided order again (a new task run, later).

    Not the lock's own retries (`locking.RetryPolicy`, `LockPolicy.retry_in_task`):
    these happen after the task gave its worker slot back.

    :param max_retries: task retries before the order ends ``failed``.
    :param base_delay_s: backoff ceiling of the first retry, in seconds.
    :param max_delay_s: cap of any one backoff, in seconds.
    """

    max_retries: int = 10
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0
    _backoff: RetryPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The same capped, fully jittered backoff as the lock's (one implementation).
        backoff = RetryPolicy(
            attempts=self.max_retries + 1,
            base_delay_ms=self.base_delay_s * 1000,
            max_delay_ms=self.max_delay_s * 1000,
        )
        object.__setattr__(self, "_backoff", backoff)

    def delay_s(self, retries: int, rng: random.Random) -> float:
        """Return the countdown before retry number ``retries + 1``, in seconds.

        :param retries: task retries already made (0 before the first).
        :param rng: the random source.
        """
        return self._backoff.delay_ms(retries + 1, rng) / 1000


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """The per-process dependencies of the order tasks."""

    engine: Engine
    store: OrderStore
    redlock: Redlock | None
    placer: OrderPlacer
    retries: TaskRetrySchedule
    events: OrderEvents = NULL_EVENTS
    #: The relay's INTAKE_REPUBLISH_AFTER_S (see `tasks.relay`).
    republish_after_s: float = 60.0


class RuntimeNotConfigured(RuntimeError):
    """A task ran in a process where the worker never installed its runtime factory."""


_factory: Callable[[], Runtime] | None = None
_runtime: Runtime | None = None
_pid: int | None = None


def install(factory: Callable[[], Runtime]) -> None:
    """Register how this process (and its forked children) build their runtime."""
    global _factory
    _factory = factory
    reset()


def current() -> Runtime:
    """Return this process's runtime, building it on first use or after a fork."""
    global _runtime, _pid
    if _runtime is not None and _pid == os.getpid():
        return _runtime
    if _factory is None:
        raise RuntimeNotConfigured(
            "the worker did not install the order runtime (see worker.signals)"
        )
    reset()
    _runtime = _factory()
    _pid = os.getpid()
    return _runtime


def reset() -> None:
    """Forget the runtime; an inherited pool is dropped without closing the parent's sockets."""
    global _runtime, _pid
    if _runtime is not None:
        _runtime.engine.dispose(close=_pid == os.getpid())
        _runtime.store.dispose(close=_pid == os.getpid())
        if _runtime.redlock is not None and _pid == os.getpid():
            _runtime.redlock.close()
    _runtime = None
    _pid = None
