"""The ``flashsale`` command, run as the installed console script in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from locking import Redlock
from tasks.db import session_factory
from tasks.models import Product, StockMovement
from tests.domain import TABLES, head_revision, record, schema, settle_now
from tests.sale import wait_until_decided
from worker.demo.redis_server import RedisServer, free_port
from worker.demo.stack import LocalStack

FLASHSALE = str(Path(sys.executable).with_name("flashsale"))


def flashsale(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``flashsale ARGS`` with ``env`` added to this process's environment."""
    return subprocess.run(
        [FLASHSALE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ledger(engine: Engine, sku: str) -> tuple[int, int, int]:
    """Return (initial stock, sum of movements, stock) of ``sku``."""
    with session_factory(engine)() as session:
        product = session.get(Product, sku)
        assert product is not None
        moved = session.scalar(
            select(func.coalesce(func.sum(StockMovement.delta), 0)).where(StockMovement.sku == sku)
        )
        return product.initial_stock, int(moved or 0), product.stock


def test_db_upgrade_and_downgrade(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url}
    assert flashsale("db", "upgrade", env=env).returncode == 0
    assert schema(empty_database_url) == (TABLES, head_revision())
    assert flashsale("db", "downgrade", "base", env=env).returncode == 0
    assert schema(empty_database_url) == (frozenset(), None)


def test_stock_creates_a_product(database_url: str, engine: Engine) -> None:
    done = flashsale("stock", "SKU-1", "10", "--name", "Widget", env={"DATABASE_URL": database_url})
    assert (done.returncode, done.stdout.strip()) == (0, "SKU-1: stock 10")
    assert ledger(engine, "SKU-1") == (10, 0, 10)


def test_stock_keeps_the_ledger_true_after_sales(database_url: str, engine: Engine) -> None:
    env = {"DATABASE_URL": database_url}
    flashsale("stock", "SKU-1", "10", env=env)
    sessions = session_factory(engine)
    record(sessions, {"SKU-1": 3})
    settle_now(sessions, ["SKU-1"])
    assert flashsale("stock", "SKU-1", "20", env=env).returncode == 0
    initial, moved, current = ledger(engine, "SKU-1")
    assert (initial, moved, current) == (23, -3, 20)
    assert initial + moved == current


def test_negative_stock_is_refused(database_url: str, engine: Engine) -> None:
    env = {"DATABASE_URL": database_url}
    flashsale("stock", "SKU-1", "4", env=env)
    done = flashsale("stock", "SKU-1", "--", "-1", env=env)
    assert (done.returncode, done.stderr.strip()) == (2, "flashsale: stock cannot be negative")
    assert ledger(engine, "SKU-1") == (4, 0, 4)


def test_a_submitted_order_is_confirmed_by_a_worker_and_shown(
    stack: LocalStack, engine: Engine
) -> None:
    env = stack.env
    flashsale("stock", "SKU-1", "5", env=env)
    stack.start_worker(concurrency=2)
    done = flashsale("submit", "--customer", "c", "--item", "SKU-1:2", env=env)
    assert done.returncode == 0, done.stderr
    order_id = done.stdout.strip()
    wait_until_decided(engine, [order_id], timeout_s=60)
    shown = flashsale("show", order_id, env=env)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert {key: view[key] for key in ("order_id", "customer_id", "status", "reason", "items")} == {
        "order_id": order_id,
        "customer_id": "c",
        "status": "confirmed",
        "reason": None,
        "items": [{"sku": "SKU-1", "quantity": 2}],
    }
    assert view["decided_at"] is not None
    assert ledger(engine, "SKU-1") == (5, -2, 3)


def test_show_of_an_unknown_order_exits_1(database_url: str) -> None:
    order_id = "7d0d7b62-9a43-4bb8-9a5e-3e3f0c1e2a11"
    done = flashsale("show", order_id, env={"DATABASE_URL": database_url})
    assert (done.returncode, done.stderr.strip()) == (1, f"flashsale: no order {order_id}")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("SKU-1", "--item must be SKU:QTY"),
        (":2", "--item must be SKU:QTY"),
        ("SKU-1:two", "--item must be SKU:QTY"),
        ("SKU-1:-1", "--item must be SKU:QTY"),
        ("SKU-1:0", "invalid_quantity"),
        ("SKU-1:1001", "quantity_too_large"),
    ],
)
def test_a_bad_item_exits_2_and_sends_nothing(broker: RedisServer, item: str, message: str) -> None:
    done = flashsale(
        "submit", "--customer", "c", "--item", item, env={"CELERY_BROKER_URL": broker.url}
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def test_submit_to_an_unreachable_broker_exits_2() -> None:
    broker_url = f"redis://127.0.0.1:{free_port()}/0"
    done = flashsale(
        "submit", "--customer", "c", "--item", "SKU-1:1", env={"CELERY_BROKER_URL": broker_url}
    )
    assert done.returncode == 2
    assert "the order broker is unavailable" in done.stderr


def test_check_accepts_three_lock_nodes_and_refuses_two(
    broker: RedisServer, node_urls: list[str], database_url: str
) -> None:
    env = {
        "CELERY_BROKER_URL": broker.url,
        "REDLOCK_NODES": ",".join(node_urls),
        "DATABASE_URL": database_url,
    }
    ok = flashsale("check", env=env)
    assert (ok.returncode, ok.stdout.strip()) == (0, "configuration OK")
    two = flashsale("check", env={**env, "REDLOCK_NODES": ",".join(node_urls[:2])})
    assert two.returncode == 1
    assert "problem: REDLOCK_NODES has 2 node(s)" in two.stderr


def test_repair_lock_node_brings_an_emptied_node_back_to_trusted(
    lock_nodes: list[RedisServer], node_urls: list[str]
) -> None:
    env = {"REDLOCK_NODES": ",".join(node_urls)}
    lock = Redlock(node_urls)
    try:
        for _ in range(3):  # fences 1..3 on every node, and every node's status
            lock.release(lock.acquire("sku:A", ttl_ms=5000, fence=True))
    finally:
        lock.close()
    first = f"127.0.0.1:{lock_nodes[0].port}"
    with redis.Redis(port=lock_nodes[0].port) as node:
        node.flushall()  # the node comes back empty
        repaired = flashsale("repair-lock-node", first, env=env)
        assert repaired.returncode == 0, repaired.stderr
        assert "status trusted" in repaired.stdout
        assert node.get("redlock-fence:") == b"trusted"
        assert int(node.get("redlock-fence:sku:A") or 0) >= 3
    unknown = flashsale("repair-lock-node", "127.0.0.1:1", env=env)
    assert unknown.returncode == 1
    assert "is not one of the lock's nodes" in unknown.stderr


IMPORTS_AFTER_DB_UPGRADE = """
import sys
from worker.cli import main
status = main(["db", "upgrade"])
print(status, sorted(m for m in sys.modules if m.startswith("worker.demo")))
"""


def test_db_upgrade_does_not_load_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'release.sqlite3'}"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER_DB_UPGRADE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []"


def test_demo_help_still_lists_the_demo_options() -> None:
    done = flashsale("demo", "--help", env={})
    assert done.returncode == 0, done.stderr
    assert "--orders" in done.stdout
