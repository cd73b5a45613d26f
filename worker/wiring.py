"""Build the per-process order runtime (engine, store, Redlock, placer) from `Settings`.

The one place that chooses the storage implementation (by the database URL) and
the events sink.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from locking import NodeError, Redlock, RetryPolicy
from tasks.db import create_db_engine
from tasks.events import NULL_EVENTS, OrderEvents
from tasks.pg_store import PostgresOrderStore
from tasks.placement import LockPolicy, OrderPlacer
from tasks.runtime import Runtime, TaskRetrySchedule
from tasks.sqlite_store import SqliteOrderStore
from tasks.store import OrderStore, StoreOptions
from worker.settings import Settings


def build_redlock(
    settings: Settings, *, on_node_error: Callable[[NodeError], None] | None = None
) -> Redlock:
    """Return the Redlock over ``REDLOCK_NODES``; it connects lazily.

    :param on_node_error: called with every node error a lock round meets (metrics).
    """
    return Redlock(
        list(settings.redlock_nodes),
        connect_timeout_ms=settings.redlock_connect_timeout_ms,
        read_timeout_ms=settings.redlock_read_timeout_ms,
        allow_fewer_than_three=settings.redlock_allow_fewer_nodes,
        on_node_error=on_node_error,
    )


def build_store(engine: Engine, options: StoreOptions) -> OrderStore:
    """Return the store for ``engine``'s database: PostgreSQL, or SQLite for the demo."""
    if engine.dialect.name == "postgresql":
        return PostgresOrderStore(engine=engine, options=options)
    if engine.dialect.name == "sqlite":
        return SqliteOrderStore(engine=engine, options=options)
    raise ValueError(f"no order store for the {engine.dialect.name!r} database")


def build_runtime(
    settings: Settings,
    *,
    events: OrderEvents = NULL_EVENTS,
    on_node_error: Callable[[NodeError], None] | None = None,
) -> Runtime:
    """Return a fresh runtime for the calling process.

    :param events: where the order path reports decisions, retries and lock waits.
    :param on_node_error: passed to the order path's Redlock (`build_redlock`).
    """
    engine = create_db_engine(settings.database_url, pool_size=settings.db_pool_size)
    redlock = (
        build_redlock(settings, on_node_error=on_node_error) if settings.lock_enabled else None
    )
    store = build_store(
        engine,
        StoreOptions(max_deliveries=settings.order_max_deliveries, pool_size=settings.db_pool_size),
    )
    policy = LockPolicy(
        ttl_ms=settings.redlock_ttl_ms,
        handoff_ms=settings.redlock_handoff_ms,
        retry_in_task=RetryPolicy(
            attempts=settings.redlock_wait_attempts,
            base_delay_ms=settings.redlock_wait_base_ms,
            max_delay_ms=settings.redlock_wait_max_ms,
        ),
    )
    return Runtime(
        engine=engine,
        redlock=redlock,
        store=store,
        placer=OrderPlacer(store=store, lock=redlock, policy=policy, events=events),
        retries=TaskRetrySchedule(
            max_retries=settings.order_max_retries,
            base_delay_s=settings.order_retry_base_s,
            max_delay_s=settings.order_retry_max_s,
        ),
        events=events,
        republish_after_s=settings.intake_republish_after_s,
    )
