"""docker-compose.yml: its services read statically, and its worker health check run.

Static checks always run. ``docker compose config`` (or ``docker-compose config``)
runs when a working Compose is installed; otherwise that one check reports on the
terminal why it did not run, and the static checks stand in for it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.files import (
    COMPOSE_FILE,
    COMPOSE_VARIABLE,
    ENV_EXAMPLE,
    LOCK_SERVICES,
    ROOT,
    compose_default,
    compose_service,
    service_command,
)
from worker.demo.stack import LocalStack
from worker.settings import Settings


def _duration_s(text: str) -> float:
    """Parse a compose duration such as ``45s``, ``1m30s`` or ``90``."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    for name in ("broker", *LOCK_SERVICES, "postgres", "migrate", "worker", "beat", "flower"):
        compose_service(compose, name)


def test_beat_runs_the_relay_with_the_workers_settings(compose: dict[str, Any]) -> None:
    beat, worker = compose_service(compose, "beat"), compose_service(compose, "worker")
    assert service_command(beat)[:4] == ["celery", "-A", "worker", "beat"]
    # Its schedule file goes where the image's non-root user may write.
    assert any(part.startswith("--schedule=/tmp/") for part in service_command(beat))
    assert beat["environment"] == worker["environment"]
    assert beat["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert beat["depends_on"]["broker"] == {"condition": "service_healthy"}
    assert beat.get("restart") == "unless-stopped"
    for name in ("INTAKE_RELAY_INTERVAL_S", "INTAKE_REPUBLISH_AFTER_S"):
        assert name in beat["environment"]


def test_lock_nodes_are_three_distinct_servers_none_of_them_the_broker(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    env = compose_service(compose, "worker")["environment"]
    broker_host = urlsplit(compose_default(env["CELERY_BROKER_URL"], env_example)).hostname
    nodes = compose_default(env["REDLOCK_NODES"], env_example).split(",")
    lock_hosts = [str(urlsplit(url.strip()).hostname) for url in nodes]
    assert sorted(lock_hosts) == sorted(LOCK_SERVICES)
    assert broker_host == "broker" and broker_host not in lock_hosts
    volumes = [tuple(compose_service(compose, name).get("volumes", [])) for name in LOCK_SERVICES]
    assert all(volumes) and len(set(volumes)) == 3, "each lock node needs its own data volume"
    assert compose_service(compose, "broker")["volumes"] not in [list(v) for v in volumes]


def test_lock_nodes_are_independent_persistent_masters(compose: dict[str, Any]) -> None:
    for name in LOCK_SERVICES:
        command = service_command(compose_service(compose, name))
        text = " ".join(command).lower()
        assert command[0] == "redis-server", name
        assert "replicaof" not in text and "slaveof" not in text, name
        assert "sentinel" not in text, name
        assert command[command.index("--appendonly") + 1] == "yes", name
        assert command[command.index("--appendfsync") + 1] in ("always", "everysec"), name
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction", name
    for name, service in compose["services"].items():
        text = " ".join(service_command(service)).lower()
        assert "sentinel" not in text and "replicaof" not in text, f"{name}: no replication"


def test_worker_scales(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    worker = compose_service(compose, "worker")
    assert "container_name" not in worker, "a fixed name prevents --scale worker=N"
    assert "ports" not in worker, "a fixed host port prevents --scale worker=N"
    hostname = next(part for part in service_command(worker) if part.startswith("--hostname="))
    assert "%h" in hostname, "node names must differ per container"
    time_limits = {
        float(compose_default(worker["environment"]["TASK_TIME_LIMIT_S"], {})),
        float(compose_default(worker["environment"]["TASK_TIME_LIMIT_S"], env_example)),
        Settings().task_time_limit_s,
    }
    grace_s = _duration_s(str(worker["stop_grace_period"]))
    assert grace_s > max(time_limits), (grace_s, time_limits)
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # Celery's warm shutdown


def test_worker_waits_for_migration_and_healthy_services(compose: dict[str, Any]) -> None:
    migrate = compose_service(compose, "migrate")
    assert service_command(migrate)[-3:] == ["flashsale", "db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert "healthcheck" in compose_service(compose, "postgres")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    depends = compose_service(compose, "worker")["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["broker"]["condition"] == "service_healthy"
    for name in ("broker", *LOCK_SERVICES):
        assert "healthcheck" in compose_service(compose, name), name
    # One lock node down must not stop new workers: their own start-up check
    # requires a quorum (tests/worker/test_startup.py), not all three nodes.
    assert not set(LOCK_SERVICES) & set(depends), depends


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(str(part) for part in test[1:])


def test_worker_and_flower_have_health_checks(compose: dict[str, Any]) -> None:
    worker = _healthcheck_text(compose_service(compose, "worker"))
    # $$ is Compose's escape: the shell sees $HOSTNAME, the container's node name (%h).
    assert "celery -A worker inspect ping -d worker@$$HOSTNAME" in worker
    hostname = next(
        p
        for p in service_command(compose_service(compose, "worker"))
        if p.startswith("--hostname=")
    )
    assert hostname == "--hostname=worker@%h"
    flower = _healthcheck_text(compose_service(compose, "flower"))
    assert "http://127.0.0.1:5555/healthcheck" in flower


def test_flower_requires_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose_service(compose, "flower")
    auth = str(flower["environment"]["FLOWER_BASIC_AUTH"])
    match = COMPOSE_VARIABLE.fullmatch(auth)
    assert match and match.group(1) == "FLOWER_BASIC_AUTH" and match.group(2) == ":?", (
        "FLOWER_BASIC_AUTH must be required (${FLOWER_BASIC_AUTH:?...}), never defaulted"
    )
    assert service_command(flower)[:4] == ["celery", "-A", "worker", "flower"]
    for port in flower.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"Flower published beyond loopback: {port}"
    for name, service in compose["services"].items():
        if name not in ("flower", "prometheus", "grafana"):
            assert "ports" not in service, f"{name} publishes a port"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} published beyond loopback"


def _tell(request: pytest.FixtureRequest, message: str) -> None:
    """Write ``message`` on the terminal now, past pytest's output capture."""
    message = " ".join(message.split())
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(message)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n" + message)


def _compose_tool() -> tuple[list[str] | None, str]:
    """Return the Compose command line to use, or None and why there is none."""
    reasons = []
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"], ""
        first_line = (probe.stderr.strip().splitlines() or ["failed"])[0]
        reasons.append(f"`docker compose` does not work: {first_line[:120]}")
    else:
        reasons.append("no docker client")
    if shutil.which("docker-compose"):
        return ["docker-compose"], ""
    reasons.append("no docker-compose")
    return None, "; ".join(reasons)


def test_compose_config_accepts_the_file_and_refuses_flower_without_auth(
    request: pytest.FixtureRequest, tmp_path: Path, env_example: dict[str, str]
) -> None:
    tool, why_not = _compose_tool()
    if tool is None:
        _tell(
            request,
            f"NOTE: docker compose config not run ({why_not}); "
            "the static checks of docker-compose.yml stand in for it",
        )
        return
    env = {k: v for k, v in os.environ.items() if k not in env_example}
    env_file = tmp_path / "complete.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    command = [*tool, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    valid = subprocess.run(
        [*command, "--env-file", str(env_file), "config", "-q"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert valid.returncode == 0, valid.stderr
    no_auth = tmp_path / "no-auth.env"
    no_auth.write_text(
        "\n".join(
            line
            for line in ENV_EXAMPLE.read_text().splitlines()
            if not line.startswith("FLOWER_BASIC_AUTH=")
        )
    )
    refused = subprocess.run(
        [*command, "--env-file", str(no_auth), "config", "-q"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr + refused.stdout


@pytest.mark.slow
def test_the_worker_health_check_command_pings_its_own_node(
    compose: dict[str, Any], procfile_stack: LocalStack
) -> None:
    # Run the compose health check as the container's shell would: $$ is Compose's
    # escape for $, and a container's HOSTNAME is what %h names its node after.
    command = compose_service(compose, "worker")["healthcheck"]["test"][1].replace("$$", "$")
    stack = procfile_stack
    stack.start_worker(name="worker", concurrency=1)
    env = stack.worker_env({"HOSTNAME": socket.gethostname()})
    healthy = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    env["HOSTNAME"] = "no-such-container"
    unhealthy = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=60)
    assert unhealthy.returncode != 0
