"""`tasks.producer`: what a web app enqueues on a real broker, and how it reads orders back."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from tasks.errors import BrokerUnavailable, InvalidOrder
from tasks.models import OrderStatus
from tasks.producer import get_order, submit_order
from tasks.validation import TASK_NAME
from tests.domain import record_pending, request
from tests.sale import producer
from worker.demo.redis_server import RedisServer, free_port


@pytest.fixture
def queue() -> str:
    """A queue name of this test alone, on the shared broker."""
    return f"orders-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app(broker: RedisServer, queue: str) -> Iterator[Celery]:
    with producer(broker.url) as client:
        client.conf.task_default_queue = queue
        yield client


def queued(broker: RedisServer, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """Return (task name, kwargs) of every message waiting in ``queue``."""
    with redis.Redis(port=broker.port) as client:
        raw = client.lrange(queue, 0, -1)
    messages = [json.loads(item) for item in raw]
    return [
        (message["headers"]["task"], json.loads(base64.b64decode(message["body"]))[1])
        for message in messages
    ]


def test_an_order_is_sent_by_task_name_with_json_kwargs(
    app: Celery, broker: RedisServer, queue: str
) -> None:
    order_id = submit_order(app, customer_id="c1", items=[{"sku": "A", "quantity": 2}])
    assert uuid.UUID(order_id)
    assert queued(broker, queue) == [
        (
            TASK_NAME,
            {"order_id": order_id, "customer_id": "c1", "items": [{"sku": "A", "quantity": 2}]},
        )
    ]


def test_a_given_order_id_is_kept_for_a_safe_resubmit(
    app: Celery, broker: RedisServer, queue: str
) -> None:
    order_id = str(uuid.uuid4())
    items = [{"sku": "A", "quantity": 1}]
    sent = [submit_order(app, customer_id="c1", items=items, order_id=order_id) for _ in range(2)]
    assert sent == [order_id, order_id]
    assert [kwargs["order_id"] for _, kwargs in queued(broker, queue)] == [order_id, order_id]


@pytest.mark.parametrize(
    ("items", "reason"),
    [([], "empty_cart"), ([{"sku": "A", "quantity": 0}], "invalid_quantity")],
)
def test_an_invalid_order_is_refused_locally_and_not_sent(
    app: Celery, broker: RedisServer, queue: str, items: list[dict[str, Any]], reason: str
) -> None:
    with pytest.raises(InvalidOrder) as caught:
        submit_order(app, customer_id="c1", items=items)
    assert caught.value.reason == reason
    assert queued(broker, queue) == []


def test_an_unreachable_broker_is_reported_as_unavailable() -> None:
    with producer(f"redis://127.0.0.1:{free_port()}/0") as app, pytest.raises(BrokerUnavailable):
        submit_order(app, customer_id="c1", items=[{"sku": "A", "quantity": 1}])


def test_get_order_reads_an_order_and_its_sorted_items(
    sessions: sessionmaker[Session],
) -> None:
    order = request({"B": 1, "A": 3}, customer="alice")
    with sessions.begin() as session:
        record_pending(session, order)
    with sessions() as session:
        by_text = get_order(session, str(order.order_id))
        by_uuid = get_order(session, order.order_id)
    assert by_text == by_uuid
    assert by_text is not None
    assert (by_text.order_id, by_text.customer_id, by_text.status, by_text.reason) == (
        str(order.order_id),
        "alice",
        OrderStatus.PENDING,
        None,
    )
    assert by_text.items == (("A", 3), ("B", 1))
    assert by_text.created_at is not None
    assert by_text.decided_at is None


def test_get_order_of_an_unknown_id_is_none(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert get_order(session, uuid.uuid4()) is None
