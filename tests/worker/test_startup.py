"""Worker start-up: a real ``celery -A worker worker`` refuses unsafe lock configurations.

The refusal must be loud (exit status, a message on stderr) and must not leak
a lock node's password; a safe configuration with a plain ``postgresql://`` URL
starts and places orders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tasks.db import create_db_engine
from tests.domain import payload, status, stock
from tests.sale import enqueue, producer, seed_products, wait_until_decided
from worker.demo.redis_server import RedisServer, redis_servers
from worker.demo.stack import LocalStack
from worker.settings import Settings
from worker.signals import startup_problems

RIGHT_PASSWORD = "right-pw-5hX2"
WRONG_PASSWORD = "wrong-pw-Q7zK"


@dataclass(frozen=True)
class Exit:
    """A finished worker process."""

    code: int
    stdout: str
    stderr: str

    def assert_refused(self, reason: str) -> None:
        assert self.code != 0, f"the worker exited {self.code}:\n{self.stderr[-2000:]}"
        assert "flashsale worker refused to start:" in self.stderr
        assert reason in self.stderr, self.stderr[-2000:]


def start_worker_until_exit(broker: RedisServer, nodes: list[str], tmp_path: Path) -> Exit:
    """Run a real worker with these lock nodes; return how it exited (it must not run on)."""
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker.url,
        "REDLOCK_NODES": ",".join(nodes),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
    }
    command = [
        sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=prefork",
        "--concurrency=2", "--loglevel=WARNING", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return Exit(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def locked_nodes() -> Iterator[list[RedisServer]]:
    """Three lock nodes that require ``RIGHT_PASSWORD``."""
    with redis_servers(3, password=RIGHT_PASSWORD) as servers:
        yield servers


def wrong_password_url(node: RedisServer) -> str:
    return f"redis://:{WRONG_PASSWORD}@127.0.0.1:{node.port}/0"


def test_a_lock_node_that_is_the_broker_stops_the_worker(
    broker: RedisServer, node_urls: list[str], tmp_path: Path
) -> None:
    exit_ = start_worker_until_exit(broker, [*node_urls[:2], broker.url], tmp_path)
    exit_.assert_refused(f"lock node {broker.url} is the Celery broker's Redis server")


def test_two_lock_nodes_stop_the_worker(
    broker: RedisServer, node_urls: list[str], tmp_path: Path
) -> None:
    start_worker_until_exit(broker, node_urls[:2], tmp_path).assert_refused(
        "REDLOCK_NODES has 2 node(s); Redlock needs at least 3"
    )


def test_a_wrong_lock_node_password_stops_the_worker_without_showing_it(
    broker: RedisServer, locked_nodes: list[RedisServer], tmp_path: Path
) -> None:
    exit_ = start_worker_until_exit(broker, [wrong_password_url(n) for n in locked_nodes], tmp_path)
    exit_.assert_refused("lock node unusable")
    assert "AUTH refused" in exit_.stderr
    output = exit_.stdout + exit_.stderr
    assert WRONG_PASSWORD not in output
    assert RIGHT_PASSWORD not in output


@pytest.mark.parametrize(("wrong", "refused"), [(1, False), (2, True)])
def test_unusable_nodes_refuse_start_up_only_when_no_quorum_is_left(
    broker: RedisServer, locked_nodes: list[RedisServer], wrong: int, refused: bool
) -> None:
    urls = [wrong_password_url(n) for n in locked_nodes[:wrong]] + [
        n.url for n in locked_nodes[wrong:]
    ]
    problems = startup_problems(Settings(broker_url=broker.url, redlock_nodes=tuple(urls)))
    assert len(problems) == (wrong if refused else 0)
    assert all("AUTH refused" in problem for problem in problems)
    assert WRONG_PASSWORD not in "".join(problems)


def test_a_plain_postgresql_url_uses_psycopg2(database_url: str) -> None:
    assert database_url.startswith("postgresql://")
    engine = create_db_engine(database_url)
    try:
        assert engine.dialect.driver == "psycopg2"
    finally:
        engine.dispose()


def test_a_worker_on_a_plain_postgresql_url_places_orders(
    stack: LocalStack, engine: Engine
) -> None:
    assert stack.env["DATABASE_URL"].startswith("postgresql://")
    seed_products(engine, {"A": 3})
    stack.start_worker(concurrency=2)
    order = payload({"A": 2})
    with producer(stack.env["CELERY_BROKER_URL"]) as app:
        ids = enqueue(app, [order])
    wait_until_decided(engine, ids, timeout_s=60)
    assert (status(engine, order["order_id"]), stock(engine)) == ("confirmed", {"A": 1})
