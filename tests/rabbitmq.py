"""A throw-away RabbitMQ vhost per test, on the server at 127.0.0.1:5672 (guest/guest).

Each test gets a vhost of its own (``rabbitmqctl add_vhost`` + ``set_permissions``),
deleted afterwards with every queue and message in it, so runs never share
queues. A missing ``rabbitmqctl`` or an unreachable server fails the test with a
message saying so (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

#: host:port of the RabbitMQ server the tests use, and its user.
RABBITMQ_ADDRESS = os.environ.get("TEST_RABBITMQ_ADDRESS", "127.0.0.1:5672")
RABBITMQ_USER = "guest"
RABBITMQ_PASSWORD = "guest"
_CTL_TIMEOUT_S = 30.0


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` quietly and return its output; fail the test if it fails."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        pytest.fail(
            "rabbitmqctl was not found: the RabbitMQ tests need a RabbitMQ server at "
            f"{RABBITMQ_ADDRESS} (guest/guest) and its rabbitmqctl (apt-get install "
            "rabbitmq-server)",
            pytrace=False,
        )
    done = subprocess.run(
        [binary, "-q", *args], capture_output=True, text=True, timeout=_CTL_TIMEOUT_S
    )
    if done.returncode != 0:
        pytest.fail(
            f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-500:]}; is RabbitMQ running at "
            f"{RABBITMQ_ADDRESS}?",
            pytrace=False,
        )
    return done.stdout


def amqp_url(vhost: str, address: str = RABBITMQ_ADDRESS) -> str:
    """The broker URL of ``vhost`` on ``address`` (``host:port``)."""
    return f"amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@{address}/{vhost}"


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """Create a fresh vhost that guest may use; yield its name; delete it on exit."""
    vhost = f"flashsale-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, RABBITMQ_USER, ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def queue_backlog(vhost: str, queue: str = "celery") -> tuple[int, int]:
    """(messages ready, messages delivered and not acknowledged) of ``queue``."""
    for line in rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"
    ).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return 0, 0


def queue_type(vhost: str, queue: str = "celery") -> str:
    """The type (``classic``, ``quorum``) of ``queue``, or "" when it does not exist."""
    for line in rabbitmqctl("list_queues", "-p", vhost, "name", "type").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return parts[1]
    return ""
