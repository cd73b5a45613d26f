"""Scenario 11: the workers' broker connections drop, again and again, mid-sale.

The workers reach the broker through a `TcpProxy`; the producer connects
directly. While orders arrive (paced), the proxy drops every worker connection
several times: instant cuts (the broker is reachable again at once), and 1 s
and 3 s blips (connections reset and new ones refused, then healed). Nothing restarts.
On Redis and on RabbitMQ: no worker process may end, every order is decided,
nothing is oversold or moved twice. Measured: the time from each heal to the
next decided order (the consumer's reconnect), and until every order was
decided.

Redis's transport pops a message (BRPOP) before it records it as unacked, so a
message on the wire when a connection drops can vanish; the test reports any
order lost that way and asserts only what holds today: at most one lost per
worker connection and cut, none stuck, the rest decided once (the intake record
closes that gap). A message whose ack
failed ("Couldn't ack") stays in the unacked hash until the visibility timeout
(10 s here), then runs again (the task is idempotent). RabbitMQ requeues every
unacknowledged message the moment the connection closes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine

from tests.chaos.figures import ANY_ID_SQL, assert_sound, decided_ids, scalar_rows
from tests.chaos.harness import (
    SHORT_LIMITS,
    FlashSale,
    broker_backlog,
    log_lines,
    stock_for,
    wait_until,
)
from tests.chaos.report import Recorder
from tests.rabbitmq import amqp_url, queue_backlog
from tests.sale import check_invariants
from tests.tcp_proxy import TcpProxy
from worker.demo.stack import LocalStack

ORDERS = 500
#: Orders keep arriving for 25 s, past the last heal (~20 s in), so that the time to
#: the next decided order measures the reconnect, not the end of the sale.
RATE_PER_S = 20.0
#: Rounds of (instant cut, pause, blip) once a quarter of the orders is decided. A 3 s
#: blip makes several reconnect attempts fail in a row, where Celery's own backoff
#: (2 s, then 4 s...) stalled consumption for seconds after the heal.
BLIPS_S = (1.0, 3.0, 1.0, 3.0)
PAUSE_S = 0.5
#: The README's promise: consumption resumes within about 1 s of the broker being back
#: (the next reconnect attempt is at most 0.5 s away); the bound leaves room for a
#: loaded machine (measured up to 2.3 s on a shared 2-core machine).
RECONNECT_BOUND_S = 3.0
#: Bound on the sale after the faults: a failed ack's message is back after the 10 s
#: visibility timeout and kombu's restore sweep (2.5 s), so 40 s leaves a wide margin.
FINISH_TIMEOUT_S = 40.0
WORKERS = 2


@dataclass
class Cuts:
    """What the proxy did and how fast the workers came back."""

    cuts: int = 0
    connections_dropped: int = 0
    resumed_s: list[float] = field(default_factory=list)


def cut_repeatedly(proxy: TcpProxy, sale: FlashSale) -> Cuts:
    """Drop every worker connection two ways per blip of `BLIPS_S`; time each recovery."""
    seen = Cuts()
    for blip_s in BLIPS_S:
        seen.connections_dropped += proxy.cut()
        seen.cuts += 1
        time.sleep(PAUSE_S)
        proxy.partition(refuse=True)
        seen.cuts += 1
        time.sleep(blip_s)
        before = sale.decided()
        assert before < len(sale.ids), "the sale ended before the faults: nothing to measure"
        proxy.heal()
        healed_s = time.monotonic()

        def more_decided(before: int = before) -> bool:
            return sale.decided() > before

        wait_until(
            more_decided,
            timeout_s=60,
            what="an order decided",
            poll_s=0.02,
        )
        seen.resumed_s.append(round(time.monotonic() - healed_s, 2))
        time.sleep(PAUSE_S)
    return seen


def decision_span_s(engine: Engine, ids: list[str]) -> float:
    """Seconds from the first order's creation to the last decision among ``ids``."""
    sql = (
        "SELECT extract(epoch FROM max(decided_at) - min(created_at)) FROM orders "
        f"WHERE id = {ANY_ID_SQL}"
    )
    return round(float(scalar_rows(engine, sql, ids=ids)[0][0] or 0.0), 1)


def worker_url(stack: LocalStack, proxy: TcpProxy) -> str:
    """The stack's broker URL with the proxy's address in place of the broker's."""
    url = stack.env["CELERY_BROKER_URL"]
    if url.startswith("amqp"):
        return amqp_url(url.rsplit("/", 1)[1], proxy.address)
    return proxy.url("redis", "/0")


def backlog(stack: LocalStack) -> tuple[int, int]:
    url = stack.env["CELERY_BROKER_URL"]
    return queue_backlog(url.rsplit("/", 1)[1]) if url.startswith("amqp") else broker_backlog(stack)


def wait_drained(stack: LocalStack, timeout_s: float = 30.0) -> tuple[int, int]:
    """Wait (bounded) until the broker holds no message; return what it holds then."""
    deadline = time.monotonic() + timeout_s
    while (left := backlog(stack)) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_worker_broker_connections_cut_repeatedly_mid_sale(
    kind: str, request: pytest.FixtureRequest, observer: Engine, reliability: Recorder
) -> None:
    stack: LocalStack = request.getfixturevalue("stack" if kind == "redis" else "amqp_stack")
    if kind == "redis":
        assert stack.broker is not None
        target = ("127.0.0.1", stack.broker.port)
    else:
        host, port = stack.env["CELERY_BROKER_URL"].split("@")[1].split("/")[0].split(":")
        target = (host, int(port))
    with TcpProxy(*target) as proxy:
        env = {**SHORT_LIMITS, "CELERY_BROKER_URL": worker_url(stack, proxy)}
        sale = FlashSale(stack, observer, orders=ORDERS, stock=stock_for(ORDERS))
        sale.start_workers(WORKERS, env=env)
        sale.open(rate_per_s=RATE_PER_S)
        sale.wait_decided(0.25)
        seen = cut_repeatedly(proxy, sale)
        result = sale.finish(timeout_s=FINISH_TIMEOUT_S)
        # Redeliveries of decided orders (failed acks) drain through the proxy too.
        drained = wait_drained(stack)
        alive = [worker.process.poll() is None for worker in stack.workers]
    unacked = log_lines(stack.workers, "Couldn't ack")
    died = log_lines(stack.workers, "Unrecoverable error")
    reliability.record(
        f"11-broker-links-cut-{kind}",
        f"Worker-side broker connections dropped {seen.cuts} times mid-sale ({kind})",
        result,
        notes=(
            f"{seen.connections_dropped} connections cut at once x {len(BLIPS_S)}, "
            f"blips of {'/'.join(f'{b:.0f}' for b in BLIPS_S)} s; consumption resumed "
            f"{min(seen.resumed_s)}-{max(seen.resumed_s)} s after each heal; "
            f"orders decided within {decision_span_s(observer, sale.ids)} s of the first; "
            f"{unacked} acks failed"
        ),
        resumed_s_after_heal=seen.resumed_s,
        decided_within_s=decision_span_s(observer, sale.ids),
        failed_acks=unacked,
        broker_backlog_after=drained,
        reasons=sale.reasons(),
    )
    assert all(alive) and not died, "a worker process ended with the broker connection"
    assert drained == (0, 0), f"messages left on the broker: {drained}"
    assert max(seen.resumed_s) < RECONNECT_BOUND_S, seen.resumed_s
    if kind == "rabbitmq":
        assert_sound(observer, sale.ids, result)
        return
    # Redis: what the code guarantees today. A message popped by BRPOP while its reply
    # was on the wire is gone (the broker is empty, checked above): at most one per
    # worker connection and cut. Everything else is decided, once, without oversell.
    assert result.lost <= seen.cuts * WORKERS, result
    assert (result.oversold, result.duplicates) == (0, 0), result
    check_invariants(observer, decided_ids(observer, sale.ids))
