"""Client CPU of the hot settlement step: the driver's cursor against SQLAlchemy Core.

    ./dev bench bench/statement_cpu.py [--orders 1000] [--rounds 5] [--out FILE]

One process and a fresh PostgreSQL database. Each round places ``--orders``
orders with `PostgresOrderStore.settle` (record and settle in one autocommitted
statement, as an uncontended order does) once the way the store runs it now
(``cursor``: a pooled connection's own cursor, `PostgresOrderStore._one_row`) and
once through SQLAlchemy Core (``core``: ``connection.execute(text(...)).one()``,
the old way), interleaved, and measures this process's CPU (user + system) per
step. Prints and writes the medians; the round trip and PostgreSQL's own work
are the same for both and are not in the CPU figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from tasks.db import create_db_engine
from tasks.migrate import upgrade
from tasks.pg_store import PLACE_FUNCTION, PostgresOrderStore
from tasks.validation import parse_order
from tests.pg import create_database, drop_database
from tests.sale import seed_products


def core_one_row(store: PostgresOrderStore, sql: str, params: dict[str, Any]) -> Any:
    """`PostgresOrderStore._one_row` of the settlement step through SQLAlchemy Core (before)."""
    with store._statement() as connection:
        return connection.execute(PLACE_FUNCTION, params).one()


class CoreStore(PostgresOrderStore):
    """The store with the settlement run through SQLAlchemy Core, as before."""

    def _one_row(self, sql: str, params: dict[str, Any]) -> Any:
        return core_one_row(self, sql, params)


def cpu_per_step_us(store: PostgresOrderStore, orders: int) -> float:
    """Place ``orders`` fresh orders; return the process CPU per settlement step in us."""
    payloads = [
        parse_order(
            {
                "order_id": str(uuid.uuid4()),
                "customer_id": "c",
                "items": [{"sku": "A", "quantity": 1}],
            }
        )
        for _ in range(orders)
    ]
    started = time.process_time()
    for request in payloads:
        store.settle(
            request, record=True, fence=None, lease_token=None, wait_ms=1.0, budget_ms=None
        )
    return (time.process_time() - started) / orders * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes")
    args = parser.parse_args()
    url = create_database()
    try:
        upgrade(url)
        engine = create_db_engine(url)
        seed_products(engine, {"A": args.orders * args.rounds * 2 + 100})
        stores = {
            "cursor": PostgresOrderStore(engine=engine),
            "core": CoreStore(engine=engine),
        }
        for store in stores.values():
            cpu_per_step_us(store, 100)  # warm up: connections, statement caches
        samples: dict[str, list[float]] = {name: [] for name in stores}
        for round_ in range(args.rounds):
            for name, store in stores.items():
                samples[name].append(cpu_per_step_us(store, args.orders))
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{n} {s[-1]:.1f} us" for n, s in samples.items())
            )
        medians = {name: statistics.median(values) for name, values in samples.items()}
        print(
            f"median client CPU per settlement step: cursor {medians['cursor']:.1f} us,"
            f" core {medians['core']:.1f} us ({medians['cursor'] / medians['core']:.2f}x)"
        )
        if args.out is not None:
            args.out.write_text(
                json.dumps(
                    {
                        "orders": args.orders,
                        "rounds": args.rounds,
                        "load_average_at_end": os.getloadavg(),
                        "cpu_us_per_step_median": medians,
                        "cpu_us_per_step": samples,
                    },
                    indent=2,
                )
            )
        for store in stores.values():
            store.dispose()
        engine.dispose()
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
