"""Typed settings read from the environment; every variable is listed in the README.

Reading settings never connects anywhere. `Settings.worker_problems` lists what
makes a configuration unsafe to run a worker with (a lock node that is the
broker, fewer than three lock nodes...), so start-up can refuse it loudly.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from locking import ConfigurationError, NodeAddress, redact_url
from tasks.placement import LockPolicy
from tasks.runtime import TaskRetrySchedule
from tasks.store import StoreOptions

# The defaults of the order path are defined once, by the classes that use them.
_LOCK = LockPolicy()
_RETRIES = TaskRetrySchedule()
_STORE = StoreOptions()

#: ``text`` is Celery's own format; ``json`` is one JSON object per line (worker.logformat).
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """The environment holds a value that cannot be used; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a worker, Flower or the CLI needs, with production-minded defaults."""

    broker_url: str = field(
        default="redis://127.0.0.1:6379/0", metadata={"env": "CELERY_BROKER_URL"}
    )
    database_url: str = field(
        default="sqlite:///flashsale.sqlite3", metadata={"env": "DATABASE_URL"}
    )
    redlock_nodes: tuple[str, ...] = field(default=(), metadata={"env": "REDLOCK_NODES"})
    order_lock: str = field(default="redlock", metadata={"env": "ORDER_LOCK"})
    redlock_allow_fewer_nodes: bool = field(
        default=False, metadata={"env": "REDLOCK_ALLOW_FEWER_NODES"}
    )
    redlock_ttl_ms: int = field(default=_LOCK.ttl_ms, metadata={"env": "REDLOCK_TTL_MS"})
    redlock_handoff_ms: float = field(
        default=_LOCK.handoff_ms, metadata={"env": "REDLOCK_HANDOFF_MS"}
    )
    redlock_wait_attempts: int = field(
        default=_LOCK.retry_in_task.attempts, metadata={"env": "REDLOCK_WAIT_ATTEMPTS"}
    )
    redlock_wait_base_ms: float = field(
        default=_LOCK.retry_in_task.base_delay_ms, metadata={"env": "REDLOCK_WAIT_BASE_MS"}
    )
    redlock_wait_max_ms: float = field(
        default=_LOCK.retry_in_task.max_delay_ms, metadata={"env": "REDLOCK_WAIT_MAX_MS"}
    )
    redlock_connect_timeout_ms: float = field(
        default=50.0, metadata={"env": "REDLOCK_CONNECT_TIMEOUT_MS"}
    )
    redlock_read_timeout_ms: float = field(
        default=50.0, metadata={"env": "REDLOCK_READ_TIMEOUT_MS"}
    )
    order_max_retries: int = field(
        default=_RETRIES.max_retries, metadata={"env": "ORDER_MAX_RETRIES"}
    )
    order_retry_base_s: float = field(
        default=_RETRIES.base_delay_s, metadata={"env": "ORDER_RETRY_BASE_S"}
    )
    order_retry_max_s: float = field(
        default=_RETRIES.max_delay_s, metadata={"env": "ORDER_RETRY_MAX_S"}
    )
    order_max_deliveries: int = field(
        default=_STORE.max_deliveries, metadata={"env": "ORDER_MAX_DELIVERIES"}
    )
    task_soft_time_limit_s: float = field(default=20.0, metadata={"env": "TASK_SOFT_TIME_LIMIT_S"})
    task_time_limit_s: float = field(default=30.0, metadata={"env": "TASK_TIME_LIMIT_S"})
    broker_visibility_timeout_s: float = field(
        default=120.0, metadata={"env": "BROKER_VISIBILITY_TIMEOUT_S"}
    )
    broker_quorum_queues: bool = field(default=False, metadata={"env": "BROKER_QUORUM_QUEUES"})
    broker_reconnect_interval_s: float = field(
        default=0.5, metadata={"env": "BROKER_RECONNECT_INTERVAL_S"}
    )
    db_pool_size: int = field(default=_STORE.pool_size, metadata={"env": "DB_POOL_SIZE"})
    worker_metrics_port: int = field(default=0, metadata={"env": "WORKER_METRICS_PORT"})
    log_format: str = field(default="text", metadata={"env": "LOG_FORMAT"})
    intake_relay_interval_s: float = field(default=5.0, metadata={"env": "INTAKE_RELAY_INTERVAL_S"})
    intake_republish_after_s: float = field(
        default=60.0, metadata={"env": "INTAKE_REPUBLISH_AFTER_S"}
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``); unset means default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"])
            if raw is not None and raw.strip() != "":
                values[spec.name] = _convert(spec.metadata["env"], raw.strip(), spec.default)
        return cls(**values)

    @property
    def metrics_enabled(self) -> bool:
        """True when WORKER_METRICS_PORT is set: the worker serves /metrics on it."""
        return self.worker_metrics_port > 0

    @property
    def broker_kind(self) -> str:
        """``redis`` or ``amqp`` (RabbitMQ) from the broker URL's scheme; else the scheme."""
        return broker_kind(self.broker_url)

    @property
    def lock_enabled(self) -> bool:
        """False only when ORDER_LOCK=off (the database guard alone; for benchmarks)."""
        return self.order_lock != "off"

    def worker_problems(self) -> list[str]:
        """Return every reason this configuration must not run a worker (empty when fine)."""
        problems: list[str] = []
        if self.order_lock not in ("redlock", "off"):
            problems.append(f"ORDER_LOCK must be 'redlock' or 'off', got {self.order_lock!r}")
        if self.lock_enabled:
            problems += self._lock_node_problems()
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            problems.append("TASK_SOFT_TIME_LIMIT_S must be below TASK_TIME_LIMIT_S")
        problems += self._broker_problems()
        if not 0 <= self.worker_metrics_port <= 65535:
            problems.append("WORKER_METRICS_PORT must be a TCP port (0 or unset: no metrics)")
        if self.log_format not in LOG_FORMATS:
            problems.append(f"LOG_FORMAT must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if self.intake_relay_interval_s <= 0:
            problems.append("INTAKE_RELAY_INTERVAL_S must be above 0")
        if self.intake_republish_after_s <= self.intake_relay_interval_s:
            problems.append("INTAKE_REPUBLISH_AFTER_S must exceed INTAKE_RELAY_INTERVAL_S")
        if self.redlock_ttl_ms <= 100:
            problems.append("REDLOCK_TTL_MS must be above 100 ms")
        if not 0 <= self.redlock_handoff_ms < self.task_soft_time_limit_s * 1000:
            problems.append("REDLOCK_HANDOFF_MS must be >= 0 and below the soft time limit")
        return problems

    def _broker_problems(self) -> list[str]:
        problems: list[str] = []
        if self.broker_kind not in ("redis", "amqp"):
            problems.append(
                f"CELERY_BROKER_URL must be a redis:// or amqp:// URL, got scheme "
                f"{self.broker_kind!r}"
            )
        # Only the Redis transport hides unacked messages for a timeout; RabbitMQ gives
        # them back the moment the consumer's connection closes.
        if (
            self.broker_kind == "redis"
            and self.broker_visibility_timeout_s <= self.task_time_limit_s + self.order_retry_max_s
        ):
            problems.append(
                "BROKER_VISIBILITY_TIMEOUT_S must exceed TASK_TIME_LIMIT_S + ORDER_RETRY_MAX_S, "
                "or a slow task would be delivered twice"
            )
        if self.broker_quorum_queues and self.broker_kind != "amqp":
            problems.append("BROKER_QUORUM_QUEUES=true needs a RabbitMQ (amqp://) broker")
        if not 0 < self.broker_reconnect_interval_s <= 60:
            problems.append("BROKER_RECONNECT_INTERVAL_S must be above 0 and at most 60")
        return problems

    def _lock_node_problems(self) -> list[str]:
        if not self.redlock_nodes:
            return ["REDLOCK_NODES is empty: give three redis:// URLs of independent lock nodes"]
        problems: list[str] = []
        if len(self.redlock_nodes) < 3 and not self.redlock_allow_fewer_nodes:
            problems.append(
                f"REDLOCK_NODES has {len(self.redlock_nodes)} node(s); Redlock needs at least 3 "
                "independent nodes (REDLOCK_ALLOW_FEWER_NODES=true is for development only)"
            )
        broker = _endpoint(self.broker_url)
        for url in self.redlock_nodes:
            try:
                address = NodeAddress.from_url(url)
            except ConfigurationError as error:
                problems.append(str(error))
                continue
            if broker is not None and _same_endpoint(broker, (address.host, address.port)):
                server = "Redis" if self.broker_kind == "redis" else "RabbitMQ"
                problems.append(
                    f"lock node {redact_url(url)} is the Celery broker's {server} server; lock "
                    "nodes must be separate servers (a broker restart would drop every lock)"
                )
        return problems


def _convert(name: str, raw: str, default: object) -> object:
    converters: dict[type, Callable[[str], object]] = {
        bool: _to_bool,
        int: int,
        float: float,
        str: str,
        tuple: lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
    }
    try:
        value = converters[type(default)](raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(raw)
        return value
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None


def _to_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


#: Broker URL schemes by kind, with the default port of each scheme.
_BROKER_SCHEMES = {
    "redis": {"redis": 6379, "rediss": 6379},
    "amqp": {"amqp": 5672, "pyamqp": 5672, "amqps": 5671},
}


def broker_kind(url: str) -> str:
    """``redis`` or ``amqp`` for the schemes of those brokers; otherwise the URL's scheme."""
    scheme = urlsplit(url).scheme
    for kind, schemes in _BROKER_SCHEMES.items():
        if scheme in schemes:
            return kind
    return scheme


def _endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of a Redis or RabbitMQ broker URL, default ports filled in."""
    parts = urlsplit(url)
    default_port = _BROKER_SCHEMES.get(broker_kind(url), {}).get(parts.scheme)
    if default_port is None or not parts.hostname:
        return None
    return parts.hostname, parts.port or default_port


def _same_endpoint(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and _resolve(a[0]) == _resolve(b[0])


def _resolve(host: str) -> set[str]:
    """Return the addresses of ``host``, so that localhost and 127.0.0.1 compare equal."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return {host}
    addresses = {str(info[4][0]) for info in infos}
    # 'localhost' may resolve to ::1 and 127.0.0.1; treat all loopback as one host.
    return {"loopback" if a in ("::1", "127.0.0.1") else a for a in addresses}
