"""Messages published per order by the intake record and its relay, in a sale with a backlog.

    ./dev bench bench/intake_amplification.py [--orders 20000] [--republish-after-s 60]

Starts a PostgreSQL database (on the local server), three lock nodes, a broker,
real ``celery worker`` processes and ``celery beat`` (the relay). Web threads
submit every order through the intake record (``submit_order(..., session=...)``,
one transaction each) as fast as they can, far faster than the workers decide
them: the queue holds a backlog whose oldest order waits longer than
``INTAKE_REPUBLISH_AFTER_S``. No fault is injected. Messages per order are
``(orders published after their commit + publications by the relay) / orders``;
task retries are not publications of an order and are not counted. Writes
bench/results/intake_amplification.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

import redis
from sqlalchemy import Engine, text

from tasks.db import create_db_engine, session_factory
from tasks.migrate import upgrade
from tasks.producer import submit_order
from tests.pg import create_database, drop_database
from tests.sale import producer, random_carts, seed_products
from worker.demo.stack import LocalStack

RESULTS = Path(__file__).with_name("results") / "intake_amplification.json"


class Counter(logging.Handler):
    """Counts the records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def submit(engine: Engine, broker_url: str, carts: list[dict[str, object]]) -> None:
    """Submit ``carts`` through the intake record, one transaction each (one web thread)."""
    sessions = session_factory(engine)
    with producer(broker_url) as app:
        for cart in carts:
            with sessions.begin() as session:
                submit_order(
                    app,
                    customer_id=str(cart["customer_id"]),
                    items=cart["items"],  # type: ignore[arg-type]
                    order_id=str(cart["order_id"]),
                    session=session,
                )


def sample(engine: Engine, broker_port: int, after_s: float) -> tuple[int, int, float, int]:
    """(open orders, messages queued, age in s of the oldest open order's publication,
    open orders neither published nor delivered for ``after_s``: the relay's candidates)."""
    with engine.connect() as connection:
        open_orders, oldest_s, candidates = connection.execute(
            text(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(coalesce("
                "published_at, created_at))), 0), count(*) FILTER (WHERE"
                " coalesce(published_at, created_at) < now() - make_interval(secs => :after)"
                " AND (delivered_at IS NULL OR delivered_at < now() - make_interval(secs =>"
                " :after))) FROM orders WHERE status IN ('accepted', 'pending')"
            ),
            {"after": after_s},
        ).one()
    with redis.Redis(port=broker_port) as client:
        queued = int(client.llen("celery"))
    return int(open_orders), queued, float(oldest_s), int(candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--web-threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--relay-interval-s", type=float, default=5.0)
    parser.add_argument("--republish-after-s", type=float, default=60.0)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args()
    failed_publishes = Counter()
    logging.getLogger("tasks.intake").addHandler(failed_publishes)
    env = {
        "INTAKE_RELAY_INTERVAL_S": str(args.relay_interval_s),
        "INTAKE_REPUBLISH_AFTER_S": str(args.republish_after_s),
    }
    url = create_database()
    try:
        upgrade(url)
        engine = create_db_engine(url, pool_size=args.web_threads + 2)
        skus = [f"S{i:02d}" for i in range(20)]
        seed_products(engine, dict.fromkeys(skus, args.orders // 20))
        carts = random_carts(args.orders, skus, max_lines=2, max_quantity=1, seed=1)
        with LocalStack(env={"DATABASE_URL": url, **env}) as stack:
            stack.start_lock_nodes(3)
            broker = stack.start_broker()
            for _ in range(args.workers):
                stack.start_worker(concurrency=args.concurrency)
            stack.start_beat()
            started_s = time.monotonic()
            threads = [
                threading.Thread(
                    target=submit,
                    args=(engine, broker.url, carts[index :: args.web_threads]),
                    daemon=True,
                )
                for index in range(args.web_threads)
            ]
            for thread in threads:
                thread.start()
            peak_queue, peak_age_s, peak_candidates, open_orders = 0, 0.0, 0, 1
            while time.monotonic() - started_s < args.timeout_s:
                open_orders, queued, oldest_s, candidates = sample(
                    engine, broker.port, args.republish_after_s
                )
                peak_queue, peak_age_s = max(peak_queue, queued), max(peak_age_s, oldest_s)
                peak_candidates = max(peak_candidates, candidates)
                if open_orders == 0 and not any(thread.is_alive() for thread in threads):
                    break
                time.sleep(1.0)
            elapsed_s = time.monotonic() - started_s
            with engine.connect() as connection:
                decided, relayed, relay_publications = connection.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE status NOT IN ('accepted', 'pending')),"
                        " count(*) FILTER (WHERE republications > 0),"
                        " coalesce(sum(republications), 0) FROM orders"
                    )
                ).one()
        engine.dispose()
    finally:
        drop_database(url)
    # One publish after each commit, but those that failed (logged by tasks.intake and
    # left to the relay, whose publications are counted apart).
    published = args.orders - failed_publishes.count + int(relay_publications)
    result = {
        "orders": args.orders,
        "decided": int(decided),
        "still_open": int(open_orders),
        "relayed_orders": int(relayed),
        "relay_publications": int(relay_publications),
        "failed_publishes_after_commit": failed_publishes.count,
        "messages_per_order": round(published / args.orders, 4),
        "peak_queue": peak_queue,
        "oldest_open_order_s": round(peak_age_s, 1),
        "peak_candidates": peak_candidates,
        "republish_after_s": args.republish_after_s,
        "relay_interval_s": args.relay_interval_s,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "web_threads": args.web_threads,
        "duration_s": round(elapsed_s, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
