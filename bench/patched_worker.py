"""Our worker app with diagnostic switches, for measuring one candidate cost at a time.

Run as ``celery -A bench.patched_worker worker`` with ``BENCH_PATCH`` a comma-separated
list of `PATCHES`. Not part of the product: each switch takes one mechanism out, so
an interleaved run shows what that mechanism costs per order.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

import locking.node
from worker.celery_app import create_app
from worker.settings import Settings


def _no_spin(app: Celery) -> None:
    # Lock socket reads sleep in poll() at once instead of spinning first.
    locking.node.SPIN_S = 0.0


def _no_events(app: Celery) -> None:
    # No task events: the main process publishes nothing per task (Flower sees nothing).
    app.conf.update(
        worker_send_task_events=False, task_send_sent_event=False, task_track_started=False
    )


#: Per process: reads, reads answered within the spin, reads that slept in poll(),
#: seconds spent spinning (answered or not), seconds in poll().
SPIN_STATS = {"reads": 0, "spin_hits": 0, "polled": 0, "spin_s": 0.0, "poll_s": 0.0}


def _spin_stats(app: Celery) -> None:
    """Count what the lock's read spin buys: `Node._receive` with counters.

    The same logic as `locking.node.Node._receive` for plain sockets (a copy, so
    that it stays a bench-only patch); the counters go to
    ``$BENCH_STATS_DIR/spin-<pid>.json`` every 200 reads and at exit.
    """
    out_dir = Path(os.environ.get("BENCH_STATS_DIR", "."))

    def dump() -> None:
        (out_dir / f"spin-{os.getpid()}.json").write_text(json.dumps(SPIN_STATS))

    def receive(
        self: locking.node.Node, sock: socket.socket, deadline: float, spin: bool = True
    ) -> bool:
        assert not isinstance(sock, ssl.SSLSocket)
        SPIN_STATS["reads"] += 1
        if SPIN_STATS["reads"] % 200 == 0:
            dump()
        started = time.monotonic()
        spin_until = started + (locking.node.SPIN_S if spin else 0.0)
        polled_at: float | None = None
        while True:
            try:
                fed = self._feed(sock)
            except BlockingIOError:
                self._busy = False
            else:
                now = time.monotonic()
                if polled_at is None:
                    SPIN_STATS["spin_hits"] += 1
                    SPIN_STATS["spin_s"] += now - started
                else:
                    SPIN_STATS["poll_s"] += now - polled_at
                return fed
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if now >= spin_until:
                if polled_at is None:
                    polled_at = now
                    SPIN_STATS["polled"] += 1
                    SPIN_STATS["spin_s"] += now - started
                self._poller.poll(max(1, math.ceil((deadline - now) * 1000)))

    locking.node.Node._receive = receive  # type: ignore[method-assign]
    atexit.register(dump)


def _wait_spin(app: Celery) -> None:
    # Waits for a release spin before sleeping, as reads of replies do (the old way).
    original = locking.node.Node.read

    def read(self: locking.node.Node, deadline: float, *, spin: bool = True) -> object:
        return original(self, deadline, spin=True)

    locking.node.Node.read = read  # type: ignore[method-assign]


#: Per process: what the order path did (see `_path_stats`).
PATH_STATS: dict[str, float] = {}


def _path_stats(app: Celery) -> None:
    """Count the order path's steps per process: acquires, waits, polls, statements.

    Wraps `OrderPlacer` and `Redlock` methods (bench only); the counters go to
    ``$BENCH_STATS_DIR/path-<pid>.json`` every 50 orders.
    """
    from locking import Redlock
    from tasks.pg_store import PostgresOrderStore
    from tasks.placement import OrderPlacer

    out_dir = Path(os.environ.get("BENCH_STATS_DIR", "."))

    phase = {"name": ""}

    def count(key: str, by: float = 1) -> None:
        key = phase["name"] + key
        PATH_STATS[key] = PATH_STATS.get(key, 0) + by

    def dump() -> None:
        (out_dir / f"path-{os.getpid()}.json").write_text(json.dumps(PATH_STATS))

    place, acquire, wait = OrderPlacer.place, Redlock.acquire, Redlock.wait_released
    recorded_wait = OrderPlacer._wait

    def waiting_recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Counters of the recorded order's wait loop get the prefix "recorded:".
        phase["name"] = "recorded:"
        try:
            return recorded_wait(self, *args, **kwargs)
        finally:
            phase["name"] = ""

    release = Redlock.release
    state, record, settle = (
        PostgresOrderStore.state,
        PostgresOrderStore.record,
        PostgresOrderStore.settle,
    )

    def placed(self: Any, request: Any) -> Any:
        try:
            return place(self, request)
        finally:
            count("orders")
            if PATH_STATS.get("orders", 0) % 50 == 0:
                dump()

    def acquired(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            lease = acquire(self, *args, **kwargs)
        except Exception:
            count("acquire_refused")
            raise
        count("acquire_granted")
        return lease

    def waited(self: Any, *args: Any, **kwargs: Any) -> Any:
        woken = wait(self, *args, **kwargs)
        count("wait_woken" if woken else "wait_timeout")
        return woken

    def released(self: Any, *args: Any, **kwargs: Any) -> Any:
        count("release")
        return release(self, *args, **kwargs)

    def stated(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = state(self, *args, **kwargs)
        count("state_poll")
        count("state_poll_decided", result.status.value != "pending")
        return result

    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        count("record")
        return record(self, *args, **kwargs)

    def settled(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = settle(self, *args, **kwargs)
        count("settle")
        count("settle_decisions", len(result.decisions))
        count("settle_nothing", not result.decisions)
        return result

    OrderPlacer.place = placed  # type: ignore[method-assign]
    OrderPlacer._wait = waiting_recorded  # type: ignore[method-assign]
    Redlock.acquire = acquired  # type: ignore[method-assign]
    Redlock.wait_released = waited  # type: ignore[method-assign]
    Redlock.release = released  # type: ignore[method-assign]
    PostgresOrderStore.state = stated  # type: ignore[method-assign]
    PostgresOrderStore.record = recorded  # type: ignore[method-assign]
    PostgresOrderStore.settle = settled  # type: ignore[method-assign]


def _barge(app: Celery) -> None:
    # Every order asks for the lock at once, also on a SKU refused a moment ago (the
    # old way): `tasks.contended` never reports a contended SKU.
    from tasks.contended import RecentlyContended

    RecentlyContended.is_contended = lambda self, resources: False  # type: ignore[method-assign]


def _core_statements(app: Celery) -> None:
    # The settlement step through SQLAlchemy Core, as before the driver's cursor.
    from bench.statement_cpu import core_one_row
    from tasks.pg_store import PostgresOrderStore

    PostgresOrderStore._one_row = core_one_row  # type: ignore[method-assign,assignment]


def _record_sleep(app: Celery) -> None:
    """A recorded order sleeps its backoff instead of blocking on a release wake-up.

    A candidate, not the product: a woken recorded order that finds itself decided
    uses up the release's only wake-up, which a waiter not yet recorded needed.
    """
    from locking import Lease
    from tasks.errors import TryLater
    from tasks.models import TERMINAL
    from tasks.placement import OrderPlacer

    def wait(self: OrderPlacer, lock: Any, resources: list[str], request: Any) -> Any:
        retry = self._policy.retry_in_task
        for attempt in range(1, retry.attempts):
            time.sleep(max(retry.delay_ms(attempt, self._rng), 1.0) / 1000)
            state = self.state_of(request)
            if state.status in TERMINAL:
                return state
            lease: Lease | None = self._try_acquire(lock, resources, request)
            if lease is not None:
                return lease
        raise TryLater(
            request.order_id, "lock_contended", f"lock contended after {retry.attempts} attempts"
        )

    OrderPlacer._wait = wait  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[Celery], None]] = {
    "recordsleep": _record_sleep,
    "corestatements": _core_statements,
    "barge": _barge,
    "pathstats": _path_stats,
    "waitspin": _wait_spin,
    "nospin": _no_spin,
    "noevents": _no_events,
    "spinstats": _spin_stats,
}

app = create_app(Settings.from_env())
for _name in filter(None, os.environ.get("BENCH_PATCH", "").split(",")):
    PATCHES[_name](app)
