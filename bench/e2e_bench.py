"""End-to-end orders/s against Celery's own floor, side by side in one run.

    ./dev bench bench/e2e_bench.py [--orders 3000] [--rounds 3]
    ./dev bench bench/e2e_bench.py --grid 1x2,2x2,4x2 --stacks floor,ours,pottery,redis,nolock \
        --scenarios hot,spread,carts --feeds live,prefilled --orders 1000 --rounds 2 \
        --out bench/results/<name>.json

The default runs the fixed list `CONFIGS` (1 worker). ``--grid`` runs every
combination of workers x processes, stack (`STACKS`: ours, the no-op floor, the
peer stacks of `bench.peers`), scenario and feed instead: ``prefilled`` fills the
queue before the workers start, ``live`` starts the workers, then sends while they
consume (the clock runs from the first send).

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
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench import cpu_usage
from bench.e2e_probes import (
    calls_per_order,
    command_calls,
    order_stats,
    pg_counters,
    wait_consumption_started,
    wait_decided,
    wait_queue_drained,
)
from bench.e2e_summary import print_table, summarize
from tasks.db import create_db_engine, session_factory
from tasks.intake import store_accepted
from tasks.migrate import upgrade
from tasks.validation import parse_order
from tests.pg import create_database, drop_database
from tests.sale import enqueue, producer, random_carts, seed_products
from worker.demo.redis_server import free_port
from worker.demo.stack import LocalStack
from worker.demo.stats import percentile

RESULTS = Path(__file__).with_name("results") / "e2e_bench.json"


@dataclass(frozen=True)
class Config:
    """One measured configuration.

    :param app: the Celery app module the workers run (``None``: the no-op floor
        when ``noop``, else ours).
    :param workers: worker instances, each with ``processes`` pool processes.
    :param feed: ``prefilled`` (queue filled before the workers start) or ``live``.
    """

    name: str
    scenario: str  # hot | spread | carts
    lock: bool = True
    noop: bool = False
    processes: int = 2
    env: tuple[tuple[str, str], ...] = ()
    app: str | None = None
    workers: int = 1
    feed: str = "prefilled"
    #: Orders stored first as the intake record does (``accepted`` rows), as a web
    #: app calling ``submit_order(..., session=...)`` leaves them (prefilled feed).
    intake: bool = False

    @property
    def app_module(self) -> str:
        return self.app or ("bench.noop_app" if self.noop else "worker")

    @property
    def decides_orders(self) -> bool:
        """True when the app writes orders the end-of-run check can count."""
        return not self.noop


#: The app modules that run our order task.
OURS_APPS = ("worker", "bench.patched_worker")

#: The stacks of ``--grid``: (app module, extra environment, takes the lock).
STACKS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "floor": ("bench.noop_app", ()),
    "ours": ("worker", ()),
    "ours-nolock": ("worker", (("ORDER_LOCK", "off"),)),
    "pottery": ("bench.peers.app", (("PEER_LOCK", "pottery"),)),
    "redis": ("bench.peers.app", (("PEER_LOCK", "redis"),)),
    "nolock": ("bench.peers.app", (("PEER_LOCK", "none"),)),
}


def grid_configs(
    shapes: list[str],
    stacks: list[str],
    scenarios: list[str],
    feeds: list[str],
    variants: list[str],
) -> list[Config]:
    """Return one configuration per combination; the floor runs one scenario only.

    :param variants: extra environment of ours, as ``NAME=VALUE`` (one more ``ours``
        row each), e.g. ``REDLOCK_HANDOFF_MS=0``, ``BENCH_PATCH=nospin``, or
        ``WORKER_METRICS_PORT=auto`` (metrics on, a free port per worker).
    """
    configs = []
    for shape in shapes:
        workers, processes = (int(part) for part in shape.split("x"))
        for feed in feeds:
            for stack in stacks:
                app, env = STACKS[stack]
                rows = [(stack, env)]
                if stack == "ours":
                    for variant in variants:
                        name, _, value = variant.partition("=")
                        rows.append((f"ours[{variant}]", (*env, (name, value))))
                for scenario in ["hot"] if stack == "floor" else scenarios:
                    for label, row_env in rows:
                        patched = any(key == "BENCH_PATCH" for key, _ in row_env)
                        configs.append(
                            Config(
                                f"{label} {scenario} {shape} {feed}",
                                scenario,
                                noop=stack == "floor",
                                processes=processes,
                                workers=workers,
                                env=row_env,
                                app="bench.patched_worker" if patched else app,
                                feed=feed,
                            )
                        )
    return configs


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
        pg_before = pg_counters(engine)
        with LocalStack(env={"DATABASE_URL": url}) as stack:
            stack.start_lock_nodes(3)
            broker = stack.start_broker()
            extra = dict(config.env) | ({} if config.lock else {"ORDER_LOCK": "off"})
            nodes_before = [command_calls(node.url) for node in stack.lock_nodes]
            sender: threading.Thread | None = None
            if config.feed == "prefilled":
                if config.intake:
                    store_intake_records(engine, batch)
                ids = enqueue(producer(broker.url), batch)
            for _ in range(config.workers):
                # WORKER_METRICS_PORT=auto: each worker serves /metrics on a port of its own.
                ports = (
                    {"WORKER_METRICS_PORT": str(free_port())}
                    if extra.get("WORKER_METRICS_PORT") == "auto"
                    else {}
                )
                stack.start_worker(
                    concurrency=config.processes,
                    extra_env=extra | ports,
                    app_module=config.app_module,
                    wait=False,
                )
            if config.feed == "prefilled":
                # The clock starts with the first message taken, not with the worker's
                # boot, which would otherwise dominate the fast configurations.
                started = wait_consumption_started(broker.url, len(ids))
            else:
                for worker in stack.workers:
                    stack.wait_ready(worker)
                ids = [str(payload["order_id"]) for payload in batch]
                sender = threading.Thread(
                    target=enqueue, args=(producer(broker.url), batch), daemon=True
                )
            broker_before = command_calls(broker.url)
            pids = cpu_usage.roles(stack, engine) | {"harness (producer)": [os.getpid()]}
            cpu_before, busy_before = cpu_usage.snapshot(pids), cpu_usage.host_busy_s()
            switches_before = cpu_usage.switches_snapshot(pids)
            if sender is not None:
                started = time.monotonic()
                sender.start()
            latencies: list[float] = []
            if sender is not None:
                sender.join()
            if config.decides_orders:
                finished = wait_decided(engine, len(ids))
            else:
                finished = wait_queue_drained(broker.url)
            busy_after = cpu_usage.host_busy_s()
            pids = cpu_usage.roles(stack, engine) | {"harness (producer)": [os.getpid()]}
            cpu = cpu_usage.per_order_ms(cpu_before, cpu_usage.snapshot(pids), len(ids))
            # The stack's own roles, harness excluded; the host figure includes every
            # other process on the machine (other people's work on a shared host).
            cpu["stack, all roles"] = sum(
                ms for role, ms in cpu.items() if not role.startswith("harness")
            )
            cpu["host, all processes"] = (busy_after - busy_before) * 1000 / len(ids)
            switches = cpu_usage.switches_per_order(
                switches_before, cpu_usage.switches_snapshot(pids), len(ids)
            )
            broker_calls = calls_per_order([broker_before], [command_calls(broker.url)], len(ids))
            node_calls = calls_per_order(
                nodes_before, [command_calls(node.url) for node in stack.lock_nodes], len(ids)
            )
            # The latency pass sends with send_task: it measures today's path only.
            if config.decides_orders and not config.intake and paced_rate > 0:
                latencies = paced_latencies_ms(engine, broker.url, config, paced_rate, len(ids))
        # Backends flush their statistics when they disconnect: read after the stop.
        time.sleep(0.5)
        pg = {
            key: (value - pg_before[key]) / len(ids) for key, value in pg_counters(engine).items()
        }
        stats = order_stats(engine) if config.app_module in OURS_APPS else None
        engine.dispose()
        elapsed = finished - started
        return {
            "busy_cores": (busy_after - busy_before) / elapsed,
            "stack_busy_cores": cpu["stack, all roles"] * len(ids) / 1000 / elapsed,
            "context_switches_per_order": switches,
            "broker_calls_per_order": broker_calls,
            "lock_node_calls_per_order": node_calls,
            "postgresql_per_order": pg,
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


def store_intake_records(engine: Engine, batch: list[dict[str, object]]) -> None:
    """Store every order as ``accepted``, with its lines, as the intake record does."""
    with session_factory(engine).begin() as session:
        for payload in batch:
            store_accepted(session, parse_order(dict(payload)))


def paced_latencies_ms(
    engine: Engine, broker_url: str, config: Config, rate: float, already: int
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
        decided: dict[str, Any] = dict(connection.execute(query).all())
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
    parser.add_argument("--grid", default=None, help="workers x processes shapes, e.g. 1x2,2x2")
    parser.add_argument("--stacks", default="floor,ours", help=f"of {','.join(STACKS)}")
    parser.add_argument("--scenarios", default="hot,spread,carts")
    parser.add_argument("--feeds", default="live,prefilled")
    parser.add_argument(
        "--variants", default="", help="NAME=VALUE environments of extra ours rows, ';'-separated"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--paced-rate", type=float, default=100.0, help="orders/s of the latency pass (0: none)"
    )
    args = parser.parse_args()
    wanted = None if args.only is None else args.only.split("|")
    every = (
        CONFIGS
        if args.grid is None
        else grid_configs(
            args.grid.split(","),
            args.stacks.split(","),
            args.scenarios.split(","),
            args.feeds.split(","),
            [v for v in args.variants.split(";") if v],
        )
    )
    configs = [c for c in every if wanted is None or c.name in wanted]
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
                + f"  busy cores {result['busy_cores']:.2f}"
                + f" (stack {result['stack_busy_cores']:.2f})"
                + "  cpu ms/order: "
                + ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms_per_order"].items()),
                flush=True,
            )
    summary = summarize(runs)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "orders": args.orders,
                "rounds": args.rounds,
                "load_average_at_end": os.getloadavg(),
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    print_table(summary)


if __name__ == "__main__":
    main()
