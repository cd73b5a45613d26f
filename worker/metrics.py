"""Prometheus metrics of one worker: the order events, lock node errors and node state.

One worker = a main process and its prefork pool. Every process writes its figures
to memory-mapped files in the worker's own directory (prometheus_client's
multiprocess mode); the main process serves their sum at ``/metrics``. A write is
a store into a shared file mapping, so a pool process that dies (even SIGKILLed)
loses nothing it already counted: its counter file stays and is still summed.

`WorkerMetrics` implements the ``OrderEvents`` protocol of ``tasks.events``
structurally (same method names and signatures; nothing here imports ``tasks``),
and `WorkerMetrics.node_error` is the ``Redlock(on_node_error=...)`` callback.
Labels are low-cardinality only: node ``host:port``, fixed kinds, outcomes,
statuses, database reasons and retry causes; never an order or customer id.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from locking.errors import NODE_ERROR_KINDS

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

#: The environment variable prometheus_client reads to choose multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Outcomes of one acquire sequence of the order path (OrderEvents.lock_acquired).
ACQUIRE_OUTCOMES = ("granted", "contended", "unavailable")
#: Retry causes of the order task (OrderEvents.task_retry); pre-set to 0.
RETRY_CAUSES = ("lock_contended", "lock_unavailable", "database_unavailable", "over_budget",
                "time_limit")  # fmt: skip
# Acquire: a granted round is ~1 ms on a LAN; contention waits up to tens of ms;
# an unavailable quorum costs the retry policy's whole budget (up to seconds).
ACQUIRE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Decision: from creation to a terminal state, milliseconds when idle, minutes
# for a backlog at the end of a sale.
DECISION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 100)


class HasNodeError(Protocol):
    """What `WorkerMetrics.node_error` reads of a ``locking.errors.NodeError``."""

    node: str
    kind: str


def multiprocess_dir(port: int) -> Path:
    """Return the metrics directory of the worker serving on ``port`` (one per port)."""
    return Path(tempfile.gettempdir()) / f"flashsale-metrics-{port}"


def enable_multiprocess(directory: Path) -> None:
    """Empty ``directory`` and make every metric created afterwards write there.

    Call in the worker's main process before any metric exists and before the pool
    forks: the children inherit the setting. A previous run's files (a crashed
    worker on this port) are removed, so figures restart at zero with the worker.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    from prometheus_client import values

    # prometheus_client picks its value class when first imported; pick again now
    # in case anything imported it before the directory was known.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def serve(port: int, directory: Path, *, host: str = "0.0.0.0") -> Any:
    """Serve on ``port`` the sum of the metrics of every process writing to ``directory``.

    :return: the HTTP server (``shutdown()`` stops it).
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    directory.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def process_exited(pid: int) -> None:
    """Drop the live gauges of an exited pool process (its counters stay and count)."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class WorkerMetrics:
    """Every metric the worker exports; create one per worker, before the pool forks.

    :param node_names: ``host:port`` of each configured lock node (series pre-set to 0).
    """

    def __init__(self, node_names: Sequence[str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: in multiprocess mode the files are the registry.
        self.node_up: Gauge = Gauge(
            "flashsale_lock_node_up",
            "1 when the lock node answered the worker's last probe, else 0.",
            ["node"],
            registry=None,
            multiprocess_mode="livemax",
        )
        self.node_errors: Counter = Counter(
            "flashsale_lock_node_errors_total",
            "Errors of lock nodes met by lock rounds, by node and kind.",
            ["node", "kind"],
            registry=None,
        )
        self.acquire_seconds: Histogram = Histogram(
            "flashsale_lock_acquire_seconds",
            "Time the order path spent acquiring its lock, by outcome.",
            ["outcome"],
            buckets=ACQUIRE_BUCKETS_S,
            registry=None,
        )
        self.quorum_failures: Counter = Counter(
            "flashsale_lock_quorum_failures_total",
            "Lock acquisitions that failed because too few nodes answered.",
            registry=None,
        )
        self.orders: Counter = Counter(
            "flashsale_orders_total",
            "Orders this worker moved to a terminal state, by status and database reason.",
            ["status", "reason"],
            registry=None,
        )
        self.decision_seconds: Histogram = Histogram(
            "flashsale_order_decision_seconds",
            "Seconds from an order's creation (or acceptance) to its decision.",
            buckets=DECISION_BUCKETS_S,
            registry=None,
        )
        self.batch_orders: Histogram = Histogram(
            "flashsale_settlement_batch_orders",
            "Orders one lock holder decided in one settlement (flat combining).",
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self.retries: Counter = Counter(
            "flashsale_task_retries_total",
            "Order task retries, by cause.",
            ["cause"],
            registry=None,
        )
        self.relayed: Counter = Counter(
            "flashsale_relay_publications_total",
            "Orders the intake relay published: kind published (their publish after "
            "commit had failed) or republished (their message may have been lost).",
            ["kind"],
            registry=None,
        )
        # Pre-set the fixed label sets to 0 so every series exists from the start
        # (rate() and absent() need them) and a scrape shows every metric at once.
        for node in node_names:
            self.node_up.labels(node=node)
            for kind in NODE_ERROR_KINDS:
                self.node_errors.labels(node=node, kind=kind)
        for outcome in ACQUIRE_OUTCOMES:
            self.acquire_seconds.labels(outcome=outcome)
        for cause in RETRY_CAUSES:
            self.retries.labels(cause=cause)
        self.orders.labels(status="confirmed", reason="")
        for kind in ("published", "republished"):
            self.relayed.labels(kind=kind)

    # --- OrderEvents (tasks.events, interface B) ---------------------------------

    def lock_acquired(self, duration_s: float, outcome: str) -> None:
        """Record one acquire sequence of the order path and its outcome."""
        self.acquire_seconds.labels(outcome=outcome).observe(duration_s)
        if outcome == "unavailable":
            self.quorum_failures.inc()

    def order_decided(self, status: str, reason: str | None, age_s: float | None) -> None:
        """Count one order this process decided; observe its age when known."""
        self.orders.labels(status=status, reason=reason or "").inc()
        if age_s is not None:
            self.decision_seconds.observe(max(0.0, age_s))

    def settlement_batch(self, orders: int) -> None:
        """Observe how many orders one lock holder decided in one settlement."""
        self.batch_orders.observe(orders)

    def task_retry(self, cause: str) -> None:
        """Count one retry of the order task by ``cause``."""
        self.retries.labels(cause=cause).inc()

    def orders_relayed(self, published: int, republished: int) -> None:
        """Count the orders one relay round published and republished."""
        if published:
            self.relayed.labels(kind="published").inc(published)
        if republished:
            self.relayed.labels(kind="republished").inc(republished)

    # --- Redlock(on_node_error=...) (interface A) ---------------------------------

    def node_error(self, error: HasNodeError) -> None:
        """Count one node error of a lock round by node and ``error.kind``."""
        self.node_errors.labels(node=error.node, kind=error.kind).inc()

    # --- the main process's probe ---------------------------------------------------

    def set_node_up(self, node: str, up: bool) -> None:
        """Set ``flashsale_lock_node_up`` of ``node``."""
        self.node_up.labels(node=node).set(1 if up else 0)
