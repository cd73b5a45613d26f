"""Flower against a real worker: it lists the worker and the order, behind basic auth only.

The broker and the lock nodes require passwords here, so the test can also show
that neither password reaches Flower's pages.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from tasks.producer import submit_order
from tests.sale import seed_products, wait_until_decided
from worker.demo.flower import basic_auth_header, flower_command, wait_until_answering
from worker.demo.redis_server import RedisServer, free_port
from worker.demo.shoppers import web_client
from worker.demo.stack import LocalStack

BROKER_PASSWORD = "broker-pw-5fd2a9"
LOCK_PASSWORD = "lock-pw-81c7e0"
CREDENTIALS = "ops:flower-pw-3b1d"
POLL_TIMEOUT_S = 30.0


@pytest.fixture
def secured_stack(database_url: str) -> Iterator[LocalStack]:
    """Three password-protected lock nodes and a password-protected broker."""
    with LocalStack(env={"DATABASE_URL": database_url}) as stack:
        stack.start_lock_nodes(3, password=LOCK_PASSWORD)
        stack.broker = RedisServer(password=BROKER_PASSWORD).start()
        stack.env["CELERY_BROKER_URL"] = stack.broker.url
        yield stack


def _get(url: str, credentials: str | None = CREDENTIALS) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", basic_auth_header(credentials))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")


def _poll(what: str, probe: Callable[[], Any], timeout_s: float = POLL_TIMEOUT_S) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not seen within {timeout_s} s")


@pytest.mark.slow
def test_flower_shows_worker_and_order_to_authenticated_users_only(
    secured_stack: LocalStack, engine: Engine
) -> None:
    stack = secured_stack
    seed_products(engine, {"FLOWER-SKU": 5})
    worker = stack.start_worker(concurrency=1)
    port = free_port()
    flower = stack.start_process(
        [*flower_command(port), f"--basic-auth={CREDENTIALS}"], log_name="flower.log"
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(flower, f"{base}/api/workers", timeout_s=POLL_TIMEOUT_S)

    # Flower lists the worker once its inspect round trip through the broker works.
    def worker_listed() -> dict[str, Any] | None:
        status, body = _get(f"{base}/api/workers?refresh=1")
        workers = json.loads(body) if status == 200 else {}
        return workers if any(name.startswith(f"{worker.name}@") for name in workers) else None

    workers_body = json.dumps(_poll("worker in /api/workers", worker_listed))

    app = web_client(stack.env["CELERY_BROKER_URL"], send_sent_events=True)
    try:
        order_id = submit_order(
            app, customer_id="flower-customer", items=[{"sku": "FLOWER-SKU", "quantity": 2}]
        )
    finally:
        app.close()
    wait_until_decided(engine, [order_id], timeout_s=POLL_TIMEOUT_S)

    def order_task() -> dict[str, Any] | None:
        status, body = _get(f"{base}/api/tasks?limit=100")
        tasks = json.loads(body) if status == 200 else {}
        for task in tasks.values():
            if order_id in str(task.get("kwargs")) and task.get("state") == "SUCCESS":
                return dict(task)
        return None

    task = _poll("order task SUCCESS in /api/tasks", order_task)
    assert task["name"] == "tasks.place_order"
    kwargs = str(task["kwargs"])
    assert "flower-customer" in kwargs and "FLOWER-SKU" in kwargs and "quantity" in kwargs
    assert "confirmed" in str(task["result"])

    # Without credentials, or with wrong ones, the API is refused.
    for path in ("/", "/api/workers", "/api/tasks", f"/api/task/info/{task['uuid']}"):
        assert _get(base + path, credentials=None)[0] == 401, path
        assert _get(base + path, credentials="ops:wrong")[0] == 401, path

    # No password of the broker or the lock nodes in anything Flower shows.
    pages = [workers_body]
    for path in ("/api/tasks", f"/api/task/info/{task['uuid']}", f"/task/{task['uuid']}"):
        status, body = _get(base + path)
        assert status == 200, path
        pages.append(body)
    for page in pages:
        assert BROKER_PASSWORD not in page
        assert LOCK_PASSWORD not in page

    # /metrics and /healthcheck are open by Flower's design (README, "Operations"):
    # anonymous requests get them, and they show counts per task name and worker,
    # never an order's kwargs, its customer, its result or a password.
    status, metrics = _get(f"{base}/metrics", credentials=None)
    assert status == 200
    assert "flower_events_total" in metrics and f"{worker.name}@" in metrics
    for secret in (order_id, "flower-customer", BROKER_PASSWORD, LOCK_PASSWORD, "confirmed"):
        assert secret not in metrics, secret
    assert _get(f"{base}/healthcheck", credentials=None) == (200, "OK")
