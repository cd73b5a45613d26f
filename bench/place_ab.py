"""PostgreSQL's cost of one uncontended order: revision 0005's functions against the head's.

    ./dev bench bench/place_ab.py [--orders 1000] [--rounds 5] [--out bench/results/x.json]

Two fresh databases on the local server: one migrated to 0005 (the functions and
the full status index as that revision deployed them), one to the head. Each
order is placed the uncontended way, through `PostgresOrderStore.settle` with
``record=True`` (one autocommitted ``flashsale_place``), on one hot SKU, in
three scenarios: ``new`` (the order's first row), ``intake`` (an ``accepted`` row
stored beforehand, untimed, as `submit_order(..., session=...)` leaves it) and
``new, unanalyzed`` (as ``new``, on order tables never ANALYZEd). Every database
starts with 5,000 decided orders of the SKU (ANALYZEd but in the last scenario);
autovacuum is off on every order table so that no plan changes mid-run. Rounds
interleave the two databases, alternating which goes first. Reports per scenario
and database the median over rounds of the wall time per order (client side) and
of the CPU the database's backends used per order (from /proc), and the ratios
head/0005.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.cpu_usage import process_cpu_s
from tasks.db import create_db_engine, session_factory
from tasks.intake import store_accepted
from tasks.migrate import upgrade
from tasks.pg_store import PostgresOrderStore
from tasks.store import StoreOptions
from tasks.validation import OrderRequest, parse_order
from tests.pg import create_database, drop_database
from tests.sale import seed_products

REVISIONS = {"0005": "0005", "head": "head"}
SCENARIOS = ("new", "intake", "new, unanalyzed")
#: Decided orders of the SKU in every database before the first round.
DECIDED_BEFORE = 5000
RESULTS = Path(__file__).with_name("results") / "2026-12-01-db-place-ab.json"


def new_order() -> OrderRequest:
    """A one-line order of the hot SKU."""
    return parse_order(
        {
            "order_id": str(uuid.uuid4()),
            "customer_id": "c",
            "items": [{"sku": "HOT", "quantity": 1}],
        }
    )


def prepare(revision: str, scenario: str) -> tuple[str, Engine, PostgresOrderStore]:
    """A fresh database at ``revision`` set up for ``scenario``; its engine and store."""
    url = create_database()
    upgrade(url, revision)
    engine = create_db_engine(url)
    with engine.begin() as connection:
        for table in ("orders", "order_items", "stock_movements", "products"):
            connection.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    seed_products(engine, {"HOT": 10**8})
    with engine.begin() as connection:
        connection.execute(
            text(
                "WITH o AS (INSERT INTO orders (id, customer_id, status, payload_hash,"
                " attempts, decided_at) SELECT gen_random_uuid(), 'c', 'confirmed', 'h', 1,"
                " now() FROM generate_series(1, :n) RETURNING id)"
                " INSERT INTO order_items (order_id, sku, quantity) SELECT id, 'HOT', 1 FROM o"
            ),
            {"n": DECIDED_BEFORE},
        )
        if scenario != "new, unanalyzed":
            # Statistics of a table that is not empty: analyzed empty, the planner
            # (and the foreign keys' cached checks) would scan it for a key.
            connection.exec_driver_sql("ANALYZE")
    return url, engine, PostgresOrderStore(engine=engine, options=StoreOptions(pool_size=1))


def backend_pids(engine: Engine) -> list[int]:
    """The pids of the server processes serving the database (the store's connection)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        )
        return [int(row[0]) for row in rows]


def run_round(
    engine: Engine, store: PostgresOrderStore, scenario: str, orders: int
) -> dict[str, float]:
    """Place ``orders`` orders; return wall and backend CPU ms per order."""
    batch = [new_order() for _ in range(orders)]
    if scenario == "intake":
        with session_factory(engine).begin() as session:
            for order in batch:
                store_accepted(session, order)
    pids = backend_pids(engine)
    cpu_before = sum(process_cpu_s(pid) for pid in pids)
    started = time.perf_counter()
    for order in batch:
        step = store.settle(
            order, record=True, fence=None, lease_token=None, wait_ms=0.0, budget_ms=4000.0
        )
        assert step.state.status.value == "confirmed", step.state
    wall_s = time.perf_counter() - started
    cpu_s = sum(process_cpu_s(pid) for pid in pids) - cpu_before
    return {"wall_ms": wall_s * 1000 / orders, "cpu_ms": cpu_s * 1000 / orders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    databases: dict[tuple[str, str], tuple[str, Engine, PostgresOrderStore]] = {}
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        scenario: {name: [] for name in REVISIONS} for scenario in SCENARIOS
    }
    try:
        for scenario in SCENARIOS:
            for name, revision in REVISIONS.items():
                databases[scenario, name] = prepare(revision, scenario)
                _, engine, store = databases[scenario, name]
                run_round(engine, store, scenario, 50)  # warm the connection and plans
        for index in range(args.rounds):
            for scenario in SCENARIOS:
                names = list(REVISIONS) if index % 2 == 0 else list(reversed(REVISIONS))
                for name in names:
                    _, engine, store = databases[scenario, name]
                    samples[scenario][name].append(run_round(engine, store, scenario, args.orders))
            print(f"round {index + 1}/{args.rounds} done", flush=True)
    finally:
        for url, engine, store in databases.values():
            store.dispose()
            engine.dispose()
            drop_database(url)
    report: dict[str, Any] = {
        "orders_per_round": args.orders,
        "rounds": args.rounds,
        "note": "host shared with other test suites (2 cores): compare ratios, not absolutes",
        "scenarios": {},
    }
    for scenario, by_name in samples.items():
        medians = {
            name: {key: statistics.median(s[key] for s in runs) for key in ("wall_ms", "cpu_ms")}
            for name, runs in by_name.items()
        }
        report["scenarios"][scenario] = {
            "median": medians,
            "rounds": by_name,
            "ratio_head_over_0005": {
                key: medians["head"][key] / medians["0005"][key] for key in ("wall_ms", "cpu_ms")
            },
        }
        print(
            f"{scenario:>16}: wall ms/order 0005 {medians['0005']['wall_ms']:.3f}"
            f" head {medians['head']['wall_ms']:.3f}; PostgreSQL CPU ms/order"
            f" 0005 {medians['0005']['cpu_ms']:.3f} head {medians['head']['cpu_ms']:.3f}"
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
