"""A worker started as Compose and the Procfile start it survives broker cuts during start-up.

``celery -A worker worker`` without ``--without-mingle``/``--without-gossip`` (the
production command lines), reaching the Redis broker through a `TcpProxy` that
drops every connection every `CUT_EVERY_S` while the worker starts (mingle
included), then stops cutting. The worker must still be running and must then
decide an order. Before the project's consumer left out mingle and gossip, a cut
during mingle ended the worker (``Unrecoverable error: OperationalError``).
"""

from __future__ import annotations

import sys
import time

from sqlalchemy import Engine

from tests.domain import payload, status
from tests.sale import enqueue, producer, seed_products, wait_until_decided
from tests.tcp_proxy import TcpProxy
from worker.demo.stack import LocalStack

CUT_EVERY_S = 0.15
CUTTING_S = 6.0


def test_a_worker_survives_broker_cuts_while_it_starts(stack: LocalStack, engine: Engine) -> None:
    assert stack.broker is not None
    seed_products(engine, {"A": 5})
    with TcpProxy("127.0.0.1", stack.broker.port) as proxy:
        command = [
            sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=prefork",
            "--concurrency=1", "--loglevel=INFO", "--hostname=blip@%h",
        ]  # fmt: skip
        original = stack.env["CELERY_BROKER_URL"]
        stack.env["CELERY_BROKER_URL"] = proxy.url("redis", "/0")
        try:
            worker = stack.start_process(command, log_name="blip.log")
        finally:
            stack.env["CELERY_BROKER_URL"] = original
        cuts = 0
        deadline = time.monotonic() + CUTTING_S
        while time.monotonic() < deadline and worker.poll() is None:
            time.sleep(CUT_EVERY_S)
            cuts += proxy.cut()
        log = (stack.workdir / "blip.log").read_text(errors="replace")
        assert worker.poll() is None, (
            f"the worker exited ({worker.returncode}) after {cuts} cuts:\n{log[-3000:]}"
        )
        assert cuts > 0, "no broker connection was ever cut: the test proved nothing"
        order = payload({"A": 1})
        with producer(original) as client:
            enqueue(client, [order])
        wait_until_decided(engine, [order["order_id"]], timeout_s=30)
    assert status(engine, order["order_id"]) == "confirmed"
    assert worker.poll() is None
