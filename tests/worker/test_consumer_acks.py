"""A late ack on a broker connection Celery already collected does not end the worker.

The state is the one chaos scenario 13 logged before a worker exited: the broker
is gone, Celery's consumer has collected the connection (kombu drops the
transport's ``client``), the channel's client pool has been dropped, and then a
pool process reports its task done and the event loop runs the ack Celery
scheduled through ``Consumer.call_soon_ack``. kombu raises ``AttributeError``
from there, which Celery's "Couldn't ack" handling does not catch. The message
is real, taken from a real redis-server broker through kombu.

kombu is unannotated: its calls carry a targeted ``type: ignore[no-untyped-call]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message

from tasks.validation import TASK_NAME
from tests.spawners import kill_server, redis_servers
from worker.celery_app import create_app
from worker.consumer import Consumer
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


class _Hub:
    """The part of kombu's event loop that `Consumer.call_soon_ack` uses."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object]) -> Callable[[], object]:
        self.ready.append(callback)
        return callback

    def run_ready(self) -> None:
        """Run what was scheduled, as one turn of the worker's event loop does."""
        while self.ready:
            self.ready.pop(0)()


def _consumer_with(hub: _Hub) -> Consumer:
    """The worker's consumer, with only what scheduling an ack touches."""
    consumer = Consumer.__new__(Consumer)
    consumer.hub = hub
    return consumer


def test_a_late_ack_on_a_collected_connection_is_logged_not_raised(
    broker_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(broker_url=broker_server.url))
    connection = Connection(broker_server.url)  # type: ignore[no-untyped-call]
    message = _taken_message(connection, app)
    hub = _Hub()
    consumer = _consumer_with(hub)
    _collected_after_broker_loss(connection, message, broker_server)
    consumer.call_soon_ack(message.ack_log_error, logging.getLogger("celery.worker"), ())
    with caplog.at_level(logging.WARNING, logger="worker.consumer"):
        hub.run_ready()
    assert "Couldn't ack" in caplog.text
    assert not message.acknowledged


def test_an_ack_on_a_live_connection_still_acks(broker_server: RedisServer) -> None:
    app = create_app(Settings(broker_url=broker_server.url))
    connection = Connection(broker_server.url)  # type: ignore[no-untyped-call]
    message = _taken_message(connection, app)
    hub = _Hub()
    _consumer_with(hub).call_soon_ack(message.ack_log_error, logging.getLogger("x"), ())
    hub.run_ready()
    assert message.acknowledged
    connection.close()  # type: ignore[no-untyped-call]
