"""Scenario 13: orders taken through the intake record, whatever the broker does.

The web app stores each order in its own transaction (``submit_order(...,
session=...)``) and publishes after the commit; Celery beat runs the relay every
second here (``INTAKE_REPUBLISH_AFTER_S`` 5 s). Three brokers that lose
messages, each with 0 lost, 0 oversold, 0 duplicated:

- the Redis broker (AOF) SIGKILLed and restarted three times while workers
  consume (kombu pops a message before it records it as unacked: the one in
  flight can vanish; its order is still ``accepted`` or ``pending`` in the database);
- the web app's connection to the broker refused while it submits: every
  submission succeeds, and the relay publishes them when the link is back;
- a broker without persistence restarted empty with the whole sale queued (the
  workers start after it): the relay publishes every order once more, and only
  once (the queue is shorter than the candidates).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress

import pytest
from celery import Celery
from sqlalchemy import Engine, func, select

from tasks.db import create_db_engine, session_factory
from tasks.models import ORDERS
from tasks.producer import submit_order
from tests.chaos.figures import Figures, assert_sound
from tests.chaos.harness import SHORT_LIMITS, FlashSale, broker_backlog, stock_for, wait_until
from tests.chaos.report import Recorder
from tests.chaos.test_broker import use_aof
from tests.sale import producer
from tests.spawners import kill_server
from tests.tcp_proxy import TcpProxy
from worker.demo.stack import LocalStack

ORDERS_PER_SALE = 300
STOCK = stock_for(ORDERS_PER_SALE)
RELAY_ENV = {"INTAKE_RELAY_INTERVAL_S": "1", "INTAKE_REPUBLISH_AFTER_S": "5"}
WORKER_ENV = {**SHORT_LIMITS, **RELAY_ENV}
#: A web request whose publish fails after the commit returns within this.
SUBMIT_BOUND_S = 3.0


@pytest.fixture
def web_engine(database_url: str) -> Iterator[Engine]:
    """The web app's own engine (a pool, as a web app has)."""
    engine = create_db_engine(database_url, pool_size=2)
    yield engine
    engine.dispose()


class Web:
    """The web app: submits the sale's carts through the intake record, paced, in a thread."""

    def __init__(self, sale: FlashSale, engine: Engine, broker_url: str) -> None:
        self.sale = sale
        self.sessions = session_factory(engine)
        self.broker_url = broker_url
        self.submitted = 0
        self.slowest_s = 0.0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, app: Celery, cart: dict[str, object]) -> None:
        started_s = time.monotonic()
        with self.sessions.begin() as session:
            submit_order(
                app,
                customer_id=str(cart["customer_id"]),
                items=cart["items"],  # type: ignore[arg-type]
                order_id=str(cart["order_id"]),
                session=session,
            )
        self.slowest_s = max(self.slowest_s, time.monotonic() - started_s)
        self.submitted += 1

    def open(self, *, rate_per_s: float | None = None) -> None:
        self.sale.opened_s = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(rate_per_s,), daemon=True)
        self._thread.start()

    def join(self, timeout_s: float = 120.0) -> None:
        assert self._thread is not None
        self._thread.join(timeout_s)
        assert self.error is None, f"a submission failed: {self.error!r}"
        assert self.submitted == len(self.sale.payloads)

    def _run(self, rate_per_s: float | None) -> None:
        try:
            with producer(self.broker_url) as app:
                for sent, cart in enumerate(self.sale.payloads):
                    if rate_per_s:
                        delay_s = self.sale.opened_s + sent / rate_per_s - time.monotonic()
                        if delay_s > 0:
                            time.sleep(delay_s)
                    self.submit(app, cart)
        except BaseException as error:  # re-raised by join(), in the test's thread
            self.error = error


def relayed(engine: Engine, ids: list[str]) -> tuple[int, int]:
    """(orders the relay published, publications by the relay) among ``ids``."""
    keys = [uuid.UUID(order_id) for order_id in ids]
    with engine.connect() as connection:
        orders, total = connection.execute(
            select(
                func.count().filter(ORDERS.c.republications > 0),
                func.coalesce(func.sum(ORDERS.c.republications), 0),
            ).where(ORDERS.c.id.in_(keys))
        ).one()
    return int(orders), int(total)


def undecided(engine: Engine, ids: list[str]) -> list[str]:
    """What the database says of up to 5 orders still open (for the report of a failure)."""
    keys = [uuid.UUID(order_id) for order_id in ids]
    columns = (ORDERS.c.id, ORDERS.c.status, ORDERS.c.attempts, ORDERS.c.republications,
               ORDERS.c.created_at, ORDERS.c.published_at, ORDERS.c.delivered_at)  # fmt: skip
    with engine.connect() as connection:
        rows = connection.execute(
            select(*columns)
            .where(ORDERS.c.id.in_(keys), ORDERS.c.status.in_(["accepted", "pending"]))
            .limit(5)
        ).all()
    return [" ".join(str(value) for value in row) for row in rows]


def open_orders(engine: Engine, ids: list[str]) -> dict[str, list[str]]:
    """``{"undecided": [...]}`` when orders are still open, else nothing (report metrics)."""
    left = undecided(engine, ids)
    return {"undecided": left} if left else {}


def run_sale(
    stack: LocalStack,
    observer: Engine,
    web_engine: Engine,
    fault: Callable[[FlashSale, Web], object],
    *,
    web_broker_url: str | None = None,
    rate_per_s: float | None = 60.0,
    workers_first: bool = True,
) -> tuple[FlashSale, Web, Figures, float]:
    """Start 2 workers and beat, submit the sale, inject ``fault``, wait for every decision.

    :param workers_first: start the workers before the sale (else after the fault).
    Return the sale, the web app, the figures and seconds from the end of the fault
    until every order was decided.
    """
    sale = FlashSale(stack, observer, orders=ORDERS_PER_SALE, stock=STOCK, seed=13)
    if workers_first:
        sale.start_workers(2, concurrency=2, env=WORKER_ENV)
        stack.start_beat(extra_env=WORKER_ENV)
    web = Web(sale, web_engine, web_broker_url or sale.broker_url)
    web.open(rate_per_s=rate_per_s)
    fault(sale, web)
    fault_over_s = time.monotonic()
    if not workers_first:
        sale.start_workers(2, concurrency=2, env=WORKER_ENV)
        stack.start_beat(extra_env=WORKER_ENV)
    web.join()
    result = sale.finish()
    return sale, web, result, round(time.monotonic() - fault_over_s, 1)


def test_redis_broker_killed_and_restarted_while_workers_consume(
    stack: LocalStack, observer: Engine, web_engine: Engine, reliability: Recorder
) -> None:
    use_aof(stack.broker)
    assert stack.broker is not None
    broker = stack.broker

    def restarts(sale: FlashSale, _: Web) -> None:
        sale.wait_decided(0.15)
        for _restart in range(3):  # `_` is the Web argument above
            kill_server(broker)
            time.sleep(1.0)
            broker.start()
            time.sleep(1.5)

    sale, web, result, decided_after_s = run_sale(stack, observer, web_engine, restarts)
    orders, publications = relayed(observer, sale.ids)
    alive = all(worker.process.poll() is None for worker in stack.workers)
    reliability.record(
        "13-intake-broker-killed",
        "Broker (AOF) SIGKILLed and restarted 3 times while workers consume; intake record",
        result,
        notes=(
            f"{orders} orders relayed ({publications} publications); every order decided "
            f"{decided_after_s} s after the last restart"
        ),
        relayed_orders=orders,
        relay_publications=publications,
        decided_s_after_fault=decided_after_s,
        **open_orders(observer, sale.ids),
        slowest_submit_s=round(web.slowest_s, 2),
        workers_alive=alive,
    )
    assert_sound(observer, sale.ids, result)
    # A late ack after a reconnect once ended a worker here (kombu raised
    # AttributeError from its ack path); worker.consumer now survives it.
    dead = [worker for worker in stack.workers if worker.process.poll() is not None]
    assert not dead, "a worker process ended with the broker:\n" + "\n".join(
        worker.log()[-4000:] for worker in dead
    )
    assert web.slowest_s < SUBMIT_BOUND_S


def test_the_web_apps_broker_link_down_while_it_submits(
    stack: LocalStack, observer: Engine, web_engine: Engine, reliability: Recorder
) -> None:
    assert stack.broker is not None
    with TcpProxy("127.0.0.1", stack.broker.port) as link:
        down_at: list[int] = []

        def link_down(_: FlashSale, web: Web) -> None:
            wait_until(lambda: web.submitted >= 60, timeout_s=60, what="60 submissions")
            link.partition(refuse=True)
            with suppress(Exception):
                link.cut()
            down_at.append(web.submitted)
            wait_until(lambda: web.submitted >= 240, timeout_s=60, what="240 submissions")
            down_at.append(web.submitted)
            link.heal()

        sale, web, result, decided_after_s = run_sale(
            stack, observer, web_engine, link_down, web_broker_url=link.url("redis", "/0")
        )
    orders, publications = relayed(observer, sale.ids)
    reliability.record(
        "13-intake-web-link-down",
        "The web app's broker link refused while it submits; intake record",
        result,
        notes=(
            f"all {web.submitted} submissions succeeded ({down_at[1] - down_at[0]} with the "
            f"link down, slowest {web.slowest_s:.2f} s); {orders} orders relayed; every order "
            f"decided {decided_after_s} s after the link was back"
        ),
        submitted_with_link_down=down_at[1] - down_at[0],
        relayed_orders=orders,
        relay_publications=publications,
        decided_s_after_fault=decided_after_s,
        **open_orders(observer, sale.ids),
        slowest_submit_s=round(web.slowest_s, 2),
    )
    assert_sound(observer, sale.ids, result)
    assert orders >= down_at[1] - down_at[0] - 1, "orders taken with the link down not relayed"
    assert web.slowest_s < SUBMIT_BOUND_S


def test_a_broker_restarted_empty_loses_its_queue_and_the_relay_refills_it(
    stack: LocalStack, observer: Engine, web_engine: Engine, reliability: Recorder
) -> None:
    assert stack.broker is not None and not stack.broker.appendonly
    broker = stack.broker
    lost_queue: list[int] = []

    def wipe(_: FlashSale, web: Web) -> None:
        web.join()  # the whole sale is queued, then lost
        lost_queue.append(sum(broker_backlog(stack)))
        kill_server(broker)
        broker.start()

    sale, _web, result, decided_after_s = run_sale(
        stack, observer, web_engine, wipe, rate_per_s=None, workers_first=False
    )
    orders, publications = relayed(observer, sale.ids)
    reliability.record(
        "13-intake-queue-lost",
        "Broker without persistence restarted empty with the sale queued; intake record",
        result,
        notes=(
            f"{lost_queue[0]} messages lost with the queue; {orders} orders relayed "
            f"({publications} publications); every order decided {decided_after_s} s after "
            "the restart"
        ),
        messages_lost=lost_queue[0],
        relayed_orders=orders,
        relay_publications=publications,
        decided_s_after_fault=decided_after_s,
        **open_orders(observer, sale.ids),
    )
    assert_sound(observer, sale.ids, result)
    assert lost_queue[0] == ORDERS_PER_SALE
    assert (orders, publications) == (ORDERS_PER_SALE, ORDERS_PER_SALE), "lost, or amplified"
