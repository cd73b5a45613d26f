"""``flashsale check``: is this deployment healthy, degraded, or unable to run?

`problems` stop a worker (bad settings, no lock quorum) and fail the check
always; `warnings` are a degraded but working deployment (a lock node down while
a quorum remains, the database behind the head migration, the broker
unreachable) and fail the check only with ``--strict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from kombu import Connection  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError

from locking import redact_url
from tasks.db import create_db_engine
from tasks.migrate import alembic_config
from worker.settings import Settings
from worker.wiring import build_redlock

#: Bound on reaching the broker or the database for one check.
CHECK_TIMEOUT_S = 3.0


@dataclass
class Health:
    """What one check found."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def failed(self, *, strict: bool) -> bool:
        """True when the check must exit non-zero."""
        return bool(self.problems or (strict and self.warnings))


def check(settings: Settings) -> Health:
    """Check the settings, every lock node, the database's migration and the broker."""
    health = Health(problems=settings.worker_problems())
    if settings.lock_enabled and not health.problems:
        redlock = build_redlock(settings)
        try:
            errors = [error for error in redlock.ping().values() if error is not None]
        finally:
            redlock.close()
        # The worker's start-up rule (worker.signals.startup_problems): a lost quorum
        # stops it; fewer nodes down is a degraded lock that still grants.
        if len(errors) > len(settings.redlock_nodes) - redlock.quorum:
            health.problems += [f"lock node unusable: {error}" for error in errors]
        else:
            health.warnings += [f"lock node unreachable: {error}" for error in errors]
    health.warnings += _database_warnings(settings.database_url)
    health.warnings += _broker_warnings(settings.broker_url)
    return health


def _database_warnings(database_url: str) -> list[str]:
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError as error:
        return [f"database {redact_url(database_url)} unreachable: {type(error).__name__}"]
    finally:
        engine.dispose()
    if current != heads:
        return [
            f"database is at migration {sorted(current) or 'none'}, head is {sorted(heads)}: "
            "run `flashsale db upgrade`"
        ]
    return []


def _broker_warnings(broker_url: str) -> list[str]:
    try:
        with Connection(broker_url, connect_timeout=CHECK_TIMEOUT_S) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_S)
    except Exception as error:  # kombu raises the transport's own errors
        return [f"broker {redact_url(broker_url)} unreachable: {error}"]
    return []
