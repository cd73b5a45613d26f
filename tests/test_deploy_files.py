"""The deployment files: docker-compose.yml, .env.example and the Procfile, read and run.

Static checks always run. ``docker compose config`` (or ``docker-compose config``)
runs when a working Compose is installed; otherwise that one check reports on the
terminal why it did not run, and the static checks stand in for it. The Procfile's
commands are run for real through ``sh -c``, as honcho runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]
from celery import Celery
from sqlalchemy import create_engine, inspect

from worker.demo.flower import flower_command, http_status, wait_until_answering
from worker.demo.redis_server import free_port
from worker.demo.stack import LocalStack
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROCFILE = ROOT / "Procfile"
LOCK_SERVICES = ("lock1", "lock2", "lock3")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` and friends.
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SETTINGS_VARIABLES = sorted(spec.metadata["env"] for spec in fields(Settings))


# --- docker-compose.yml -----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file (anchors and merge keys resolved by YAML itself)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """NAME -> value of every assignment in .env.example."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service = compose["services"].get(name)
    assert isinstance(service, dict), f"service {name!r} missing"
    return service


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return [str(part) for part in (command.split() if isinstance(command, str) else command)]


def _default(value: str, env_example: dict[str, str]) -> str:
    """Resolve ``${NAME:-default}`` as compose does with .env.example as its .env."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        given = env_example.get(name, "")
        if operator in (":-", "-") and not given:
            return default
        return given

    return COMPOSE_VARIABLE.sub(substitute, value)


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
        _service(compose, name)


def test_beat_runs_the_relay_with_the_workers_settings(compose: dict[str, Any]) -> None:
    beat, worker = _service(compose, "beat"), _service(compose, "worker")
    assert _command(beat)[:4] == ["celery", "-A", "worker", "beat"]
    # Its schedule file goes where the image's non-root user may write.
    assert any(part.startswith("--schedule=/tmp/") for part in _command(beat))
    assert beat["environment"] == worker["environment"]
    assert beat["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert beat["depends_on"]["broker"] == {"condition": "service_healthy"}
    assert beat.get("restart") == "unless-stopped"
    for name in ("INTAKE_RELAY_INTERVAL_S", "INTAKE_REPUBLISH_AFTER_S"):
        assert name in beat["environment"]


#: ``name:version[-variant]``; PostgreSQL (10+) numbers its releases major.minor.
IMAGE_TAG = re.compile(r"(?P<name>[a-z0-9./-]+):v?(?P<version>\d+(?:\.\d+)*)(?:-[A-Za-z0-9.-]+)?")


def is_exact_image(image: str) -> bool:
    """Return true when ``image`` names one release (or one digest), not a moving tag."""
    if re.fullmatch(r"[a-z0-9./:-]+@sha256:[0-9a-f]{64}", image):
        return True
    match = IMAGE_TAG.fullmatch(image)
    if match is None:
        return False
    parts = match["version"].count(".") + 1
    return parts == (2 if match["name"] == "postgres" else 3)


def test_every_compose_image_is_pinned_to_an_exact_version(compose: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in compose["services"].items() if "build" not in s}
    assert images, "no third-party image in docker-compose.yml"
    for name, image in images.items():
        assert is_exact_image(image), f"{name}: image {image!r} is not an exact version"


def test_the_dockerfile_base_image_is_exact_and_installs_from_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases and all(is_exact_image(base) for base in bases), bases
    assert re.search(r"pip install -c constraints\.txt \"\.\[worker\]\"", dockerfile)
    assert "constraints.txt" in dockerfile.split("COPY", 1)[1]


def test_a_moving_tag_is_not_exact() -> None:
    for image in ("redis:7.2-alpine", "postgres:16-alpine", "python:3.11-slim", "redis"):
        assert not is_exact_image(image), image
    for image in ("redis:7.2.7-alpine", "postgres:16.6-alpine", "python:3.11.11-slim-bookworm"):
        assert is_exact_image(image), image


def test_lock_nodes_are_three_distinct_servers_none_of_them_the_broker(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    env = _service(compose, "worker")["environment"]
    broker_host = urlsplit(_default(env["CELERY_BROKER_URL"], env_example)).hostname
    nodes = _default(env["REDLOCK_NODES"], env_example).split(",")
    lock_hosts = [str(urlsplit(url.strip()).hostname) for url in nodes]
    assert sorted(lock_hosts) == sorted(LOCK_SERVICES)
    assert broker_host == "broker" and broker_host not in lock_hosts
    volumes = [tuple(_service(compose, name).get("volumes", [])) for name in LOCK_SERVICES]
    assert all(volumes) and len(set(volumes)) == 3, "each lock node needs its own data volume"
    assert _service(compose, "broker")["volumes"] not in [list(v) for v in volumes]


def test_lock_nodes_are_independent_persistent_masters(compose: dict[str, Any]) -> None:
    for name in LOCK_SERVICES:
        command = _command(_service(compose, name))
        text = " ".join(command).lower()
        assert command[0] == "redis-server", name
        assert "replicaof" not in text and "slaveof" not in text, name
        assert "sentinel" not in text, name
        assert command[command.index("--appendonly") + 1] == "yes", name
        assert command[command.index("--appendfsync") + 1] in ("always", "everysec"), name
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction", name
    for name, service in compose["services"].items():
        text = " ".join(_command(service)).lower()
        assert "sentinel" not in text and "replicaof" not in text, f"{name}: no replication"


def test_worker_scales(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    worker = _service(compose, "worker")
    assert "container_name" not in worker, "a fixed name prevents --scale worker=N"
    assert "ports" not in worker, "a fixed host port prevents --scale worker=N"
    hostname = next(part for part in _command(worker) if part.startswith("--hostname="))
    assert "%h" in hostname, "node names must differ per container"
    time_limits = {
        float(_default(worker["environment"]["TASK_TIME_LIMIT_S"], {})),
        float(_default(worker["environment"]["TASK_TIME_LIMIT_S"], env_example)),
        Settings().task_time_limit_s,
    }
    grace_s = _duration_s(str(worker["stop_grace_period"]))
    assert grace_s > max(time_limits), (grace_s, time_limits)
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # Celery's warm shutdown


def test_worker_waits_for_migration_and_healthy_services(compose: dict[str, Any]) -> None:
    migrate = _service(compose, "migrate")
    assert _command(migrate)[-3:] == ["flashsale", "db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert "healthcheck" in _service(compose, "postgres")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    depends = _service(compose, "worker")["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["broker"]["condition"] == "service_healthy"
    for name in ("broker", *LOCK_SERVICES):
        assert "healthcheck" in _service(compose, name), name
    # One lock node down must not stop new workers: their own start-up check
    # requires a quorum (tests/worker/test_startup.py), not all three nodes.
    assert not set(LOCK_SERVICES) & set(depends), depends


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(str(part) for part in test[1:])


def test_worker_and_flower_have_health_checks(compose: dict[str, Any]) -> None:
    worker = _healthcheck_text(_service(compose, "worker"))
    # $$ is Compose's escape: the shell sees $HOSTNAME, the container's node name (%h).
    assert "celery -A worker inspect ping -d worker@$$HOSTNAME" in worker
    hostname = next(p for p in _command(_service(compose, "worker")) if p.startswith("--hostname="))
    assert hostname == "--hostname=worker@%h"
    flower = _healthcheck_text(_service(compose, "flower"))
    assert "http://127.0.0.1:5555/healthcheck" in flower


def test_monitoring_profile(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    for name in ("prometheus", "grafana", "exporter"):
        assert _service(compose, name).get("profiles") == ["monitoring"], name
    for name, service in compose["services"].items():
        if name not in ("prometheus", "grafana", "exporter"):
            assert "profiles" not in service, f"{name} must run without a profile"
    worker_env = _service(compose, "worker")["environment"]
    metrics_port = int(_default(worker_env["WORKER_METRICS_PORT"], env_example))
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["flashsale-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["type"] == "A" and dns["port"] == metrics_port
    exporter_port = _command(_service(compose, "exporter"))[-1]
    assert jobs["flashsale-exporter"]["static_configs"][0]["targets"] == [
        f"exporter:{exporter_port}"
    ]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    volumes = [str(v) for v in _service(compose, "prometheus")["volumes"]]
    assert "./deploy/prometheus:/etc/prometheus:ro" in volumes
    grafana = _service(compose, "grafana")
    volumes = [str(v) for v in grafana["volumes"]]
    assert "./deploy/grafana/flashsale.json:/var/lib/grafana/dashboards/flashsale.json:ro" in (
        volumes
    )
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/flashsale.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    auth = str(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
    match = COMPOSE_VARIABLE.fullmatch(auth)
    assert match and match.group(2) == ":?", "Grafana's admin password must be required"


def test_flower_requires_basic_auth(compose: dict[str, Any]) -> None:
    flower = _service(compose, "flower")
    auth = str(flower["environment"]["FLOWER_BASIC_AUTH"])
    match = COMPOSE_VARIABLE.fullmatch(auth)
    assert match and match.group(1) == "FLOWER_BASIC_AUTH" and match.group(2) == ":?", (
        "FLOWER_BASIC_AUTH must be required (${FLOWER_BASIC_AUTH:?...}), never defaulted"
    )
    assert _command(flower)[:4] == ["celery", "-A", "worker", "flower"]
    for port in flower.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"Flower published beyond loopback: {port}"
    for name, service in compose["services"].items():
        if name not in ("flower", "prometheus", "grafana"):
            assert "ports" not in service, f"{name} publishes a port"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} published beyond loopback"


def test_every_compose_variable_is_in_env_example(env_example: dict[str, str]) -> None:
    used = set(COMPOSE_VARIABLE.findall(COMPOSE_FILE.read_text()))
    missing = sorted({name for name, _, _ in used} - env_example.keys())
    assert not missing, f"used in docker-compose.yml, missing from .env.example: {missing}"
    assert "$" not in COMPOSE_VARIABLE.sub("", COMPOSE_FILE.read_text()).replace("$$", "")


def test_every_setting_is_in_env_example_and_reaches_the_worker(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    missing = [name for name in SETTINGS_VARIABLES if name not in env_example]
    assert not missing, f"settings missing from .env.example: {missing}"
    for name in ("FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD"):
        assert name in env_example
    worker_env = _service(compose, "worker")["environment"]
    assert sorted(name for name in worker_env if name in SETTINGS_VARIABLES) == (SETTINGS_VARIABLES)
    # The example values are valid settings, safe for a worker but for the node hosts.
    settings = Settings.from_env(env_example)
    assert settings.task_time_limit_s == Settings().task_time_limit_s
    assert not [p for p in settings.worker_problems() if "REDLOCK" not in p]


#: Settings the deployment files set on purpose to other than the code's default:
#: where the services are, and metrics on (off by default in the code).
DEPLOYMENT_VALUES = ("CELERY_BROKER_URL", "DATABASE_URL", "REDLOCK_NODES", "WORKER_METRICS_PORT")


def test_the_deployment_files_restate_the_code_defaults_only(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    # The defaults are defined once, in worker.settings; Compose and .env.example
    # name every setting (above), so each copy must equal the code's value.
    worker_env = _service(compose, "worker")["environment"]
    code = Settings.from_env({})
    for name in sorted(set(SETTINGS_VARIABLES) - set(DEPLOYMENT_VALUES)):
        in_compose = _default(str(worker_env[name]), {})
        assert Settings.from_env({name: in_compose}) == code, f"compose default of {name}"
        assert Settings.from_env({name: env_example[name]}) == code, f".env.example {name}"


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


# --- Procfile ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    """Process type -> command, parsed as honcho and foreman do."""
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip())
        if match:
            assert match.group(1) not in entries, f"duplicate {match.group(1)}"
            entries[match.group(1)] = match.group(2)
        else:
            assert not line.strip() or line.lstrip().startswith("#"), f"bad line {line!r}"
    return entries


def _shell_env(**extra: str) -> dict[str, str]:
    """The test's environment with the venv's scripts on PATH, as an activated venv has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _expand_words(command: str, **env: str) -> list[str]:
    """Return the words ``sh`` makes of ``command`` (variables expanded, nothing run)."""
    result = subprocess.run(
        ["sh", "-c", f"for word in {command.removeprefix('exec ')}; do echo \"$word\"; done"],
        capture_output=True, text=True, timeout=10, env=_shell_env(**env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_procfile_has_release_worker_and_flower(procfile: dict[str, str]) -> None:
    assert {"release", "worker", "beat", "flower"} <= procfile.keys()
    assert procfile["release"].split() == ["flashsale", "db", "upgrade"]
    assert "celery -A worker beat" in procfile["beat"]
    assert "celery -A worker worker" in procfile["worker"]
    assert "celery -A worker flower" in procfile["flower"]


def test_procfile_workers_get_distinct_node_names(procfile: dict[str, str]) -> None:
    # honcho gives each process its own PORT (5000, 5001... for worker.1, worker.2...).
    names = set()
    for port in ("5000", "5001", "5002"):
        words = _expand_words(procfile["worker"], PORT=port)
        names.add(next(word for word in words if word.startswith("--hostname=")))
        # Each worker serves its metrics on its own PORT, whatever .env says.
        assert f"WORKER_METRICS_PORT={port}" in words
    assert len(names) == 3, names


def test_procfile_flower_refuses_to_start_without_auth(procfile: dict[str, str]) -> None:
    result = subprocess.run(
        ["sh", "-c", procfile["flower"]],
        capture_output=True, text=True, timeout=30, env=_shell_env(PORT=str(free_port())),
    )  # fmt: skip
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_procfile_release_migrates(procfile: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'release.sqlite3'}"
    result = subprocess.run(
        ["sh", "-c", procfile["release"]],
        capture_output=True, text=True, timeout=60, env=_shell_env(DATABASE_URL=url),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"products", "orders", "order_items", "stock_movements"} <= tables


@pytest.fixture
def procfile_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """Lock nodes and a broker for the Procfile's own worker and Flower lines."""
    env = _shell_env(DATABASE_URL=f"sqlite:///{tmp_path / 'procfile.sqlite3'}")
    with LocalStack(env=env) as stack:
        stack.start_lock_nodes(3)
        stack.start_broker()
        yield stack
        for process in stack.others:  # warm shutdown of all at once, then the stack waits
            process.terminate()


@pytest.mark.slow
def test_procfile_worker_and_flower_lines_run(
    procfile: dict[str, str], procfile_stack: LocalStack
) -> None:
    stack = procfile_stack
    # Free ports, not honcho's 5000 and 5001: each worker binds its PORT for metrics.
    ports = [str(free_port()), str(free_port())]
    for port in ports:
        stack.env["PORT"] = port
        stack.start_process(["sh", "-c", procfile["worker"]], log_name=f"worker.{port}.log")
    flower_port = free_port()
    stack.env.update(PORT=str(flower_port), FLOWER_BASIC_AUTH="ops:procfile-pw")
    flower = stack.start_process(["sh", "-c", procfile["flower"]], log_name="flower.log")
    host = socket.gethostname()
    expected = {f"worker.{port}@{host}" for port in ports}
    replies: set[str] = set()
    with Celery("procfile-test", broker=stack.env["CELERY_BROKER_URL"]) as control:
        control.conf.accept_content = ["json"]
        for _ in range(60):
            for reply in control.control.ping(timeout=0.5) or []:
                replies |= set(reply)
            if expected <= replies:
                break
    assert expected <= replies, (replies, (stack.workdir / f"worker.{ports[0]}.log").read_text())
    url = f"http://127.0.0.1:{flower_port}"
    wait_until_answering(flower, f"{url}/api/workers", timeout_s=30)
    assert http_status(f"{url}/api/workers") == 401
    assert http_status(f"{url}/api/workers", credentials="ops:procfile-pw") == 200
    assert flower_command(flower_port)[3:5] == ["-A", "worker"]  # same app as the demo's


# --- deploy/prometheus and deploy/grafana -----------------------------------------

RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
PROM_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def _balanced(expr: str) -> bool:
    """True when brackets pair up and quotes close, outside of quoted strings."""
    stack: list[str] = []
    quote = ""
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in expr:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and not quote


@pytest.fixture(scope="module")
def alert_rules() -> dict[str, dict[str, Any]]:
    """Alert name -> rule, after checking the file is Prometheus's rule format."""
    data = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert isinstance(data, dict) and set(data) == {"groups"}
    rules: dict[str, dict[str, Any]] = {}
    group_names = [group["name"] for group in data["groups"]]
    assert len(set(group_names)) == len(group_names), "group names must be unique"
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group.keys()
        assert isinstance(group["name"], str) and group["name"]
        assert isinstance(group["rules"], list) and group["rules"]
        for rule in group["rules"]:
            assert isinstance(rule, dict) and set(rule) <= RULE_KEYS, rule
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule["expr"]
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert PROM_DURATION.fullmatch(str(rule[key])), rule[key]
            for key in ("labels", "annotations"):
                mapping = rule.get(key, {})
                assert isinstance(mapping, dict), rule
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
            if "alert" in rule:
                assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
                assert rule["alert"] not in rules, f"duplicate alert {rule['alert']}"
                assert rule.get("annotations", {}).get("summary"), rule["alert"]
                rules[rule["alert"]] = rule
    return rules


def _duration_prom_s(text: str) -> float:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * scale[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def test_alert_rules_cover_the_operators_cases(alert_rules: dict[str, dict[str, Any]]) -> None:
    def alert_on(*needles: str) -> dict[str, Any]:
        found = [r for r in alert_rules.values() if all(n in r["expr"] for n in needles)]
        assert found, f"no alert whose expr has {needles}"
        return found[0]

    node_down = alert_on("flashsale_lock_node_up", "== 0")
    assert _duration_prom_s(node_down["for"]) >= 60
    margin = alert_on("flashsale_lock_node_up", "floor(count", "<= 0")
    assert margin["labels"]["severity"] == "critical"
    failing = alert_on("flashsale_orders_total", 'status="failed"')
    assert "lock_unavailable" in failing["expr"] and "database_unavailable" in failing["expr"]
    alert_on("flashsale_oldest_open_order_age_seconds", ">")
    alert_on('up{job="flashsale-worker"}', "== 0")
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in alert_rules.values():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} queries unknown job {job}"


def test_dashboard_is_grafana_json_with_every_panel_queried() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/flashsale.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    text = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert all(_balanced(t["expr"]) for p in dashboard["panels"] for t in p["targets"])
    for name in (
        "flashsale_lock_node_up",
        "flashsale_lock_acquire_seconds_bucket",
        "flashsale_orders_total",
        "flashsale_order_decision_seconds_bucket",
        "flashsale_settlement_batch_orders_bucket",
        "flashsale_open_orders",
    ):
        assert name in text, name


@pytest.mark.slow
def test_the_worker_health_check_command_pings_its_own_node(
    compose: dict[str, Any], procfile_stack: LocalStack
) -> None:
    # Run the compose health check as the container's shell would: $$ is Compose's
    # escape for $, and a container's HOSTNAME is what %h names its node after.
    command = _service(compose, "worker")["healthcheck"]["test"][1].replace("$$", "$")
    stack = procfile_stack
    stack.start_worker(name="worker", concurrency=1)
    env = stack.worker_env({"HOSTNAME": socket.gethostname()})
    healthy = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    env["HOSTNAME"] = "no-such-container"
    unhealthy = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=60)
    assert unhealthy.returncode != 0


# --- docker-compose.rabbitmq.yml (RabbitMQ instead of the Redis broker) -------------

RABBITMQ_OVERRIDE = ROOT / "docker-compose.rabbitmq.yml"


def test_the_rabbitmq_override_points_every_broker_user_at_rabbitmq(
    env_example: dict[str, str],
) -> None:
    override = yaml.safe_load(RABBITMQ_OVERRIDE.read_text())
    rabbitmq = _service(override, "rabbitmq")
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    assert any(str(volume).endswith(":/var/lib/rabbitmq") for volume in rabbitmq["volumes"])
    assert "ports" not in rabbitmq, "the broker must not be published outside Compose"
    for name in ("migrate", "worker", "beat", "flower"):
        url = _default(_service(override, name)["environment"]["CELERY_BROKER_URL"], env_example)
        assert Settings(broker_url=url).broker_kind == "amqp", (name, url)
        assert urlsplit(url).hostname == "rabbitmq"
    for name in ("worker", "beat", "flower"):
        condition = _service(override, name)["depends_on"]["rabbitmq"]["condition"]
        assert condition == "service_healthy"
    used = {name for name, _, _ in COMPOSE_VARIABLE.findall(RABBITMQ_OVERRIDE.read_text())}
    assert used <= env_example.keys(), used - env_example.keys()
