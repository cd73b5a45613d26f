"""`worker.settings`: defaults, parsing of the environment, and unsafe worker configurations."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from worker.settings import Settings, SettingsError

BROKER = "redis://127.0.0.1:6379/0"
NODES = ("redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003")


def safe(**changes: Any) -> Settings:
    """A configuration a worker may run with, changed by ``changes``."""
    return dataclasses.replace(Settings(broker_url=BROKER, redlock_nodes=NODES), **changes)


def problem_text(settings: Settings) -> str:
    return "\n".join(settings.worker_problems())


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.broker_url, settings.database_url, settings.redlock_nodes) == (
        "redis://127.0.0.1:6379/0",
        "sqlite:///flashsale.sqlite3",
        (),
    )
    assert (settings.order_lock, settings.lock_enabled, settings.redlock_allow_fewer_nodes) == (
        "redlock",
        True,
        False,
    )
    assert (settings.order_max_retries, settings.order_retry_max_s) == (10, 2.0)
    assert (settings.task_time_limit_s, settings.broker_visibility_timeout_s) == (30.0, 120.0)


def test_every_type_is_parsed_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CELERY_BROKER_URL": " redis://127.0.0.1:6400/1 ",
            "REDLOCK_NODES": "redis://a:1, redis://b:2,,redis://c:3 ,",
            "REDLOCK_ALLOW_FEWER_NODES": "YES",
            "ORDER_MAX_RETRIES": "3",
            "ORDER_RETRY_MAX_S": "0.25",
            "ORDER_LOCK": "off",
        }
    )
    assert settings.broker_url == "redis://127.0.0.1:6400/1"
    assert settings.redlock_nodes == ("redis://a:1", "redis://b:2", "redis://c:3")
    assert settings.redlock_allow_fewer_nodes is True
    assert (settings.order_max_retries, settings.order_retry_max_s) == (3, 0.25)
    assert settings.lock_enabled is False


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("on", True), ("0", False), ("No", False)])
def test_booleans_accept_the_usual_spellings(raw: str, value: bool) -> None:
    assert Settings.from_env({"REDLOCK_ALLOW_FEWER_NODES": raw}).redlock_allow_fewer_nodes is value


def test_a_blank_variable_means_the_default() -> None:
    assert Settings.from_env({"ORDER_MAX_RETRIES": "  ", "REDLOCK_NODES": ""}) == Settings()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("ORDER_MAX_RETRIES", "ten"),
        ("DB_POOL_SIZE", "2.5"),
        ("REDLOCK_TTL_MS", "5s"),
        ("ORDER_RETRY_MAX_S", "fast"),
        ("REDLOCK_ALLOW_FEWER_NODES", "maybe"),
    ],
)
def test_a_bad_value_raises_an_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}={raw!r} is not a valid "):
        Settings.from_env({name: raw})


def test_a_safe_configuration_has_no_problems() -> None:
    assert safe().worker_problems() == []


@pytest.mark.parametrize(
    "node",
    ["redis://127.0.0.1:6379/0", "redis://localhost:6379/2", "redis://:secret@localhost:6379"],
)
def test_a_lock_node_that_is_the_broker_is_a_problem(node: str) -> None:
    text = problem_text(safe(redlock_nodes=(*NODES[:2], node)))
    assert "is the Celery broker's Redis server" in text
    assert "secret" not in text


def test_the_broker_named_localhost_matches_a_node_at_127_0_0_1() -> None:
    settings = safe(broker_url="redis://localhost:7002/0")
    assert "is the Celery broker's Redis server" in problem_text(settings)


def test_a_node_on_the_broker_host_but_another_port_is_fine() -> None:
    assert safe(broker_url="redis://127.0.0.1:7004/0").worker_problems() == []


@pytest.mark.parametrize("nodes", [NODES[:1], NODES[:2]])
def test_fewer_than_three_nodes_is_a_problem(nodes: tuple[str, ...]) -> None:
    assert f"REDLOCK_NODES has {len(nodes)} node(s)" in problem_text(safe(redlock_nodes=nodes))


def test_fewer_nodes_are_allowed_when_asked_for() -> None:
    settings = safe(redlock_nodes=NODES[:2], redlock_allow_fewer_nodes=True)
    assert settings.worker_problems() == []


def test_no_lock_nodes_is_a_problem_unless_the_lock_is_off() -> None:
    assert "REDLOCK_NODES is empty" in problem_text(safe(redlock_nodes=()))
    assert safe(redlock_nodes=(), order_lock="off").worker_problems() == []


def test_an_unparsable_node_url_is_a_problem() -> None:
    assert "must start with redis://" in problem_text(
        safe(redlock_nodes=(*NODES[:2], "http://127.0.0.1:7003"))
    )


@pytest.mark.parametrize("visibility_s", [10.0, 32.0])
def test_a_visibility_timeout_not_above_a_task_and_its_backoff_is_a_problem(
    visibility_s: float,
) -> None:
    settings = safe(
        task_time_limit_s=30.0, order_retry_max_s=2.0, broker_visibility_timeout_s=visibility_s
    )
    assert "BROKER_VISIBILITY_TIMEOUT_S must exceed" in problem_text(settings)
    assert dataclasses.replace(settings, broker_visibility_timeout_s=32.5).worker_problems() == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"order_lock": "zookeeper"}, "ORDER_LOCK must be 'redlock' or 'off'"),
        ({"task_soft_time_limit_s": 30.0}, "TASK_SOFT_TIME_LIMIT_S must be below"),
        ({"redlock_ttl_ms": 100}, "REDLOCK_TTL_MS must be above 100 ms"),
        ({"redlock_handoff_ms": -1.0}, "REDLOCK_HANDOFF_MS must be >= 0"),
        ({"redlock_handoff_ms": 60_000.0}, "REDLOCK_HANDOFF_MS must be >= 0"),
        ({"worker_metrics_port": 70_000}, "WORKER_METRICS_PORT must be a TCP port"),
        ({"log_format": "xml"}, "LOG_FORMAT must be one of"),
    ],
)
def test_other_unsafe_values_are_problems(changes: dict[str, object], message: str) -> None:
    assert message in problem_text(safe(**changes))


def test_metrics_are_off_unless_a_port_is_set() -> None:
    assert not Settings.from_env({}).metrics_enabled
    assert not Settings.from_env({"WORKER_METRICS_PORT": "0"}).metrics_enabled
    settings = Settings.from_env({"WORKER_METRICS_PORT": "9808", "LOG_FORMAT": "json"})
    assert (settings.metrics_enabled, settings.log_format) == (True, "json")


AMQP = "amqp://guest:guest@127.0.0.1:5672/sale"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (BROKER, "redis"),
        ("rediss://:pw@broker:6380/0", "redis"),
        (AMQP, "amqp"),
        ("pyamqp://broker//", "amqp"),
        ("amqps://broker:5671/sale", "amqp"),
        ("sqs://", "sqs"),
    ],
)
def test_the_broker_kind_comes_from_the_url_scheme(url: str, kind: str) -> None:
    assert safe(broker_url=url).broker_kind == kind


def test_a_rabbitmq_broker_needs_no_visibility_timeout() -> None:
    # RabbitMQ gives an unacked message back when the consumer's connection closes.
    assert safe(broker_url=AMQP, broker_visibility_timeout_s=1.0).worker_problems() == []
    assert "BROKER_VISIBILITY_TIMEOUT_S" in problem_text(safe(broker_visibility_timeout_s=1.0))


@pytest.mark.parametrize(
    ("broker", "node"),
    [
        (AMQP, "redis://127.0.0.1:5672"),
        ("amqp://guest:guest@localhost//", "redis://127.0.0.1:5672/0"),
        ("amqps://rabbit.internal/sale", "rediss://rabbit.internal:5671"),
    ],
)
def test_a_lock_node_at_the_rabbitmq_broker_address_is_a_problem(broker: str, node: str) -> None:
    settings = safe(broker_url=broker, redlock_nodes=(*NODES[:2], node))
    assert "is the Celery broker's RabbitMQ server" in problem_text(settings)


def test_quorum_queues_need_rabbitmq() -> None:
    assert safe(broker_url=AMQP, broker_quorum_queues=True).worker_problems() == []
    assert "BROKER_QUORUM_QUEUES" in problem_text(safe(broker_quorum_queues=True))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"broker_url": "sqs://"}, "must be a redis:// or amqp:// URL"),
        ({"broker_reconnect_interval_s": 0.0}, "BROKER_RECONNECT_INTERVAL_S"),
        ({"broker_reconnect_interval_s": 61.0}, "BROKER_RECONNECT_INTERVAL_S"),
    ],
)
def test_unsupported_broker_settings_are_problems(changes: dict[str, object], message: str) -> None:
    assert message in problem_text(safe(**changes))
