"""What a worker process needs to run order tasks, built once per process.

The worker installs a factory at start-up; each process builds its own runtime
on first use (and again after a fork), so no engine or socket is ever shared
between processes and nothing connects at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from locking import Redlock
from tasks.placement import OrderPlacer
from tasks.store import OrderStore


@dataclass(frozen=True, kw_only=True)
class RetryBudget:
    """How a task retries an order that could not be decided yet.

    :param max_retries: task retries before the order ends ``failed``.
    :param base_s: backoff ceiling of the first retry, in seconds.
    :param max_s: cap of any one backoff, in seconds.
    :param max_deliveries: deliveries of one order (retries and redeliveries of a
        lost worker's message) after which it is failed as poison.
    """

    max_retries: int = 10
    base_s: float = 0.05
    max_s: float = 2.0
    max_deliveries: int = 20


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """The per-process dependencies of the order tasks."""

    engine: Engine
    sessions: sessionmaker[Session]
    store: OrderStore
    redlock: Redlock | None
    placer: OrderPlacer
    budget: RetryBudget
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
