"""Worker metrics, scraped over HTTP from real workers, lock nodes, broker and PostgreSQL.

Which tests need the order path's events (``tasks.events``, branch ``seam``) is
said on each: `test_counters_equal_the_database` fails loudly until the order
path calls `OrderEvents` (it is marked xfail only while ``tasks.events`` does
not exist at all).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from tasks.models import Order
from tests.domain import payload
from tests.sale import enqueue, producer, seed_products, wait_until_decided
from tests.spawners import kill_server, stop_worker
from tests.waiting import wait_for
from worker.demo.redis_server import free_port
from worker.demo.stack import LocalStack, WorkerProcess
from worker.metrics import multiprocess_dir as metrics_dir

ROOT = Path(__file__).resolve().parents[2]
FLASHSALE = str(Path(sys.executable).with_name("flashsale"))
HAS_ORDER_EVENTS = importlib.util.find_spec("tasks.events") is not None
METRIC_NAME = re.compile(r"\bflashsale_[a-z_]+\b")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """GET /metrics on ``port``; return {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """Return one sample's value (None when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))))


def start_metrics_worker(stack: LocalStack, **env: str) -> tuple[WorkerProcess, int]:
    """Start a worker serving metrics on a free port; return it and the port."""
    port = free_port()
    worker = stack.start_worker(
        concurrency=2, loglevel="INFO", extra_env={"WORKER_METRICS_PORT": str(port), **env}
    )
    return worker, port


def json_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Every line the worker wrote, each parsed as JSON (fails on the first that is not)."""
    entries = []
    for number, line in enumerate(worker.log().splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
    return entries


# --- multiprocess aggregation ------------------------------------------------------

FORKED_POOL = """
import os, signal, sys
from pathlib import Path
from worker import metrics
metrics.enable_multiprocess(Path(sys.argv[1]))
m = metrics.WorkerMetrics(["127.0.0.1:1"])  # created before the fork, as in the worker
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            m.order_decided("confirmed", None, 0.5)
        m.order_decided("failed", "lock_unavailable", None)
        m.task_retry("lock_contended")
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
"""


def test_a_killed_pool_process_loses_nothing_it_counted(tmp_path: Path) -> None:
    # A main process forks two pool processes that count, then die by SIGKILL.
    done = subprocess.run([sys.executable, "-c", FORKED_POOL, str(tmp_path)], timeout=60)
    assert done.returncode == 0
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    # prometheus_client leaves this constructor unannotated.
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "flashsale_orders_total", status="confirmed", reason="") == 6
    assert value(samples, "flashsale_orders_total", status="failed", reason="lock_unavailable") == 2
    assert value(samples, "flashsale_order_decision_seconds_count") == 6
    assert value(samples, "flashsale_task_retries_total", cause="lock_contended") == 2


# --- real workers --------------------------------------------------------------------


def metric_names_of_rules_and_dashboard() -> set[str]:
    """Every flashsale_* metric an alert rule or a dashboard panel queries."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy/grafana/flashsale.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


@pytest.fixture
def exporter(stack: LocalStack) -> Iterator[int]:
    """A running ``flashsale exporter`` on the stack's database; yields its port."""
    port = free_port()
    process = stack.start_process(
        [FLASHSALE, "exporter", "--port", str(port), "--host", "127.0.0.1"], log_name="exp.log"
    )
    wait_for(
        lambda: _answers(port) or process.poll() is not None, "exporter answering", timeout_s=30
    )
    assert process.poll() is None, (stack.workdir / "exp.log").read_text()
    yield port


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_every_metric_of_the_rules_and_the_dashboard_is_exported(
    stack: LocalStack, exporter: int, engine: Engine
) -> None:
    wanted = metric_names_of_rules_and_dashboard()
    assert {"flashsale_lock_node_up", "flashsale_open_orders"} <= wanted
    _worker, port = start_metrics_worker(stack)
    exported = {name for name, _labels in scrape(port)} | {n for n, _ in scrape(exporter)}
    missing = sorted(name for name in wanted if name not in exported)
    assert not missing, f"queried by rules/dashboard, not exported: {missing}"
    # The list, whether or not a rule uses it yet.
    for name in (
        "flashsale_lock_node_up",
        "flashsale_lock_node_errors_total",
        "flashsale_lock_acquire_seconds_bucket",
        "flashsale_lock_quorum_failures_total",
        "flashsale_orders_total",
        "flashsale_order_decision_seconds_bucket",
        "flashsale_settlement_batch_orders_bucket",
        "flashsale_task_retries_total",
        "flashsale_open_orders",
        "flashsale_oldest_open_order_age_seconds",
    ):
        assert name in exported, name
    # No order or customer id ever becomes a label.
    for _name, labels in scrape(port):
        assert set(dict(labels)) <= {"node", "kind", "outcome", "status", "reason", "cause", "le"}


@pytest.mark.slow
def test_open_orders_come_from_the_exporter(stack: LocalStack, exporter: int) -> None:
    # No worker runs: the enqueued orders stay open in the broker, and one that a
    # previous delivery recorded as pending is open in the database.
    from tasks.db import create_db_engine, session_factory
    from tests.domain import record

    engine = create_db_engine(stack.env["DATABASE_URL"])
    try:
        seed_products(engine, {"A": 5})
        record(session_factory(engine), {"A": 1})
    finally:
        engine.dispose()
    samples = scrape(exporter)
    assert value(samples, "flashsale_open_orders", status="pending") == 1
    age = value(samples, "flashsale_oldest_open_order_age_seconds")
    assert age is not None and 0 <= age < 60


@pytest.mark.slow
def test_a_killed_lock_node_is_seen_logged_once_and_sales_go_on(
    stack: LocalStack, engine: Engine
) -> None:
    seed_products(engine, {"A": 100})
    worker, port = start_metrics_worker(stack, LOG_FORMAT="json")
    nodes = {f"127.0.0.1:{node.port}": node for node in stack.lock_nodes}
    victim_name, victim = next(iter(nodes.items()))

    def node_up() -> dict[str, float | None]:
        samples = scrape(port)
        return {name: value(samples, "flashsale_lock_node_up", node=name) for name in nodes}

    assert node_up() == dict.fromkeys(nodes, 1.0)

    def probe_lines(state: str) -> list[dict[str, Any]]:
        # The main process's lines: its probe's lock logs each change once. Pool
        # processes that meet the node in an order's round log their own once.
        return [
            e
            for e in json_lines(worker)
            if e["logger"] == "locking.node"
            and e["process"] == "MainProcess"
            and repr(victim_name) in e["message"]
            and state in e["message"]
        ]

    # The sale runs before the node dies: a new cluster's first fenced lease needs
    # every node (locking.fencing), a running one sells on with one node down.
    app = producer(stack.env["CELERY_BROKER_URL"])
    wait_until_decided(engine, enqueue(app, [payload({"A": 1})]), timeout_s=60)

    kill_server(victim)
    killed_at = time.monotonic()
    wait_for(lambda: node_up()[victim_name] == 0, "node_up 0 for the killed node", timeout_s=10)
    assert time.monotonic() - killed_at < 10
    assert node_up() == {name: 0.0 if name == victim_name else 1.0 for name in nodes}

    orders = [payload({"A": 1}) for _ in range(5)]
    wait_until_decided(engine, enqueue(app, orders), timeout_s=60)
    with engine.connect() as connection:
        statuses = connection.execute(select(Order.status)).scalars().all()
    assert [str(s) for s in statuses] == ["confirmed"] * 6
    # The orders' lock rounds met the dead node: counted by node and kind.
    errors = {
        dict(labels)["kind"]: figure
        for (name, labels), figure in scrape(port).items()
        if name == "flashsale_lock_node_errors_total" and dict(labels)["node"] == victim_name
    }
    assert sum(errors.values()) >= 1, errors
    # Several probes later, still one line: once per change, not per probe or order.
    assert [e["level"] for e in probe_lines("is down")] == ["WARNING"]

    victim.start()
    wait_for(lambda: node_up()[victim_name] == 1, "node_up back to 1", timeout_s=10)
    time.sleep(2.5)  # a probe period more: still one line each way
    assert [e["level"] for e in probe_lines("is up again")] == ["INFO"]
    assert len(probe_lines("is down")) == 1


@pytest.mark.slow
def test_json_logs_every_line_of_a_worker_during_a_sale(stack: LocalStack, engine: Engine) -> None:
    seed_products(engine, {"A": 3})
    worker, _port = start_metrics_worker(stack, LOG_FORMAT="json")
    app = producer(stack.env["CELERY_BROKER_URL"])
    # Over-subscribed (rejections), and one malformed order (a warning from the task).
    orders = [payload({"A": 1}) for _ in range(6)]
    bad = {"order_id": str(orders[0]["order_id"]).replace("-", "")[:8], "items": "x"}
    ids = enqueue(app, orders)
    app.send_task("tasks.place_order", kwargs=bad)
    wait_until_decided(engine, ids, timeout_s=60)
    stop_worker(worker)
    assert not metrics_dir(_port).exists(), "a stopped worker removes its metrics directory"
    entries = json_lines(worker)
    assert len(entries) >= len(orders)
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), entry
    in_tasks = [e for e in entries if "task_id" in e]
    assert in_tasks, "no line carries the task id"
    assert {e.get("order_id") for e in in_tasks} & set(ids), "no line carries an order id"


@pytest.mark.slow
@pytest.mark.xfail(
    not HAS_ORDER_EVENTS,
    reason="needs the order path's events (tasks.events, branch seam) and their wiring",
    strict=True,
)
def test_counters_equal_the_database(stack: LocalStack, engine: Engine) -> None:
    seed_products(engine, {"A": 10, "B": 4})
    workers = [start_metrics_worker(stack) for _ in range(2)]
    app = producer(stack.env["CELERY_BROKER_URL"])
    orders = [payload({"A": 1, "B": 1}) for _ in range(6)] + [payload({"A": 2}) for _ in range(6)]
    orders.append(payload({"NO-SUCH-SKU": 1}))
    wait_until_decided(engine, enqueue(app, orders), timeout_s=120)
    counted: Counter[tuple[str, str]] = Counter()
    for _worker, port in workers:
        for (name, labels), figure in scrape(port).items():
            if name == "flashsale_orders_total" and figure:
                label = dict(labels)
                counted[(label["status"], label["reason"])] += int(figure)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Order.status, Order.reason, func.count()).group_by(Order.status, Order.reason)
        ).all()
    stored = Counter({(str(status), reason or ""): n for status, reason, n in rows})
    assert counted == stored
    assert sum(counted.values()) == len(orders)
    for _worker, port in workers:
        assert value(scrape(port), "flashsale_lock_acquire_seconds_count", outcome="granted")


def test_a_worker_whose_metrics_port_is_taken_refuses_to_start(stack: LocalStack) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = stack.start_worker(extra_env={"WORKER_METRICS_PORT": str(port)}, wait=False)
        assert worker.process.wait(timeout=60) == 2
    assert f"cannot serve metrics on WORKER_METRICS_PORT={port}" in worker.log()


def test_the_probe_reports_every_state_and_logs_nothing_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.nodeprobe import NodeProbe

    replies: list[dict[str, object | None]] = [
        {"a": None, "b": None},
        {"a": "refused", "b": None},
        {"a": None, "b": None},
    ]
    states: list[tuple[str, bool]] = []
    probe = NodeProbe(lambda: replies.pop(0), lambda node, up: states.append((node, up)))
    with caplog.at_level("DEBUG", logger="worker.nodeprobe"):
        for _ in range(3):
            probe.probe_once()
    assert not caplog.records, "the lock library logs state changes; the probe must not"
    assert [up for node, up in states if node == "a"] == [True, False, True]


def test_the_exporter_says_when_the_database_is_down(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    command = [FLASHSALE, "exporter", "--port", str(port), "--host", "127.0.0.1"]
    with (tmp_path / "exporter.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        samples = wait_for(
            lambda: scrape(port) if _answers(port) else None, "exporter answering", timeout_s=30
        )
        assert value(samples, "flashsale_exporter_database_up") == 0
        assert not [name for name, _ in samples if name.startswith("flashsale_open_orders")]
    finally:
        process.terminate()
        process.wait(timeout=10)
