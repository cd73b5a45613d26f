"""End-to-end orders/s against Celery's own floor, side by side in one run.

    ./dev bench bench/e2e_bench.py [--orders 3000] [--rounds 3]

Starts PostgreSQL databases (on the local server), three lock nodes, a broker
and real ``celery worker`` processes, then for each configuration pre-fills the
queue with N orders, starts the worker(s) and times from the first message taken
until the last order is decided (for the floor: until the queue and the unacked
set are empty).
Configurations run interleaved, round after round, so machine noise hits all.
Writes bench/results/e2e_bench.json; bench/plot_e2e.py draws the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from bench import cpu_usage
from tasks.db import create_db_engine, session_factory
from tasks.intake import store_accepted
from tasks.migrate import upgrade
from tasks.validation import parse_order
from tests.pg import create_database, drop_database
from tests.sale import enqueue, producer, random_carts, seed_products
from worker.demo.stack import LocalStack
from worker.demo.stats import percentile

RESULTS = Path(__file__).with_name("results") / "e2e_bench.json"


@dataclass(frozen=True)
class Config:
    """One measured configuration."""

    name: str
    scenario: str  # hot | spread | carts
    lock: bool = True
    noop: bool = False
    processes: int = 2
    env: tuple[tuple[str, str], ...] = ()
    #: Orders stored first as the intake record does (``accepted`` rows), as a web
    #: app calling ``submit_order(..., session=...)`` leaves them.
    intake: bool = False


def payloads(scenario: str, orders: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Return (stock per SKU, order payloads) for a scenario."""
    if scenario == "hot":
        stock = {"HOT": max(1, orders // 10)}
        return stock, random_carts(orders, ["HOT"], max_lines=1, max_quantity=1)
    skus = [f"S{i:02d}" for i in range(50)]
    stock = dict.fromkeys(skus, max(1, orders // 10 // 50 * 2))
    if scenario == "spread":
        return stock, random_carts(orders, skus, max_lines=1, max_quantity=1)
    carts = random_carts(orders, skus, max_lines=3, max_quantity=1)
    return (
        stock,
        [c for c in carts if len(c["items"]) >= 2]
        + [
            c
            for c in random_carts(orders, skus[:25], max_lines=3, max_quantity=1, seed=9)
            if len(c["items"]) >= 2
        ][:orders],
    )


def run_one(config: Config, orders: int, paced_rate: float) -> dict[str, Any]:
    """Measure one configuration on fresh servers and a fresh database.

    Throughput: the queue is pre-filled, then the worker starts. Latency (ours
    only): afterwards, orders are sent at ``paced_rate`` per second to the running
    worker and timed from ``send_task`` to the order's decision.
    """
    url = create_database()
    try:
        upgrade(url)
        engine = create_db_engine(url)
        cpu_usage.mark_as_harness(engine)
        stock, batch = payloads(config.scenario, orders)
        batch = batch[:orders]
        seed_products(engine, stock)
        with LocalStack(env={"DATABASE_URL": url}) as stack:
            stack.start_lock_nodes(3)
            broker = stack.start_broker()
            extra = dict(config.env) | ({} if config.lock else {"ORDER_LOCK": "off"})
            if config.intake:
                store_intake_records(engine, batch)
            ids = enqueue(producer(broker.url), batch)
            stack.start_worker(
                concurrency=config.processes,
                extra_env=extra,
                app_module="bench.noop_app" if config.noop else "worker",
                wait=False,
            )
            # The clock starts with the first message taken, not with the worker's
            # boot, which would otherwise dominate the fast configurations.
            started = wait_consumption_started(broker.url, len(ids))
            cpu_before, busy_before = (
                cpu_usage.snapshot(cpu_usage.roles(stack, engine)),
                (cpu_usage.host_busy_s()),
            )
            latencies: list[float] = []
            if config.noop:
                finished = wait_queue_drained(broker.url)
            else:
                finished = wait_decided(engine, len(ids))
            busy_after = cpu_usage.host_busy_s()
            cpu = cpu_usage.per_order_ms(
                cpu_before, cpu_usage.snapshot(cpu_usage.roles(stack, engine)), len(ids)
            )
            cpu["host, all processes"] = (busy_after - busy_before) * 1000 / len(ids)
            # The latency pass sends with send_task: it measures today's path only.
            if not config.noop and not config.intake and paced_rate > 0:
                latencies = paced_latencies_ms(engine, broker.url, config, paced_rate, len(ids))
        stats = order_stats(engine) if config.lock and not config.noop else None
        engine.dispose()
        elapsed = finished - started
        return {
            "config": config.__dict__,
            "orders": len(ids),
            "elapsed_s": elapsed,
            "orders_per_s": len(ids) / elapsed,
            "latency_p50_ms": percentile(sorted(latencies), 0.50),
            "latency_p99_ms": percentile(sorted(latencies), 0.99),
            "latencies_ms": [round(value, 3) for value in sorted(latencies)],
            "order_stats": stats,
            "cpu_ms_per_order": cpu,
        }
    finally:
        drop_database(url)


def store_intake_records(engine, batch: list[dict[str, object]]) -> None:  # type: ignore[no-untyped-def]
    """Store every order as ``accepted``, with its lines, as the intake record does."""
    with session_factory(engine).begin() as session:
        for payload in batch:
            store_accepted(session, parse_order(dict(payload)))


def order_stats(engine) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Share of orders decided by another task's settlement (flat combining), and of
    orders that needed more than one delivery (task retries)."""
    query = text(
        "SELECT avg(CASE WHEN lock_wait_ms IS NULL THEN 1.0 ELSE 0.0 END),"
        " avg(CASE WHEN attempts > 1 THEN 1.0 ELSE 0.0 END) FROM orders"
    )
    with engine.connect() as connection:
        combined, retried = connection.execute(query).one()
    return {"settled_by_another": float(combined), "retried": float(retried)}


def wait_consumption_started(broker_url: str, queued: int, timeout_s: float = 120) -> float:
    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen("celery") < queued:
            return time.monotonic()
        time.sleep(0.001)
    raise TimeoutError("no worker took a message")


#: How often the end of a run is checked. Each check of ours is a query that costs
#: PostgreSQL CPU the workers would use; 20 ms is under 0.5% of a run's length.
POLL_S = 0.02


def wait_queue_drained(broker_url: str, timeout_s: float = 600) -> float:
    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen("celery") == 0 and client.hlen("unacked") == 0:
            return time.monotonic()
        time.sleep(POLL_S)
    raise TimeoutError("queue not drained")


def wait_decided(engine, count: int, timeout_s: float = 600) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    query = text("SELECT count(*) FROM orders WHERE status <> 'pending'")
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            if connection.execute(query).scalar_one() >= count:
                return time.monotonic()
            connection.commit()
            time.sleep(POLL_S)
    raise TimeoutError("orders not decided")


def paced_latencies_ms(  # type: ignore[no-untyped-def]
    engine, broker_url: str, config: Config, rate: float, already: int
) -> list[float]:
    """Send orders at ``rate``/s for ~5 s; return enqueue-to-decision times in ms."""
    _, batch = payloads(config.scenario, max(50, int(rate * 5)))
    app = producer(broker_url)
    sent_at: dict[str, float] = {}
    start = time.monotonic()
    for index, payload in enumerate(batch):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_at[str(payload["order_id"])] = time.time()
        enqueue(app, [payload])
    wait_decided(engine, already + len(batch))
    query = text("SELECT id::text, EXTRACT(EPOCH FROM decided_at) FROM orders")
    with engine.connect() as connection:
        decided = dict(connection.execute(query).all())
    return [(float(decided[oid]) - sent) * 1000 for oid, sent in sent_at.items()]


CONFIGS = [
    Config("floor (no-op task)", "hot", noop=True),
    Config("ours: hot SKU", "hot"),
    Config("ours: spread (50 SKUs)", "spread"),
    Config("ours: carts (2-3 lines)", "carts"),
    Config("db guard only: hot SKU", "hot", lock=False),
    Config("db guard only: spread", "spread", lock=False),
    Config("floor, 1 process", "hot", noop=True, processes=1),
    Config("ours: hot SKU, 1 process", "hot", processes=1),
    Config("ours: hot SKU, no handoff", "hot", env=(("REDLOCK_HANDOFF_MS", "0"),)),
    Config("ours: spread, no handoff", "spread", env=(("REDLOCK_HANDOFF_MS", "0"),)),
    Config("ours: hot SKU, intake record", "hot", intake=True),
    Config("ours: spread, intake record", "spread", intake=True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=None, help="configuration names to run, separated by |")
    parser.add_argument(
        "--paced-rate", type=float, default=100.0, help="orders/s of the latency pass (0: none)"
    )
    args = parser.parse_args()
    wanted = None if args.only is None else args.only.split("|")
    configs = [c for c in CONFIGS if wanted is None or c.name in wanted]
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    for round_ in range(args.rounds):
        for config in configs:
            result = run_one(config, args.orders, args.paced_rate)
            runs[config.name].append(result)
            stats = result["order_stats"]
            print(
                f"round {round_ + 1} {config.name:32s} {result['orders_per_s']:8.1f} orders/s"
                + (
                    ""
                    if stats is None
                    else "  settled by another: {settled_by_another:.0%}, "
                    "retried: {retried:.1%}".format(**stats)
                )
                + "  cpu ms/order: "
                + ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms_per_order"].items()),
                flush=True,
            )
    summary = summarize(runs)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"orders": args.orders, "rounds": args.rounds, "summary": summary, "runs": runs},
            indent=2,
        )
    )
    print_table(summary)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    floor = {
        procs: statistics.median(float(r["orders_per_s"]) for r in results)
        for name, results in runs.items()
        if results and results[0]["config"]["noop"]
        for procs in [results[0]["config"]["processes"]]
    }
    summary = {}
    for name, results in runs.items():
        if not results:
            continue
        procs = results[0]["config"]["processes"]
        median = statistics.median(float(r["orders_per_s"]) for r in results)
        p50 = [r["latency_p50_ms"] for r in results if r["latency_p50_ms"] is not None]
        p99 = [r["latency_p99_ms"] for r in results if r["latency_p99_ms"] is not None]
        summary[name] = {
            "orders_per_s": median,
            "ratio_to_floor": median / floor[procs] if procs in floor else None,
            "latency_p50_ms": statistics.median(p50) if p50 else None,
            "latency_p99_ms": statistics.median(p99) if p99 else None,
        }
    return summary


def print_table(summary: dict[str, dict[str, float | None]]) -> None:
    print(f"\n{'configuration':32s} {'orders/s':>9s} {'x floor':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, row in summary.items():
        cells = [
            row["orders_per_s"],
            row["ratio_to_floor"],
            row["latency_p50_ms"],
            row["latency_p99_ms"],
        ]
        print(f"{name:32s} " + " ".join("       -" if v is None else f"{v:8.2f}" for v in cells))


if __name__ == "__main__":
    main()
