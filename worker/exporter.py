"""``flashsale exporter``: the database-derived metrics, served from one process.

Why a process of its own and not the workers: the figures are the same for
every worker (they come from the one database), so N workers exporting them would
multiply the series and the queries; one exporter gives one series. Why not the
beat process: it is optional (a later relay adds one) and should do one thing.
The query runs when Prometheus scrapes (every 15 s by default), one indexed
aggregate over the open orders, so the figures are never older than the scrape.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from tasks.db import create_db_engine
from tasks.models import TERMINAL, Order, OrderStatus

logger = logging.getLogger(__name__)

#: Statuses reported by ``flashsale_open_orders`` even at 0 (every non-terminal one).
OPEN_STATUSES = tuple(status.value for status in OrderStatus if status not in TERMINAL)


class OpenOrdersCollector(Collector):
    """Query the open orders at each scrape.

    :param engine: the order database.
    :param now: clock returning an aware UTC datetime (injectable for tests).
    """

    def __init__(self, engine: Engine, now: type[datetime] = datetime) -> None:
        self._engine = engine
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield ``flashsale_open_orders{status}``, the oldest open order's age and ``up``."""
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(
                    select(Order.status, func.count(), func.min(Order.created_at))
                    .where(Order.status.in_(OPEN_STATUSES))  # the open orders' partial indexes
                    .group_by(Order.status)
                ).all()
        except SQLAlchemyError as error:
            logger.warning("Open orders query failed: %s", type(error).__name__)
            up = GaugeMetricFamily(
                "flashsale_exporter_database_up", "1 when the last query succeeded."
            )
            up.add_metric([], 0)
            yield up
            return
        counts = {status: 0 for status in OPEN_STATUSES}
        oldest: datetime | None = None
        for status, count, created_at in rows:
            counts[str(status)] = int(count)
            if created_at is not None:
                created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
                oldest = created if oldest is None else min(oldest, created)
        open_orders = GaugeMetricFamily(
            "flashsale_open_orders", "Orders not decided yet, by status.", labels=["status"]
        )
        for name, count in sorted(counts.items()):
            open_orders.add_metric([name], count)
        yield open_orders
        age = GaugeMetricFamily(
            "flashsale_oldest_open_order_age_seconds",
            "Age of the oldest open order (0 when none is open).",
        )
        age.add_metric([], max(0.0, (self._now.now(UTC) - oldest).total_seconds()) if oldest else 0)
        yield age
        up = GaugeMetricFamily("flashsale_exporter_database_up", "1 when the last query succeeded.")
        up.add_metric([], 1)
        yield up


def serve(database_url: str, *, port: int, host: str = "0.0.0.0") -> tuple[object, Engine]:
    """Start serving the database metrics on ``port``; return (server, engine)."""
    engine = create_db_engine(database_url, pool_size=1)
    registry = CollectorRegistry()
    registry.register(OpenOrdersCollector(engine))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, engine


def serve_forever(database_url: str, *, port: int, host: str = "0.0.0.0") -> None:
    """Serve the database metrics on ``port`` until interrupted."""
    serve(database_url, port=port, host=host)
    logger.info("Serving database metrics on port %d", port)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
