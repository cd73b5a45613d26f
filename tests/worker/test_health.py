"""``flashsale check [--strict]`` against real lock nodes (one SIGKILLed), broker and PostgreSQL."""

from __future__ import annotations

from tests.worker.test_cli import flashsale
from worker.demo.redis_server import RedisServer, free_port


def env_of(broker: RedisServer, nodes: list[RedisServer], database_url: str) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": broker.url,
        "REDLOCK_NODES": ",".join(node.url for node in nodes),
        "DATABASE_URL": database_url,
    }


def test_a_healthy_setup_passes_strict(
    broker: RedisServer, lock_nodes: list[RedisServer], database_url: str
) -> None:
    done = flashsale("check", "--strict", env=env_of(broker, lock_nodes, database_url))
    assert (done.returncode, done.stdout.strip()) == (0, "configuration OK"), done.stderr
    assert "problem" not in done.stderr and "warning" not in done.stderr


def test_one_lock_node_down_fails_strict_and_warns_otherwise(
    broker: RedisServer, lock_nodes: list[RedisServer], database_url: str
) -> None:
    env = env_of(broker, lock_nodes, database_url)
    lock_nodes[1].kill()
    down = f"lock node unreachable: lock node 127.0.0.1:{lock_nodes[1].port}"
    strict = flashsale("check", "--strict", env=env)
    assert strict.returncode == 1
    assert f"problem: {down}" in strict.stderr
    assert "configuration OK" not in strict.stdout
    lenient = flashsale("check", env=env)
    assert lenient.returncode == 0, lenient.stderr
    assert f"warning: {down}" in lenient.stderr
    assert lenient.stdout.strip() == "configuration OK (degraded)"


def test_no_quorum_fails_with_or_without_strict(
    broker: RedisServer, lock_nodes: list[RedisServer], database_url: str
) -> None:
    env = env_of(broker, lock_nodes, database_url)
    lock_nodes[0].kill()
    lock_nodes[2].kill()
    for args in (("check",), ("check", "--strict")):
        done = flashsale(*args, env=env)
        assert done.returncode == 1
        assert done.stderr.count("problem: lock node unusable") == 2, done.stderr


def test_a_database_behind_the_head_migration_fails_strict(
    broker: RedisServer, lock_nodes: list[RedisServer], empty_database_url: str
) -> None:
    env = env_of(broker, lock_nodes, empty_database_url)
    strict = flashsale("check", "--strict", env=env)
    assert strict.returncode == 1
    assert "problem: database is at migration none" in strict.stderr
    assert "flashsale db upgrade" in strict.stderr
    assert flashsale("check", env=env).returncode == 0


def test_an_unreachable_broker_fails_strict(
    lock_nodes: list[RedisServer], database_url: str
) -> None:
    env = {
        "CELERY_BROKER_URL": f"redis://:secret-pw@127.0.0.1:{free_port()}/0",
        "REDLOCK_NODES": ",".join(node.url for node in lock_nodes),
        "DATABASE_URL": database_url,
    }
    strict = flashsale("check", "--strict", env=env)
    assert strict.returncode == 1
    assert "problem: broker redis://" in strict.stderr and "unreachable" in strict.stderr
    assert "secret-pw" not in strict.stderr
    assert flashsale("check", env=env).returncode == 0


def test_json_log_format_for_the_cli(
    broker: RedisServer, lock_nodes: list[RedisServer], database_url: str
) -> None:
    import json

    lock_nodes[0].kill()
    env = {**env_of(broker, lock_nodes, database_url), "LOG_FORMAT": "json"}
    done = flashsale("db", "upgrade", env=env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, "alembic logs its steps at INFO"
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= json.loads(line).keys()
