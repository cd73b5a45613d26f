"""The demo's database: a fresh SQLite file, or the PostgreSQL of DATABASE_URL, never clobbered.

With no PostgreSQL configured the demo migrates a new SQLite file in a temporary
directory and deletes it at the end. With ``DATABASE_URL=postgresql://...`` it
migrates that database to head (idempotent) and adds products whose SKUs carry
the run's id (``DEMO-<run>-<n>``), so it never touches an existing product or
order; the demo's rows stay afterwards, for inspection.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, create_engine

from tasks.db import create_db_engine, normalize_url, session_factory
from tasks.migrate import upgrade
from tasks.models import Product

logger = logging.getLogger(__name__)


def is_postgresql(url: str) -> bool:
    """Return true when ``url`` is a PostgreSQL URL."""
    return normalize_url(url).get_backend_name() == "postgresql"


@dataclass
class DemoDatabase:
    """Where the demo's sale is stored; use as a context manager.

    :param configured_url: the DATABASE_URL setting; only a PostgreSQL URL is used.
    """

    configured_url: str
    url: str = ""
    temp_dir: Path | None = None
    _engines: list[Engine] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """A human label: ``PostgreSQL (DATABASE_URL)`` or ``SQLite (temporary file)``."""
        return "SQLite (temporary file)" if self.temp_dir else "PostgreSQL (DATABASE_URL)"

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return normalize_url(self.url).get_backend_name()

    def __enter__(self) -> DemoDatabase:
        if is_postgresql(self.configured_url):
            self.url = self.configured_url
        else:
            self.temp_dir = Path(tempfile.mkdtemp(prefix="flashsale-demo-db-"))
            self.url = f"sqlite:///{self.temp_dir / 'demo.sqlite3'}"
        logger.debug("Demo database: %s", self.kind)
        return self

    def __exit__(self, *exc: object) -> None:
        for engine in self._engines:
            engine.dispose()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def migrate(self) -> None:
        """Bring the schema to head (a no-op on an up-to-date database)."""
        upgrade(self.url)

    def seed(self, stock_by_sku: dict[str, int]) -> None:
        """Create one product per SKU with its stock.

        :param stock_by_sku: units on sale per new SKU; an existing SKU is an error.
        """
        engine = create_db_engine(self.url)
        self._engines.append(engine)
        with session_factory(engine).begin() as session:
            for number, (sku, units) in enumerate(stock_by_sku.items(), start=1):
                session.add(
                    Product(
                        sku=sku,
                        name=f"Demo product {number}",
                        stock=units,
                        initial_stock=units,
                        fence=0,
                    )
                )

    def reader(self) -> Engine:
        """Return an engine for the demo's own reads (progress, summary).

        On SQLite it is a plain engine: a read in WAL mode does not take the write
        lock the workers' ``BEGIN IMMEDIATE`` transactions queue for.
        """
        if self.backend == "sqlite":
            engine = create_engine(normalize_url(self.url), connect_args={"timeout": 30})
        else:
            engine = create_db_engine(self.url, pool_size=1)
        self._engines.append(engine)
        return engine
