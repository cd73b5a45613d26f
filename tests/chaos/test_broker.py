"""Scenario 6: the broker (a Redis server) restarts.

Decision: the broker runs with AOF (``appendonly yes``, ``appendfsync always``).
Without persistence a restart empties the queue, so every order accepted but not
yet consumed would be lost; with it, a queued order survives. While the broker
is down, ``submit_order`` raises `BrokerUnavailable` after its bounded publish
retries (nothing was enqueued; the caller may resubmit the same id); workers
reconnect on their own.

Two restarts: one while the whole sale is queued (no worker yet), one while the
workers are connected and idle. A restart while workers are consuming is
scenario 12 (tests/chaos/test_broker_restart.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine

from tasks.errors import BrokerUnavailable
from tasks.producer import submit_order
from tests.chaos.figures import assert_sound
from tests.chaos.harness import SHORT_LIMITS, FlashSale, broker_backlog, drain
from tests.chaos.report import Recorder
from worker import create_app
from worker.demo.redis_server import RedisServer
from worker.demo.stack import LocalStack
from worker.settings import Settings

OUTAGE_S = 3.0
#: How long the producer may take to report the broker down (its retries take ~1 s).
REFUSAL_BOUND_S = 10.0
CART = [{"sku": "A", "quantity": 1}]


@dataclass
class Outage:
    """What the producer saw around the broker's restart."""

    accepted_before: str = ""
    refused: BrokerUnavailable | None = None
    refused_after_s: float = 0.0
    accepted_after: str = ""


def restart_broker(stack: LocalStack, sale: FlashSale, *, submit_before: bool) -> Outage:
    """Stop the broker, submit (refused), start it on its port, submit (accepted).

    :param submit_before: also submit an order just before the broker stops.
    """
    assert stack.broker is not None
    app = create_app(Settings.from_env({"CELERY_BROKER_URL": sale.broker_url}))
    seen = Outage()
    try:
        if submit_before:
            seen.accepted_before = submit_order(app, customer_id="before", items=CART)
        stack.broker.stop()
        started_s = time.monotonic()
        try:
            submit_order(app, customer_id="during", items=CART, order_id=str(uuid.uuid4()))
        except BrokerUnavailable as error:
            seen.refused = error
        seen.refused_after_s = round(time.monotonic() - started_s, 2)
        time.sleep(max(0.0, OUTAGE_S - seen.refused_after_s))
        stack.broker.start()
        seen.accepted_after = submit_order(app, customer_id="after", items=CART)
    finally:
        app.close()
    sale.ids += [order_id for order_id in (seen.accepted_before, seen.accepted_after) if order_id]
    return seen


def use_aof(broker: RedisServer | None) -> None:
    """Restart the (still empty) broker with AOF persistence, on its port."""
    assert broker is not None
    broker.stop()
    broker.appendonly = True
    broker.start()


def test_broker_restarted_with_a_queued_sale_then_under_connected_workers(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    use_aof(stack.broker)
    sale = FlashSale(stack, observer)
    sale.open()
    queued = restart_broker(stack, sale, submit_before=True)
    sale.start_workers(env=SHORT_LIMITS)
    sale.wait_decided(1.0)
    drain(stack)  # nothing in flight: the workers are connected and idle
    idle = restart_broker(stack, sale, submit_before=False)
    result = sale.finish()
    drained_s = drain(stack)
    alive = [worker.process.poll() is None for worker in stack.workers]
    reliability.record(
        "6-broker-restarted",
        f"Broker (AOF) down {OUTAGE_S:.0f} s twice: sale queued, then workers connected",
        result,
        notes=(
            f"queued orders survived; submit_order refused with BrokerUnavailable after "
            f"{queued.refused_after_s} s / {idle.refused_after_s} s; workers reconnected. "
            "Restart while consuming: scenario 12"
        ),
        producer_refused_after_s=[queued.refused_after_s, idle.refused_after_s],
        broker_drained_s_after_sale=drained_s,
        reasons=sale.reasons(),
    )
    assert_sound(observer, sale.ids, result)
    for seen in (queued, idle):
        assert isinstance(seen.refused, BrokerUnavailable), "a submit during an outage went through"
        assert "broker" in str(seen.refused)
        assert seen.refused_after_s < REFUSAL_BOUND_S
    assert all(alive), "a worker died with the broker"
    assert broker_backlog(stack) == (0, 0)
