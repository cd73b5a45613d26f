"""The flash sale every chaos scenario breaks, and the figures it is judged by.

A sale: `STOCK` of four SKUs (a hot one that sells out early, three that sell
out late), `ORDERS` random carts of one to three lines, real ``celery worker``
processes of a `LocalStack` (2 x 2 by default), the orders enqueued up front (or
paced, or from several threads). A scenario waits until a share of the orders is
decided, injects its fault, and calls `FlashSale.finish`, which waits (bounded)
and returns `Figures` read from the database alone, so that a broken run still
has numbers to report before its assertions fail.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import redis
from sqlalchemy import Engine

from tests.chaos.figures import ANY_ID_SQL, Figures, figures, scalar_rows
from tests.sale import enqueue, producer, random_carts, seed_products
from worker.demo.stack import LocalStack, WorkerProcess

#: Orders per scenario (2,000 by default; raise it for a longer soak).
ORDERS = int(os.environ.get("CHAOS_ORDERS", "2000"))


def stock_for(orders: int) -> dict[str, int]:
    """Stock per SKU for a sale of ``orders`` random carts.

    Demand is ~1 unit per SKU per order: HOT sells out early, the others late.
    """
    return {"HOT": orders // 5, "A": orders // 2, "B": orders // 2, "C": orders // 2}


STOCK = stock_for(ORDERS)
#: Bound on waiting for a whole sale to be decided.
SALE_TIMEOUT_S = 150.0
#: Worker limits short enough for a lost message to come back within a test.
SHORT_LIMITS = {
    "BROKER_VISIBILITY_TIMEOUT_S": "10",
    "TASK_TIME_LIMIT_S": "5",
    "TASK_SOFT_TIME_LIMIT_S": "4",
    "ORDER_RETRY_MAX_S": "1",
}
#: Bound on the broker emptying after a sale: requeued messages and retries run in seconds.
DRAIN_TIMEOUT_S = 30.0
#: Share of the orders decided when a scenario injects its fault.
FAULT_AT = 0.25
T = TypeVar("T")


def wait_until(
    condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def log_lines(workers: Iterable[WorkerProcess], needle: str) -> int:
    """Count how often ``needle`` occurs in the workers' logs (one log line each, in use)."""
    return sum(worker.log().count(needle) for worker in workers)


def broker_backlog(stack: LocalStack) -> tuple[int, int]:
    """(messages queued, messages delivered but never acknowledged) on the broker."""
    assert stack.broker is not None
    with redis.Redis(host="127.0.0.1", port=stack.broker.port) as client:
        return int(client.llen("celery")), int(client.hlen("unacked"))


def drain(stack: LocalStack, timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait (bounded) until the broker holds no message; return how long that took."""
    started_s = time.monotonic()
    while broker_backlog(stack) != (0, 0) and time.monotonic() - started_s < timeout_s:
        time.sleep(0.5)
    return round(time.monotonic() - started_s, 1)


def vm_rss_kb(pid: int) -> int:
    """Return the resident set size of ``pid`` in kB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class FlashSale:
    """One sale on a `LocalStack`: seed, start workers, enqueue, wait, measure.

    :param stack: lock nodes and broker already started, DATABASE_URL set.
    :param engine: the test's observer engine on the same database.
    :param orders: how many orders to sell.
    :param stock: stock per SKU (default `STOCK`).
    """

    def __init__(
        self,
        stack: LocalStack,
        engine: Engine,
        *,
        orders: int = ORDERS,
        stock: Mapping[str, int] | None = None,
        seed: int = 7,
    ) -> None:
        self.stack = stack
        self.engine = engine
        self.stock = dict(stock or STOCK)
        seed_products(engine, self.stock)
        self.payloads = random_carts(orders, list(self.stock), max_lines=3, seed=seed)
        self.ids = [str(payload["order_id"]) for payload in self.payloads]
        self.opened_s = 0.0
        self.enqueued_s = 0.0
        self.elapsed_s = 0.0
        self._pacer: threading.Thread | None = None
        self._pacer_error: BaseException | None = None

    def start_workers(
        self,
        count: int = 2,
        *,
        concurrency: int = 2,
        env: Mapping[str, str] | None = None,
        loglevel: str = "WARNING",
    ) -> list[WorkerProcess]:
        """Start ``count`` workers of ``concurrency`` processes each, in parallel."""
        workers = [
            self.stack.start_worker(
                concurrency=concurrency, extra_env=env, loglevel=loglevel, wait=False
            )
            for _ in range(count)
        ]
        for worker in workers:
            self.stack.wait_ready(worker)
        return workers

    def run(
        self,
        fault: Callable[[], T],
        *,
        at: float = FAULT_AT,
        workers: int = 2,
        concurrency: int = 2,
        env: Mapping[str, str] | None = None,
        rate_per_s: float | None = None,
        loglevel: str = "WARNING",
    ) -> tuple[Figures, T]:
        """Start the workers, enqueue, call ``fault()`` once ``at`` of the orders are decided.

        Return the figures after the sale (see `finish`) and what ``fault`` returned.
        """
        self.start_workers(workers, concurrency=concurrency, env=env, loglevel=loglevel)
        self.open(rate_per_s=rate_per_s)
        self.wait_decided(at)
        outcome = fault()
        return self.finish(), outcome

    def open(self, *, rate_per_s: float | None = None, threads: int = 1) -> None:
        """Enqueue every order of the sale: at once, or paced at ``rate_per_s`` in a thread.

        At once, ``threads`` producers (one Celery client each) share the orders.
        Paced, the queue stays short, so a fault meets orders as they arrive (as in a
        real sale) instead of a backlog whose retries queue behind it.
        """
        self.opened_s = time.monotonic()
        if rate_per_s is None:
            self._enqueue_in_threads(threads)
            return
        self._pacer = threading.Thread(
            target=self._paced, args=(rate_per_s,), name="chaos-producer", daemon=True
        )
        self._pacer.start()

    def _enqueue_in_threads(self, threads: int) -> None:
        errors: list[BaseException] = []

        def send(share: list[dict[str, object]]) -> None:
            try:
                with producer(self.broker_url) as app:
                    enqueue(app, share)
            except BaseException as error:  # re-raised below, in the test's thread
                errors.append(error)

        senders = [
            threading.Thread(target=send, args=(self.payloads[index::threads],), daemon=True)
            for index in range(threads)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(SALE_TIMEOUT_S)
        assert not errors, f"a producer thread failed: {errors[0]!r}"
        self.enqueued_s = time.monotonic() - self.opened_s

    def _paced(self, rate_per_s: float) -> None:
        try:
            with producer(self.broker_url) as app:
                for sent, payload in enumerate(self.payloads):
                    delay_s = self.opened_s + sent / rate_per_s - time.monotonic()
                    if delay_s > 0:
                        time.sleep(delay_s)
                    enqueue(app, [payload])
        except BaseException as error:  # reported by finish()
            self._pacer_error = error

    @property
    def broker_url(self) -> str:
        return self.stack.env["CELERY_BROKER_URL"]

    def decided(self) -> int:
        """How many of the sale's orders are no longer pending."""
        return int(scalar_rows(self.engine, _DECIDED_SQL, ids=self.ids)[0][0])

    def wait_decided(self, share: float, *, timeout_s: float = SALE_TIMEOUT_S) -> None:
        """Wait until ``share`` of the sale's orders are decided (the fault's trigger)."""
        goal = int(len(self.ids) * share)
        wait_until(
            lambda: self.decided() >= goal, timeout_s=timeout_s, what=f"{goal} decided orders"
        )

    def finish(self, *, timeout_s: float = SALE_TIMEOUT_S) -> Figures:
        """Wait (bounded) until every order is decided, then return the sale's figures."""
        goal = len(self.ids)
        deadline = time.monotonic() + timeout_s
        if self._pacer is not None:
            self._pacer.join(timeout_s)
        assert self._pacer_error is None, f"the paced producer failed: {self._pacer_error!r}"
        while self.decided() < goal and time.monotonic() < deadline:
            time.sleep(0.2)
        self.elapsed_s = time.monotonic() - self.opened_s
        return figures(self.engine, self.ids)

    def orders_per_s(self) -> float:
        """Decided orders per second from enqueue to the end of `finish`."""
        return round(len(self.ids) / self.elapsed_s, 1) if self.elapsed_s else 0.0

    def reasons(self) -> dict[str, int]:
        """Count the orders in the database by ``status:reason``."""
        return {
            f"{status}:{reason}": int(n)
            for status, reason, n in scalar_rows(
                self.engine, "SELECT status::text, reason, count(*) FROM orders GROUP BY 1, 2"
            )
        }


_DECIDED_SQL = (
    f"SELECT count(*) FROM orders WHERE status NOT IN ('pending', 'accepted') AND id = {ANY_ID_SQL}"
)
