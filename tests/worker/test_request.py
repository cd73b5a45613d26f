"""A late ack on a broker connection Celery already collected does not end the worker.

The state is the one a chaos run logged before the worker exited: the broker is
gone, Celery's consumer has collected the connection (kombu drops the
transport's ``client``), the channel's client pool has been dropped, and then a
pool process reports its task done and the main process acks. kombu raises
``AttributeError`` from there, which Celery's ack does not catch. The message is
real, taken from a real redis-server broker through kombu.

kombu (and its ``symbol_by_name``) is unannotated: its calls carry a targeted
``type: ignore[no-untyped-call]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message
from kombu.utils.imports import symbol_by_name

from tasks.validation import TASK_NAME
from tests.spawners import kill_server, redis_servers
from worker.celery_app import create_app
from worker.demo.redis_server import RedisServer
from worker.settings import Settings


@pytest.fixture
def broker_server() -> Iterator[RedisServer]:
    """A broker of this test's own: the test kills it."""
    with redis_servers(1) as servers:
        yield servers[0]


def _taken_message(connection: Connection, app: Celery) -> Message:
    """Publish one task message with Celery's own producer, then take it unacked."""
    queue = Queue("orders", Exchange("orders"), "orders")  # type: ignore[no-untyped-call]
    app.send_task(TASK_NAME, kwargs={"order_id": "x"}, queue=queue, connection=connection)
    taken: list[Message] = []
    consumer = connection.Consumer(queue, no_ack=False, accept=["json"])  # type: ignore[no-untyped-call]
    consumer.register_callback(lambda _body, message: taken.append(message))
    consumer.consume()
    while not taken:
        connection.drain_events(timeout=5)  # type: ignore[no-untyped-call]
    return taken[0]


def _collected_after_broker_loss(
    connection: Connection, message: Message, server: RedisServer
) -> None:
    """Lose the broker and clean up as Celery's consumer does after a connection error."""
    kill_server(server)
    connection.collect(socket_timeout=0.1)  # type: ignore[no-untyped-call]
    # kombu drops a channel's client pool on reconnect paths; the next use rebuilds
    # it from the transport, whose client the collect above removed.
    message.channel._disconnect_pools()


def test_a_late_ack_on_a_collected_connection_is_logged_not_raised(
    broker_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(broker_url=broker_server.url))
    connection = Connection(broker_server.url)  # type: ignore[no-untyped-call]
    app.loader.import_default_modules()
    message = _taken_message(connection, app)
    # The request class the worker builds for this app's order task.
    request_class = symbol_by_name(app.tasks[TASK_NAME].Request)  # type: ignore[no-untyped-call]
    request = request_class(
        message,
        on_ack=message.ack_log_error,
        on_reject=message.reject_log_error,
        app=app,
        task=app.tasks[TASK_NAME],
        connection_errors=connection.connection_errors,
    )
    _collected_after_broker_loss(connection, message, broker_server)
    with caplog.at_level(logging.WARNING, logger="worker.request"):
        request.acknowledge()
    assert "Couldn't ack task" in caplog.text
    assert not request.acknowledged
