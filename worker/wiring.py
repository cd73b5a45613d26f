"""Build the per-process order runtime (engine, Redlock, placer) from `Settings`."""

from __future__ import annotations

from locking import Redlock, RetryPolicy
from tasks.db import create_db_engine, session_factory
from tasks.placement import LockPolicy, OrderPlacer
from tasks.runtime import RetryBudget, Runtime
from tasks.store import OrderStore
from worker.settings import Settings


def build_redlock(settings: Settings) -> Redlock:
    """Return the Redlock over ``REDLOCK_NODES``; it connects lazily."""
    return Redlock(
        list(settings.redlock_nodes),
        connect_timeout_ms=settings.redlock_connect_timeout_ms,
        read_timeout_ms=settings.redlock_read_timeout_ms,
        allow_fewer_than_three=settings.redlock_allow_fewer_nodes,
    )


def build_runtime(settings: Settings) -> Runtime:
    """Return a fresh runtime for the calling process."""
    engine = create_db_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    redlock = build_redlock(settings) if settings.lock_enabled else None
    store = OrderStore(
        engine=engine,
        max_deliveries=settings.order_max_deliveries,
        pool_size=settings.db_pool_size,
    )
    policy = LockPolicy(
        ttl_ms=settings.redlock_ttl_ms,
        handoff_ms=settings.redlock_handoff_ms,
        wait=RetryPolicy(
            attempts=settings.redlock_wait_attempts,
            base_delay_ms=settings.redlock_wait_base_ms,
            max_delay_ms=settings.redlock_wait_max_ms,
        ),
    )
    return Runtime(
        engine=engine,
        sessions=sessions,
        redlock=redlock,
        store=store,
        placer=OrderPlacer(store=store, redlock=redlock, policy=policy),
        budget=RetryBudget(
            max_retries=settings.order_max_retries,
            base_s=settings.order_retry_base_s,
            max_s=settings.order_retry_max_s,
            max_deliveries=settings.order_max_deliveries,
        ),
        republish_after_s=settings.intake_republish_after_s,
    )
